"""TensorRT engines from exported PowerSAM graphs, and a session that runs them like ONNX Runtime does.

* :func:`build_engine` (:mod:`.build`) builds a serialized engine from an exported ``.onnx`` with TensorRT's ONNX
  parser and writes a ``<engine>.json`` sidecar with the graph's PowerSAM metadata (engines carry none of their
  own). Networks are *strongly typed*, the only mode TensorRT 11 has (10 has it too): the engine's precision is the
  graph's, so ``precision="fp16"`` builds from an FP16 copy of the graph (:func:`powersam.deploy.precision.to_float16`)
  and ``precision="int8"`` from a symmetric INT8 QDQ copy calibrated on images with ONNX Runtime
  (:func:`powersam.deploy.quantize.quantize_onnx`, ``symmetric=True``: TensorRT takes only zero-point-0 int8).
  TensorRT 10's ``BuilderFlag.FP16``/``INT8`` and its INT8 calibrators do not exist in TensorRT 11's bindings.
* :class:`TensorRTSession` (:mod:`.session`) has :class:`~powersam.runtime.GraphSession`'s interface
  (``metadata``, ``input_names``, ``output_names``, ``providers``, ``run(feeds)``), so
  :class:`~powersam.runtime.OnnxPowerSAM` and :class:`~powersam.runtime.OnnxSamPredictor` run engines unchanged;
  :func:`load_engine` is ``runtime.load`` for them.

Which graph to build, per onnx-tensorrt's operator tables: the interactive pair is the safe path (the encoder is
convolutions and element-wise ops; the decoder needs opset-17 ``LayerNormalization``, in the tables from 9.2 on).
The integrated graph also needs ``NonMaxSuppression`` (native since 8.5), ``NonZero``, ``IsInf`` (9.2+) and ``TopK``
with a data-dependent K (10.x bounds K < 3840; ours is at most classes × max_det); its outputs have data-dependent
shapes (the detection count), served through an output allocator. So: TensorRT ≥ 10.

Needs ``pip install tensorrt cuda-python`` on a machine with an NVIDIA GPU. Nothing here imports TensorRT (or torch)
until used, so importing it is safe anywhere. NOTE: no engine has been built in this project's CI or development
machines (no GPU); the API calls were checked against the names in TensorRT 10.13's and 11.4's Python bindings, and
the build is tested end to end against a stand-in module with only those names.
"""
from __future__ import annotations

from .availability import ENGINE_SUFFIX, TensorRTUnavailable, engine_metadata_path, require_tensorrt
from .build import (
    DIMENSION_RANGES,
    PRECISIONS,
    build_engine,
    engine_props,
    prepare_graph,
)
from .session import TensorRTSession, load_engine

__all__ = [
    "DIMENSION_RANGES",
    "ENGINE_SUFFIX",
    "PRECISIONS",
    "TensorRTSession",
    "TensorRTUnavailable",
    "build_engine",
    "engine_metadata_path",
    "engine_props",
    "load_engine",
    "prepare_graph",
    "require_tensorrt",
]
