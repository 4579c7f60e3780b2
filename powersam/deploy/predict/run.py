"""Running ``powersam predict``: :func:`predict_sources` drives a model over the sources and always leaves a
closed ``results.json`` and a ``summary.json`` (the command line around it is :mod:`powersam.cli.predict`)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..video import VideoReader
from .outputs import _Run, _summary
from .segment import PROMPT_CLASS_NAMES, make_segment_fn
from .sources import Source

__all__ = ["predict_sources"]


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
    min_side: Optional[int] = None,
    zoom: Optional[float] = None,
) -> dict[str, Any]:
    """Run ``model`` (PyTorch or ONNX runtime) over ``sources`` and write the outputs described in the module doc.

    Returns the ``summary.json`` content. Image ids run from 1 in source order (one per image, one per processed
    video frame); a failed image keeps its id, so ids do not depend on which files fail. ``min_side``: detection
    refuses (lists as failed) images with a side under that many pixels (None: the model's default, 16). ``zoom``:
    box prompts are decoded on crops of that many box sides around them (:mod:`powersam.inference.zoom`).
    """
    from tqdm.auto import tqdm

    segment, mode = make_segment_fn(model, boxes, points, point_labels, conf, iou, max_det, classes,
                                    min_side=min_side, zoom=zoom)
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
                                    max_frames=max_frames, min_side=min_side))
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _expected_frames(path: Path, stride: int, max_frames: Optional[int]) -> int:
    try:
        with VideoReader(path, stride=stride, max_frames=max_frames) as reader:
            return reader.expected_frames
    except (OSError, ValueError):
        return 0  # reported when the video is processed
