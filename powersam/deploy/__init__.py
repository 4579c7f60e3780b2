"""Deployment: ONNX export (:mod:`.onnx_export`), INT8 quantisation (:mod:`.quantize`), FP16 graphs
(:mod:`.precision`), TensorRT engines (:mod:`.tensorrt`); the graph metadata format belongs to
:mod:`powersam.runtime.metadata` (re-exported as :mod:`.metadata`).

This package imports nothing on its own: the exporter needs torch and the quantiser ONNX Runtime's tools.
Dependencies point one way: deploy imports the runtime, never the reverse.
"""
from __future__ import annotations

__all__ = ["register_export_formats"]

_registered = False


def register_export_formats() -> None:
    """Add ``--int8`` / ``--fp16`` (INT8 and FP16 twins of the ONNX export) and ``--format tensorrt`` to
    ``powersam export``; idempotent.

    Call before the ``export`` parser is built (``add_export_arguments`` reads the registered hooks).
    """
    global _registered
    if _registered:
        return
    from .onnx_export import EXPORT_FORMATS, register_export_format
    from .precision import add_fp16_arguments, fp16_runner
    from .quantize import add_int8_arguments, int8_runner
    from .tensorrt import add_tensorrt_arguments, tensorrt_runner

    def add_twin_arguments(parser) -> None:
        add_fp16_arguments(parser)
        add_int8_arguments(parser)

    export_fp32 = EXPORT_FORMATS["onnx"]
    register_export_format("onnx", fp16_runner(int8_runner(export_fp32)), add_twin_arguments)
    register_export_format("tensorrt", tensorrt_runner(export_fp32), add_tensorrt_arguments)
    _registered = True
