"""``powersam serve``: an HTTP inference service and a web page for one PowerSAM model.

* :mod:`.app` — :func:`create_app` (FastAPI): ``/v1/detect``, ``/v1/segment`` (embedding cache), ``/v1/health``,
  ``/v1/model``, ``/metrics`` and the page at ``/``;
* :mod:`.limits` — :class:`ServeConfig`, :class:`ApiError`, upload and image checks, the bounded queue;
* :mod:`.cache` — the bounded image-embedding cache; :mod:`.metrics` — Prometheus-style counters;
* :mod:`.codec` — query/prompt parsing and the JSON wire format; :mod:`.server` — loading and running under
  uvicorn (the command line is :mod:`powersam.cli.serve`);
* ``static/`` — the page (plain HTML/JS/CSS, works offline).

Needs the ``serve`` extra (``pip install powersam[serve]``: fastapi, uvicorn, python-multipart). Serving an ONNX
export never imports torch. The client side is :mod:`powersam.client`.
"""
from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:  # lazy: `import powersam.serve` must not need fastapi until the app is built
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("ApiError", "ServeConfig"):
        from . import limits

        return getattr(limits, name)
    raise AttributeError(f"module 'powersam.serve' has no attribute {name!r}")
