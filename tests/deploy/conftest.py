"""Fixtures of the deployment tests."""
from __future__ import annotations

import onnxruntime as ort
import pytest


@pytest.fixture(scope="module")
def quiet_onnxruntime():
    """Silence ONNX Runtime's load-time warnings for FP16 graphs (it reports each FP16 node it cannot constant-fold
    on the CPU, which is expected) for the module, then restore the default level."""
    ort.set_default_logger_severity(3)
    yield
    ort.set_default_logger_severity(2)
