"""Running TensorRT engines with ONNX Runtime's session interface, so the runtime's predictors take them as they are."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ...runtime.metadata import GraphMetadata
from .availability import ENGINE_SUFFIX, check_cuda, engine_metadata_path, require_tensorrt

__all__ = ["TensorRTSession", "load_engine"]

PathLike = Union[str, Path]


class TensorRTSession:
    """One deserialized engine and its PowerSAM metadata, with ``GraphSession.run``'s interface."""

    def __init__(self, engine_path: PathLike) -> None:
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no TensorRT engine at {self.path}")
        sidecar = engine_metadata_path(self.path)
        if not sidecar.is_file():
            raise FileNotFoundError(f"{self.path} has no metadata sidecar {sidecar.name}; rebuild it with build_engine")
        self.metadata = GraphMetadata.from_props(json.loads(sidecar.read_text())["metadata"], source=str(self.path))
        trt, cudart = require_tensorrt()
        self._trt, self._cudart = trt, cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {self.path} (built by another TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._stream = check_cuda(cudart, cudart.cudaStreamCreate())
        self._inputs: dict[str, tuple[int, int]] = {}  # device buffers of inputs: name → (pointer, bytes)
        self._allocator = _output_allocator(trt, cudart)
        for name in self.output_names:
            self.context.set_output_allocator(name, self._allocator)

    @property
    def providers(self) -> list[str]:
        return ["TensorRT"]

    def run(self, feeds: Mapping[str, Any], outputs: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        """Run the engine → ``{output name: array}``; ``feeds`` as for ``GraphSession.run``."""
        trt, cudart = self._trt, self._cudart
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"missing inputs {missing}; the engine takes {self.input_names}")
        keep_alive = []
        for name in self.input_names:
            host = np.ascontiguousarray(feeds[name], dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            keep_alive.append(host)
            if not self.context.set_input_shape(name, host.shape):
                raise ValueError(f"input {name!r} of shape {host.shape} is outside the engine's optimisation profile")
            if self.engine.get_tensor_location(name) == trt.TensorLocation.HOST:  # shape tensors live on the host
                self.context.set_tensor_address(name, host.ctypes.data)
                continue
            pointer = self._input_buffer(name, host.nbytes)
            check_cuda(cudart, cudart.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes,
                                                      cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))
            self.context.set_tensor_address(name, pointer)
        if not self.context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"TensorRT execution of {self.path.name} failed (see its log)")
        check_cuda(cudart, cudart.cudaStreamSynchronize(self._stream))
        results = {}
        for name in (list(outputs) if outputs is not None else self.output_names):
            # notify_shape reports data-dependent shapes; the context knows the others
            shape = self._allocator.shapes.get(name) or tuple(self.context.get_tensor_shape(name))
            host = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            if host.nbytes:
                check_cuda(cudart, cudart.cudaMemcpy(host.ctypes.data, self._allocator.pointers[name][0], host.nbytes,
                                                     cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost))
            results[name] = host
        del keep_alive
        return results

    def _input_buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self._inputs.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                check_cuda(self._cudart, self._cudart.cudaFree(pointer))
            pointer = int(check_cuda(self._cudart, self._cudart.cudaMalloc(max(nbytes, 1))))
            self._inputs[name] = (pointer, nbytes)
        return pointer

    def __del__(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for pointer, _ in getattr(self, "_inputs", {}).values():
            cudart.cudaFree(pointer)
        allocator = getattr(self, "_allocator", None)
        if allocator is not None:
            allocator.free()


def _output_allocator(trt, cudart):
    """An IOutputAllocator: outputs get device memory once their (possibly data-dependent) size is known."""

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.pointers: dict[str, tuple[int, int]] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
            pointer, capacity = self.pointers.get(tensor_name, (0, 0))
            if capacity < size or not pointer:
                if pointer:
                    check_cuda(cudart, cudart.cudaFree(pointer))
                capacity = max(int(size), 1)  # an empty output still needs a valid address
                pointer = int(check_cuda(cudart, cudart.cudaMalloc(capacity)))
                self.pointers[tensor_name] = (pointer, capacity)
            return pointer

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int, stream) -> int:
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape) -> None:
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

        def free(self) -> None:
            for pointer, _ in self.pointers.values():
                cudart.cudaFree(pointer)
            self.pointers.clear()

    return OutputAllocator()


def load_engine(path_or_paths: Union[PathLike, Sequence[PathLike]]):
    """``powersam.runtime.load`` for engines: an integrated ``.engine`` → OnnxPowerSAM; an encoder or decoder engine
    (partner found beside it), a folder with ``encoder.engine`` + ``decoder.engine``, or the two paths →
    OnnxSamPredictor."""
    from ...runtime.integrated import OnnxPowerSAM
    from ...runtime.predictor import OnnxSamPredictor

    if isinstance(path_or_paths, (str, Path)):
        path = Path(path_or_paths)
        paths = [path / f"encoder{ENGINE_SUFFIX}", path / f"decoder{ENGINE_SUFFIX}"] if path.is_dir() else [path]
    else:
        paths = [Path(p) for p in path_or_paths]
    if len(paths) not in (1, 2):
        raise ValueError(f"expected one integrated engine or an encoder/decoder pair, got {len(paths)} paths")
    sessions = [TensorRTSession(p) for p in paths]
    if len(sessions) == 1 and sessions[0].metadata.graph == "integrated":
        return OnnxPowerSAM(sessions[0])
    if len(sessions) == 1:
        only = sessions[0]
        if not only.metadata.partner:
            raise FileNotFoundError(f"{only.path} is half of an interactive pair and names no partner")
        sessions.append(TensorRTSession(only.path.parent / only.metadata.partner))
    by_kind = {s.metadata.graph: s for s in sessions}
    if set(by_kind) != {"encoder", "decoder"}:
        raise ValueError(f"expected an encoder and a decoder engine, got {[s.metadata.graph for s in sessions]}")
    return OnnxSamPredictor(by_kind["encoder"], by_kind["decoder"])
