"""Serving one model: :func:`load_served_model` (``powersam.load`` for the command line's MODEL arguments),
:func:`create_served_app` and :func:`serve_forever` (uvicorn until SIGTERM / Ctrl-C).

MODEL is a PowerSAM checkpoint, a zoo name (with ``--checkpoint`` for official weights), an exported ``.onnx``
graph, an interactive pair (both files, or the folder ``export`` wrote), or a TensorRT engine. An ONNX model is
served without importing torch, so a torch-free edge box can run it: the ``powersam`` command reaches
:mod:`powersam.cli.serve` before it builds its full parser (see :func:`powersam.cli.main`).

SIGTERM / Ctrl-C stop accepting connections, let the requests in flight finish (``graceful_timeout``), drain the
model thread and exit 0 (uvicorn's graceful shutdown + the app's lifespan).
"""
from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

from .limits import ServeConfig

__all__ = ["create_served_app", "load_served_model", "serve_forever"]


def load_served_model(sources: Sequence[str], checkpoint: Optional[Path] = None, img_size: Optional[int] = None,
                      device: Optional[str] = None, threads: Optional[int] = None,
                      spinning: Optional[bool] = None) -> Any:
    """:func:`powersam.load` for the command line's MODEL arguments → a :class:`~powersam.model.Model`.

    ``spinning`` (``--ort-spinning``): ONNX Runtime's worker threads busy-wait after a run (True) or sleep (False);
    None keeps ORT's default. ONNX models only: ValueError for a PyTorch model."""
    from ..loading import is_exported, load

    paths = [Path(s) for s in sources]
    if len(paths) > 1 or is_exported(paths[0]):
        if checkpoint is not None or img_size is not None:
            raise ValueError("--checkpoint and --img-size apply to PyTorch models; an export has its weights and "
                             "size built in")
        from ..runtime.session import device_provider

        providers = None if device is None else device_provider(device)  # cuda:1 → the provider's device_id 1
        return load(paths if len(paths) > 1 else paths[0], providers=providers, threads=threads, spinning=spinning)
    if spinning is not None:
        raise ValueError("--ort-spinning applies to exported ONNX models; a PyTorch model runs on torch's threads")
    options: dict[str, Any] = {} if img_size is None else {"img_size": int(img_size)}
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))
    if checkpoint is not None:
        return load(checkpoint, name=str(sources[0]), device=device, **options)
    if not paths[0].is_file():
        logging.getLogger(__name__).warning("no --checkpoint given: %s runs with random weights", sources[0])
    return load(str(sources[0]), device=device, **options)


def create_served_app(sources: Sequence[str], config: ServeConfig, checkpoint: Optional[Path] = None,
                      img_size: Optional[int] = None, device: Optional[str] = None, threads: Optional[int] = None,
                      name: Optional[str] = None, spinning: Optional[bool] = None) -> Any:
    """The FastAPI app serving the model the MODEL arguments name (see :func:`load_served_model`)."""
    from .app import create_app

    model = load_served_model(sources, checkpoint, img_size, device, threads, spinning)
    return create_app(model, config, name=name)


def serve_forever(app: Any, host: str, port: int, log_level: str = "info", graceful_timeout: float = 30.0) -> None:
    """Run ``app`` under uvicorn until SIGTERM / Ctrl-C, print where it serves and, after a graceful stop, which
    signal stopped it. Needs uvicorn (the serve extra)."""
    import uvicorn

    service = app.state.service
    where = f"http://{'localhost' if host in ('0.0.0.0', '::') else host}:{port}/"
    print(f"serving {service.name} ({service.model.backend}; detect={service.model.can_detect}, "
          f"segment={service.model.can_segment}) at {where}" + (" (API key required)" if app.state.config.api_key
                                                                  else ""), flush=True)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler it found: make that
    # one a no-op so a graceful stop exits 0 (what supervisors and `docker stop` expect), not "killed by SIGTERM".
    received: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_timeout,
                    access_log=log_level == "debug")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        print(f"stopped on {signal.Signals(received[0]).name}: requests in flight finished", flush=True)
