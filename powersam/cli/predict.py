"""``powersam predict``: options → :func:`powersam.deploy.predict.predict_sources` on a local model or a server.

Imports nothing heavy until it runs, and then only what the model needs: an ``.onnx`` model runs without torch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_predict_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``powersam predict``."""
    parser.add_argument("source", nargs="+", metavar="SOURCE",
                        help="image file, folder, glob pattern (quoted) or video (.mp4/.avi/.mov/.mkv)")
    parser.add_argument("--model", default=None, help="zoo model name, or a .onnx file for the torch-free runtime "
                        "(optional with a checkpoint that records its model)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights for a zoo model")
    parser.add_argument("--server", default=None, metavar="URL",
                        help="run on a `powersam serve` server instead of a local model (http://host:8000)")
    parser.add_argument("--api-key", default=None, help="API key for --server (default: $POWERSAM_API_KEY)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--boxes", default=None, metavar="X0,Y0,X1,Y1;...",
                        help="box prompts in image pixels, the same for every image; with a detecting model they "
                             "replace detection")
    parser.add_argument("--points", default=None, metavar="X,Y[,LABEL];...",
                        help="point prompts (label 1 foreground, default; 0 background), one prompt for every image "
                             "(added to each box's prompt with --boxes)")
    parser.add_argument("--zoom", type=float, default=None, metavar="CONTEXT",
                        help="decode each box (given with --boxes, or detected) on a crop of CONTEXT box sides around "
                             "it, at the model's full input size: small equipment on large photos; docs/zoom.md")
    parser.add_argument("--classes", default=None, help="keep only these detected classes (comma-separated names)")
    parser.add_argument("--conf", type=float, default=0.5, help="detection score threshold (default 0.5)")
    parser.add_argument("--iou", type=float, default=0.65, help="NMS IoU threshold (default 0.65)")
    parser.add_argument("--max-det", type=int, default=100, help="detections kept per image (default 100)")
    parser.add_argument("--min-side", type=int, default=None, metavar="PIXELS",
                        help="detection: refuse (list as failed) images with a side under this many pixels "
                             "(default 16; 0 accepts any size)")
    parser.add_argument("--img-size", type=int, default=None,
                        help="network input size of a zoo model (default 1024, or the checkpoint's)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--recursive", action="store_true", help="include subfolders of a folder source; ** in globs")
    parser.add_argument("--stride", type=int, default=1, help="video: process every K-th frame (default 1)")
    parser.add_argument("--max-frames", type=int, default=None, help="video: process at most N frames")
    parser.add_argument("--no-overlay", action="store_true", help="do not write overlay images / videos")
    parser.add_argument("--save-masks", action="store_true", help="also write instance-index mask PNGs under masks/")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _check_arguments(args: argparse.Namespace) -> None:
    if not 0.0 <= args.conf <= 1.0 or not 0.0 <= args.iou <= 1.0:
        raise ValueError(f"--conf and --iou must lie in [0, 1]; got --conf {args.conf}, --iou {args.iou}")
    for name in ("max_det", "stride", "max_frames", "img_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; got {value}")
    if args.min_side is not None and args.min_side < 0:
        raise ValueError(f"--min-side must be >= 0 (0: any size); got {args.min_side}")


def run_predict(args: argparse.Namespace) -> int:
    """``powersam predict``: exit code 0 if every file was processed, 1 if any failed or the run could not start."""
    from ..deploy.predict import (collect_sources, format_summary, load_model, parse_boxes, parse_points,
                                  predict_sources)

    try:
        _check_arguments(args)
        boxes = parse_boxes(args.boxes) if args.boxes is not None else None
        points, labels = parse_points(args.points) if args.points is not None else (None, None)
        classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
        sources = collect_sources(args.source, recursive=args.recursive)
        if args.server:
            if args.model or args.checkpoint or args.img_size or args.device or args.min_side is not None:
                raise ValueError("--server runs the server's model: drop --model, --checkpoint, --img-size, --device, "
                                 "--min-side")
            from ..client import Client

            model = Client(args.server, api_key=args.api_key)
        else:
            model = load_model(args.model, args.checkpoint, args.img_size, args.device)
        summary = predict_sources(
            model, sources, args.out, boxes=boxes, points=points, point_labels=labels, conf=args.conf, iou=args.iou,
            max_det=args.max_det, classes=classes, overlay=not args.no_overlay, save_masks=args.save_masks,
            stride=args.stride, max_frames=args.max_frames, progress=not args.no_progress,
            model_label=str(args.model) if args.model else getattr(model, "model_name", None),
            min_side=args.min_side, zoom=args.zoom,
        )
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'summary.json'}")
    return 1 if summary["failures"] else 0


def register(sub: Any) -> None:
    """Add ``predict`` to the ``powersam`` sub-command parsers ``sub``."""
    p = sub.add_parser("predict", help="segment images, folders, globs or videos; write overlays, COCO results, "
                                       "a summary")
    add_predict_arguments(p)
    p.set_defaults(func=run_predict)
