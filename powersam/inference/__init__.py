"""One inference pipeline for every backend (PyTorch module, ONNX Runtime session, TensorRT engine).

* :mod:`.detect`: detect and segment an image (``predict``): argument checks, class filter, box rescaling,
  empty results and per-stage timings; a backend supplies only the network stages.
* :mod:`.prompts`: interactive prompting (``set_image`` / ``predict`` / ``predict_batch``): prompt checks and
  mapping, chunking, output allocation; a backend supplies encode, decode and mask upsampling.
* :mod:`.timing`: :class:`StageTimer`, the per-stage milliseconds in ``Results.speed``.

NumPy only (torch-free), so the edge runtime shares it with the PyTorch models.
"""
from __future__ import annotations

from .detect import (MIN_IMAGE_SIDE, DetectBackend, Detections, ImageTooSmall, check_detection_args, class_filter,
                     detect_and_segment)
from .timing import StageTimer

__all__ = ["MIN_IMAGE_SIDE", "DetectBackend", "Detections", "ImageTooSmall", "StageTimer", "check_detection_args",
           "class_filter", "detect_and_segment"]
