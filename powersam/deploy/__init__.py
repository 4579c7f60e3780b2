"""Deployment: ONNX export (:mod:`.onnx_export`), INT8 quantisation (:mod:`.quantize`), FP16 graphs
(:mod:`.precision`), TensorRT engines (:mod:`.tensorrt`); the graph metadata format belongs to
:mod:`powersam.runtime.metadata` (re-exported as :mod:`.metadata`). The ``powersam export`` command line and its
formats are :mod:`powersam.cli.export`.

This package imports nothing on its own: the exporter needs torch and the quantiser ONNX Runtime's tools.
Dependencies point one way: deploy imports the runtime, never the reverse.
"""
from __future__ import annotations

__all__: list[str] = []
