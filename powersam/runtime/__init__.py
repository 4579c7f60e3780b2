"""Torch-free inference of exported PowerSAM graphs on ONNX Runtime.

Only NumPy, ONNX Runtime, Pillow (and OpenCV when present) are imported, never PyTorch, so this runs on edge
devices with ``pip install onnxruntime numpy pillow``::

    import powersam.runtime as rt

    model = rt.load("powersam_s.onnx")                 # integrated graph → OnnxPowerSAM
    result = model.predict("substation.jpg", conf=0.5)  # powersam.results.Results

    predictor = rt.load("powersam_s_interactive/")      # encoder.onnx + decoder.onnx → OnnxSamPredictor
    predictor.set_image("substation.jpg")
    masks, scores, low_res = predictor.predict(box=[10, 20, 300, 400], multimask_output=False)

Graphs are written by :func:`powersam.deploy.onnx_export.export_onnx` (``powersam export``).
"""
from __future__ import annotations

from .integrated import OnnxPowerSAM
from .predictor import OnnxSamPredictor
from .loader import load
from .integrity import GraphIntegrityError
from .session import GraphSession, resolve_providers

__all__ = ["GraphIntegrityError", "GraphSession", "OnnxPowerSAM", "OnnxSamPredictor", "load", "resolve_providers"]
