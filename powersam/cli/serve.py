"""``powersam serve MODEL``: options → :func:`powersam.serve.server.create_served_app`, run under uvicorn.

Imports neither torch nor fastapi to build its parser: ``powersam serve`` comes here before the full command line
is built (see :func:`powersam.cli.main`), so an ONNX model is served on a torch-free device.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .options import ort_spinning

API_KEY_ENV = "POWERSAM_API_KEY"
DESCRIPTION = "HTTP inference service and web page for one model (needs the serve extra)"
# ``powersam serve --help``'s description, as before the command line became a package
MAIN_DESCRIPTION = "``powersam serve MODEL``: load a model with :func:`powersam.load`, build the app, run it under uvicorn."


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
    parser.add_argument("--ort-spinning", type=ort_spinning, default=None, metavar="on|off",
                        help="ONNX models: ORT's worker threads busy-wait after a run (on) or sleep (off); off can "
                             "free the cores sooner on a shared machine (default: ONNX Runtime's, on)")
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


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~powersam.serve.limits.ServeConfig` of the parsed options."""
    from ..serve.limits import MiB, ServeConfig

    return ServeConfig(
        max_upload_bytes=int(args.max_upload_mb * MiB), max_image_side=args.max_image_side, max_queue=args.max_queue,
        timeout_s=args.timeout, cache_entries=args.cache_entries, cache_bytes=int(args.cache_mb * MiB),
        max_prompts=args.max_prompts, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        cors_origins=list(args.cors_origin),
    )


def build_app(argv: Sequence[str]) -> Any:
    """The app ``powersam serve ARGV`` would run (for tests and embedding in another ASGI server)."""
    args = add_serve_arguments(argparse.ArgumentParser(prog="powersam serve")).parse_args(list(argv))
    return _app(args)


def _app(args: argparse.Namespace) -> Any:
    from ..serve.server import create_served_app

    return create_served_app(args.model, config_from_args(args), args.checkpoint, args.img_size, args.device,
                             args.threads, name=args.name, spinning=args.ort_spinning)


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / Ctrl-C; exit code 0 after a graceful shutdown."""
    try:
        import uvicorn  # noqa: F401  (checked before the model loads)
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
    from ..serve.server import serve_forever

    serve_forever(app, args.host, args.port, args.log_level, args.graceful_timeout)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``powersam serve`` without the rest of the command line."""
    parser = add_serve_arguments(argparse.ArgumentParser(prog="powersam serve", description=MAIN_DESCRIPTION))
    return run_serve(parser.parse_args(argv))


def register(sub: Any) -> None:
    """Add ``serve`` to the ``powersam`` sub-command parsers ``sub``."""
    p = sub.add_parser("serve", help=DESCRIPTION)
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)


if __name__ == "__main__":
    sys.exit(main())
