"""Running ``powersam predict``: :func:`predict_sources` drives a model over the sources and always leaves a
closed ``results.json`` and a ``summary.json``; :func:`add_predict_arguments` / :func:`run_predict` are the
command line around it."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..video import VideoReader
from .outputs import _Run, _summary, format_summary
from .segment import PROMPT_CLASS_NAMES, load_model, make_segment_fn
from .sources import Source, collect_sources, parse_boxes, parse_points

__all__ = ["add_predict_arguments", "predict_sources", "run_predict"]


def predict_sources(
    model: Any,
    sources: Sequence[Source],
    out_dir: Union[str, Path],
    *,
    boxes: Optional[np.ndarray] = None,
    points: Optional[np.ndarray] = None,
    point_labels: Optional[np.ndarray] = None,
    conf: Optional[float] = None,
    iou: Optional[float] = None,
    max_det: Optional[int] = None,
    classes: Optional[Sequence[str]] = None,
    overlay: bool = True,
    save_masks: bool = False,
    stride: int = 1,
    max_frames: Optional[int] = None,
    progress: bool = True,
    model_label: Optional[str] = None,
) -> dict[str, Any]:
    """Run ``model`` (PyTorch or ONNX runtime) over ``sources`` and write the outputs described in the module doc.

    Returns the ``summary.json`` content. Image ids run from 1 in source order (one per image, one per processed
    video frame); a failed image keeps its id, so ids do not depend on which files fail.
    """
    from tqdm.auto import tqdm

    segment, mode = make_segment_fn(model, boxes, points, point_labels, conf, iou, max_det, classes)
    out_dir = Path(out_dir)
    for source in sources:
        if overlay and source.kind == "image" and (out_dir / f"{source.stem}.png").resolve() == source.path.resolve():
            raise ValueError(
                f"--out '{out_dir}' would overwrite the input image '{source.path}'; choose another folder"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(1 for s in sources if s.kind != "video")
    total += sum(_expected_frames(s.path, stride, max_frames) for s in sources if s.kind == "video")
    class_names = list(getattr(model, "class_names", ())) if mode == "detect" else list(PROMPT_CLASS_NAMES)

    start, interrupted = time.perf_counter(), True
    with tqdm(total=total or None, desc="predict", unit="img", disable=not progress) as bar:
        run = _Run(segment, out_dir, overlay, save_masks, bar)
        try:
            for source in sources:
                if source.kind == "video":
                    run.video(source, stride, max_frames)
                else:
                    run.image(source)
            interrupted = False
        finally:  # also on Ctrl-C: results.json is closed and the summary says how far the run got
            run.writer.close()
            summary = _summary(run, time.perf_counter() - start, mode, class_names, model_label, interrupted,
                               dict(conf=conf, iou=iou, max_det=max_det, classes=list(classes) if classes else None,
                                    boxes=None if boxes is None else boxes.tolist(),
                                    points=None if points is None else points.tolist(), stride=stride,
                                    max_frames=max_frames))
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _expected_frames(path: Path, stride: int, max_frames: Optional[int]) -> int:
    try:
        with VideoReader(path, stride=stride, max_frames=max_frames) as reader:
            return reader.expected_frames
    except (OSError, ValueError):
        return 0  # reported when the video is processed



# ---------------------------------------------------------------------------------------------------- command line
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
    parser.add_argument("--classes", default=None, help="keep only these detected classes (comma-separated names)")
    parser.add_argument("--conf", type=float, default=0.5, help="detection score threshold (default 0.5)")
    parser.add_argument("--iou", type=float, default=0.65, help="NMS IoU threshold (default 0.65)")
    parser.add_argument("--max-det", type=int, default=100, help="detections kept per image (default 100)")
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


def run_predict(args: argparse.Namespace) -> int:
    """``powersam predict``: exit code 0 if every file was processed, 1 if any failed or the run could not start."""
    try:
        _check_arguments(args)
        boxes = parse_boxes(args.boxes) if args.boxes is not None else None
        points, labels = parse_points(args.points) if args.points is not None else (None, None)
        classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
        sources = collect_sources(args.source, recursive=args.recursive)
        if args.server:
            if args.model or args.checkpoint or args.img_size or args.device:
                raise ValueError("--server runs the server's model: drop --model, --checkpoint, --img-size, --device")
            from ...client import Client

            model = Client(args.server, api_key=args.api_key)
        else:
            model = load_model(args.model, args.checkpoint, args.img_size, args.device)
        summary = predict_sources(
            model, sources, args.out, boxes=boxes, points=points, point_labels=labels, conf=args.conf, iou=args.iou,
            max_det=args.max_det, classes=classes, overlay=not args.no_overlay, save_masks=args.save_masks,
            stride=args.stride, max_frames=args.max_frames, progress=not args.no_progress,
            model_label=str(args.model) if args.model else getattr(model, "model_name", None),
        )
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'summary.json'}")
    return 1 if summary["failures"] else 0
