"""``powersam serve MODEL``: load a model with :func:`powersam.load`, build the app, run it under uvicorn.

MODEL is a PowerSAM checkpoint, a zoo name (with ``--checkpoint`` for official weights), an exported ``.onnx``
graph, an interactive pair (both files, or the folder ``export`` wrote), or a TensorRT engine. An ONNX model is
served without importing torch, so a torch-free edge box can run it: the ``powersam`` command reaches this module
before it builds its full parser (see :func:`powersam.cli.main`).

SIGTERM / Ctrl-C stop accepting connections, let the requests in flight finish (``--graceful-timeout``), drain the
model thread and exit 0 (uvicorn's graceful shutdown + the app's lifespan).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

from .limits import MiB, ServeConfig

__all__ = ["add_serve_arguments", "build_app", "load_served_model", "main", "run_serve"]

API_KEY_ENV = "POWERSAM_API_KEY"


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``powersam serve``."""
    parser.add_argument("model", nargs="+", metavar="MODEL",
                        help="checkpoint (.pt), zoo name, exported .onnx graph(s) or their folder, or .engine")
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights for a zoo model name")
    parser.add_argument("--img-size", type=int, default=None, help="input size of a zoo model without checkpoint")
    parser.add_argument("--name", default=None, help="model name reported by the API (default: the model's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default=None, help="torch device, or ONNX Runtime provider (cpu, cuda, tensorrt)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of the model (default: runtime's)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body in MiB (default 20)")
    parser.add_argument("--max-image-side", type=int, default=8192, help="largest image side in pixels (default 8192)")
    parser.add_argument("--max-queue", type=int, default=8,
                        help="requests admitted at once, running + waiting; more get 429 (default 8)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request gets 503 (default 30)")
    parser.add_argument("--cache-entries", type=int, default=16, help="images kept for /v1/segment (default 16)")
    parser.add_argument("--cache-mb", type=float, default=256.0, help="bytes of cached embeddings, MiB (default 256)")
    parser.add_argument("--max-prompts", type=int, default=64, help="most boxes / points per request (default 64)")
    parser.add_argument("--api-key", default=None,
                        help=f"require this key in X-API-Key (default: ${API_KEY_ENV} if set, else no key)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser calls from this origin (repeatable; CORS is off by default)")
    parser.add_argument("--graceful-timeout", type=float, default=30.0,
                        help="seconds to let requests in flight finish on SIGTERM (default 30)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return parser


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        max_upload_bytes=int(args.max_upload_mb * MiB), max_image_side=args.max_image_side, max_queue=args.max_queue,
        timeout_s=args.timeout, cache_entries=args.cache_entries, cache_bytes=int(args.cache_mb * MiB),
        max_prompts=args.max_prompts, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        cors_origins=list(args.cors_origin),
    )


def load_served_model(sources: Sequence[str], checkpoint: Optional[Path] = None, img_size: Optional[int] = None,
                      device: Optional[str] = None, threads: Optional[int] = None) -> Any:
    """:func:`powersam.load` for the command line's MODEL arguments → a :class:`~powersam.model.Model`."""
    from ..model import _is_exported, load

    paths = [Path(s) for s in sources]
    if len(paths) > 1 or _is_exported(paths[0]):
        if checkpoint is not None or img_size is not None:
            raise ValueError("--checkpoint and --img-size apply to PyTorch models; an export has its weights and "
                             "size built in")
        providers = None if device is None else device.split(":")[0]
        return load(paths if len(paths) > 1 else paths[0], providers=providers, threads=threads)
    options: dict[str, Any] = {} if img_size is None else {"img_size": int(img_size)}
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))
    if checkpoint is not None:
        return load(checkpoint, name=str(sources[0]), device=device, **options)
    if not paths[0].is_file():
        logging.getLogger(__name__).warning("no --checkpoint given: %s runs with random weights", sources[0])
    return load(str(sources[0]), device=device, **options)


def build_app(argv: Sequence[str]) -> Any:
    """The app ``powersam serve ARGV`` would run (for tests and embedding in another ASGI server)."""
    args = add_serve_arguments(argparse.ArgumentParser(prog="powersam serve")).parse_args(list(argv))
    return _app(args)


def _app(args: argparse.Namespace) -> Any:
    from .app import create_app

    config = config_from_args(args)
    model = load_served_model(args.model, args.checkpoint, args.img_size, args.device, args.threads)
    return create_app(model, config, name=args.name)


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / Ctrl-C; exit code 0 after a graceful shutdown."""
    try:
        import uvicorn
    except ImportError:
        print("error: powersam serve needs the serve extra: pip install 'powersam[serve]' (fastapi, uvicorn, "
              "python-multipart)", file=sys.stderr)
        return 1
    try:
        app = _app(args)
    except ImportError as err:
        print(f"error: {err} (pip install 'powersam[serve]')", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, TypeError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    service = app.state.service
    where = f"http://{'localhost' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}/"
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
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                    timeout_graceful_shutdown=args.graceful_timeout, access_log=args.log_level == "debug")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        print(f"stopped on {signal.Signals(received[0]).name}: requests in flight finished", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``powersam serve`` without the rest of the command line (which imports torch to build its parser)."""
    parser = add_serve_arguments(argparse.ArgumentParser(prog="powersam serve", description=__doc__.splitlines()[0]))
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
