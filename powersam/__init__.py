"""PowerSAM: Segment Anything at the edge for power-grid inspection.

``powersam.load(source)`` opens any model (zoo name, checkpoint, ONNX export, TensorRT engine) as one
:class:`~powersam.model.Model` with ``predict`` / ``segment`` / ``val`` / ``export`` / ``info``; training stages are
``powersam.train.<stage>(config)``. ``build_model`` and ``SamPredictor`` remain for code written against them.

The top level imports lazily, so ``import powersam`` stays cheap and the torch-free parts (the ONNX runtime
for edge devices) never pull in torch.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": ("powersam.loading", "load"),
    "Model": ("powersam.model", "Model"),
    "build_model": ("powersam.models.zoo", "build_model"),
    "list_models": ("powersam.models.zoo", "list_models"),
    "SamPredictor": ("powersam.predictor", "SamPredictor"),
    "Results": ("powersam.results", "Results"),
    "load_image": ("powersam.io", "load_image"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'powersam' has no attribute {name!r}")
