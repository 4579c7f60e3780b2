"""Export option values the command line shows in its help without importing torch, onnx or ONNX Runtime."""
from __future__ import annotations

MIN_OPSET = 17  # the graphs need ≥ 11 (NonMaxSuppression, DepthToSpace); lower opsets are neither needed nor tested
CALIBRATION_METHOD_NAMES = ("minmax", "percentile")  # the keys of powersam.deploy.quantize.CALIBRATION_METHODS
