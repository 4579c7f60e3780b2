"""A stand-in for the ``tensorrt`` module, with the part of TensorRT 11's Python API that engine building uses.

Every name here exists in the bindings of tensorrt-cu12-bindings 11.4.0.106 (the newest on PyPI in November 2026;
checked against the strings of its ``tensorrt.so``, which cannot be imported without TensorRT's CUDA libraries) and
in those of 10.13. Names TensorRT 11 removed are absent on purpose: ``BuilderFlag.FP16``/``INT8``/``BF16``,
``IInt8EntropyCalibrator2`` and ``IBuilderConfig.int8_calibrator``, so code that still uses them fails here.

The parser reads the ONNX file with ``onnx`` and records what it was given; the builder returns a few bytes naming the
parsed graph. It checks what a strongly typed build needs, not TensorRT's kernels.
"""
from __future__ import annotations

import json
import types

import numpy as np
import onnx

VERSION = "11.4.0.106"


class StandIn:
    """What the build asked for: ``networks`` (flags, parsed model, profiles) and ``configs``."""

    def __init__(self) -> None:
        self.networks: list["Network"] = []
        self.configs: list["Config"] = []

    def module(self) -> types.ModuleType:
        recorder = self
        trt = types.ModuleType("tensorrt")
        trt.__version__ = VERSION

        class Logger:
            WARNING, INFO, ERROR = 2, 3, 1

            def __init__(self, severity=WARNING) -> None:
                self.severity = severity

        class Builder:
            def __init__(self, logger) -> None:
                self.logger = logger

            def create_network(self, flags: int = 0) -> "Network":
                network = Network(flags)
                recorder.networks.append(network)
                return network

            def create_builder_config(self) -> "Config":
                config = Config()
                recorder.configs.append(config)
                return config

            def create_optimization_profile(self) -> "Profile":
                return Profile()

            def build_serialized_network(self, network: "Network", config: "Config") -> bytes:
                assert config.profiles, "a network with dynamic inputs needs an optimisation profile"
                return json.dumps({"graph": network.parsed_path}).encode()

        trt.Logger = Logger
        trt.Builder = Builder
        trt.OnnxParser = OnnxParser
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1, PREFER_AOT_PYTHON_PLUGINS=2,
                                                                  PREFER_JIT_PYTHON_PLUGINS=3)
        trt.BuilderFlag = types.SimpleNamespace(DEBUG=2, GPU_FALLBACK=3, TF32=6, SPARSE_WEIGHTS=7, DIRECT_IO=11)
        trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0, TACTIC_SHARED_MEMORY=5)
        trt.nptype = lambda dtype: {"float32": np.float32, "float16": np.float16, "int64": np.int64}[dtype]
        return trt


class Tensor:
    def __init__(self, name: str, shape: list[int], is_shape_tensor: bool) -> None:
        self.name, self.shape, self.is_shape_tensor = name, shape, is_shape_tensor


class Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[Tensor] = []
        self.parsed_path: str = ""
        self.parsed: onnx.ModelProto = onnx.ModelProto()

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> Tensor:
        return self.inputs[index]


class OnnxParser:
    def __init__(self, network: Network, logger) -> None:
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        model = onnx.load(path)
        onnx.checker.check_model(model)
        self.network.parsed_path, self.network.parsed = path, model
        for graph_input in model.graph.input:
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in graph_input.type.tensor_type.shape.dim]
            # The integrated graph's max_det feeds TopK's K: TensorRT treats such an input as a shape tensor.
            self.network.inputs.append(Tensor(graph_input.name, dims, graph_input.name == "max_det"))
        return True

    def get_error(self, index: int) -> str:
        raise IndexError(index)


class Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}
        self.values: dict[str, tuple] = {}

    def set_shape(self, name, low, opt, high) -> None:
        self.shapes[name] = (low, opt, high)

    def set_shape_input(self, name, low, opt, high) -> None:
        self.values[name] = (low, opt, high)


class Config:
    def __init__(self) -> None:
        self.pools: dict[int, int] = {}
        self.flags: set[int] = set()
        self.profiles: list[Profile] = []

    def set_memory_pool_limit(self, pool: int, size: int) -> None:
        self.pools[pool] = size

    def set_flag(self, flag: int) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile: Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1
