"""Outputs of ``powersam predict``: the per-image and per-video loop that writes overlays, instance-index masks
and ``results.json`` (record by record, valid JSON even after an interruption), collects failures instead of
stopping, and the ``summary.json`` content and its printed table."""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

from ...io import IMAGE_EXTENSIONS, load_image
from ...results import Results
from ..video import VIDEO_EXTENSIONS, VideoReader, VideoWriter
from .segment import SegmentFn
from .sources import Source

__all__ = ["format_summary"]


# ---------------------------------------------------------------------------------------------------- outputs
class _JsonArrayWriter:
    """``results.json`` written one record at a time (bounded memory on long videos), closed to valid JSON even
    when the run stops early."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("w", encoding="utf-8")
        self._file.write("[")
        self.count = 0

    def write(self, records: list[dict]) -> None:
        for record in records:
            self._file.write(("," if self.count else "") + "\n" + json.dumps(record))
            self.count += 1
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.write("\n]\n")
            self._file.close()


def _save_instance_map(path: Path, results: Results) -> None:
    """0 = background, i = instance i-1; the highest score is painted last so it wins overlaps. Painted one mask at
    a time, on its box (no full-resolution plane per instance)."""
    if not results.has_masks:
        raise ValueError("--save-masks: the model returned boxes without masks")
    height, width = results.orig_shape
    index_map = np.zeros((height, width), np.uint8 if len(results) < 256 else np.uint16)
    for i in np.argsort(results.scores, kind="stable"):
        y0, x0, mask = results.mask_crop(int(i))
        index_map[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]][mask] = i + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(index_map).save(path)


class _Run:
    """State of one ``predict_sources`` run: writers, counters, failures."""

    def __init__(self, segment: SegmentFn, out_dir: Path, overlay: bool, save_masks: bool, bar: Any) -> None:
        self.segment, self.out_dir, self.overlay, self.save_masks, self.bar = segment, out_dir, overlay, save_masks, bar
        self.writer = _JsonArrayWriter(out_dir / "results.json")
        self.counts: Counter = Counter()
        self.images_with: Counter = Counter()
        self.processed = 0
        self.empty_masks = 0
        self.model_seconds = 0.0
        self.failures: list[dict] = []
        self.outputs: list[dict] = []
        self.next_image_id = 1

    def fail(self, source: Source, error: Union[BaseException, str], frame: Optional[int] = None) -> None:
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        entry = {"file": source.file_name, **({} if frame is None else {"frame": frame}), "error": reason}
        self.failures.append(entry)
        where = source.file_name + ("" if frame is None else f" frame {frame}")
        self.bar.write(f"error: {where}: {reason}", file=sys.stderr)

    def _predict(
        self, rgb: np.ndarray, image_id: int, source: Source, frame: Optional[int]
    ) -> tuple[Results, list[dict]]:
        start = time.perf_counter()
        results = self.segment(rgb)
        self.model_seconds += time.perf_counter() - start
        records = []
        category_ids = range(1, len(results.class_names) + 1)
        for record, name in zip(results.to_coco(image_id, category_ids), results.names()):
            where = {"file_name": source.file_name, **({} if frame is None else {"frame": frame})}
            records.append({**where, **record, "category_name": name})
        return results, records

    def _count(self, results: Results, records: list[dict]) -> None:
        self.writer.write(records)
        names = results.names()
        self.counts.update(names)
        self.images_with.update(set(names))
        self.processed += 1
        self.empty_masks += int(results.empty_masks.sum())

    def image(self, source: Source) -> None:
        image_id, self.next_image_id = self.next_image_id, self.next_image_id + 1
        output = {"file_name": source.file_name, "image_id": image_id, "instances": 0, "overlay": None}
        try:
            if source.kind != "image":
                raise ValueError(f"unsupported file type '{source.path.suffix}' (images: "
                                 f"{', '.join(IMAGE_EXTENSIONS)}; videos: {', '.join(VIDEO_EXTENSIONS)})")
            rgb = load_image(source.path)
            results, records = self._predict(rgb, image_id, source, None)
            if self.overlay:
                output["overlay"] = results.save(self.out_dir / f"{source.stem}.png", rgb).name
            if self.save_masks:
                _save_instance_map(self.out_dir / "masks" / f"{source.stem}.png", results)
        except Exception as err:  # one bad file must not end the run
            self.fail(source, err)
        else:  # all outputs of a file, or none of them
            self._count(results, records)
            output["instances"] = len(results)
            self.outputs.append(output)
        self.bar.update(1)

    def video(self, source: Source, stride: int, max_frames: Optional[int]) -> None:
        try:
            reader = VideoReader(source.path, stride=stride, max_frames=max_frames)
        except Exception as err:
            self.fail(source, err)
            return
        overlay_path = self.out_dir / f"{source.stem}_overlay.mp4"
        writer = VideoWriter(overlay_path, reader.output_fps) if self.overlay else None
        output = {"file_name": source.file_name, "first_image_id": self.next_image_id, "frames": 0, "instances": 0,
                  "overlay": overlay_path.name if writer else None}
        with reader, writer or nullcontext():
            for frame, rgb in reader:
                image_id, self.next_image_id = self.next_image_id, self.next_image_id + 1
                output["frames"] += 1
                canvas = rgb
                try:
                    results, records = self._predict(rgb, image_id, source, frame)
                    canvas = results.plot(rgb) if writer else rgb
                    if self.save_masks:
                        _save_instance_map(self.out_dir / "masks" / source.stem / f"{frame:06d}.png", results)
                except Exception as err:  # a failed frame keeps its place in the overlay, unannotated
                    self.fail(source, err, frame)
                else:
                    self._count(results, records)
                    output["instances"] += len(results)
                if writer is not None:
                    try:
                        writer.write(canvas)
                    except Exception as err:
                        self.fail(source, f"overlay video: {err}", frame)
                        writer.close()
                        writer, output["overlay"] = None, None
                self.bar.update(1)
        if output["frames"] == 0:
            self.fail(source, "no frame could be decoded")
        self.outputs.append(output)



def _summary(run: _Run, seconds: float, mode: str, class_names: list[str], model_label: Optional[str],
             interrupted: bool, settings: dict) -> dict[str, Any]:
    names = class_names + sorted(set(run.counts) - set(class_names))
    return {
        "model": model_label,
        "mode": mode,
        "images_processed": run.processed,
        "instances": sum(run.counts.values()),
        "empty_masks": run.empty_masks,
        "counts": {name: run.counts.get(name, 0) for name in names},
        "images_with": {name: run.images_with.get(name, 0) for name in names},
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(names)],
        "failures": run.failures,
        "throughput": {
            "seconds": round(seconds, 4),
            "images_per_s": round(run.processed / seconds, 3) if run.processed and seconds > 0 else 0.0,
            "ms_per_image": round(1000 * seconds / run.processed, 2) if run.processed else None,
            "model_ms_per_image": round(1000 * run.model_seconds / run.processed, 2) if run.processed else None,
        },
        "outputs": run.outputs,
        "settings": settings,
        "interrupted": interrupted,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The per-class count table and the throughput line printed at the end of ``powersam predict``."""
    rows = [(name, n, summary["images_with"][name]) for name, n in summary["counts"].items() if n]
    lines = []
    if rows:
        width = max(len("class"), *(len(name) for name, _, _ in rows))
        lines.append(f"{'class':<{width}}  {'instances':>9}  {'images':>6}")
        lines += [f"{name:<{width}}  {n:>9}  {k:>6}" for name, n, k in rows]
        lines.append(f"{'total':<{width}}  {summary['instances']:>9}  {summary['images_processed']:>6}")
    else:
        lines.append(f"no instances found in {summary['images_processed']} image(s)")
    speed = summary["throughput"]
    if speed["ms_per_image"] is not None:
        lines.append(
            f"{summary['images_processed']} image(s) in {speed['seconds']:.2f} s: {speed['images_per_s']:.2f} "
            f"images/s, {speed['ms_per_image']:.1f} ms/image (model {speed['model_ms_per_image']:.1f} ms/image)"
        )
    if summary.get("empty_masks"):
        lines.append(f"warning: {summary['empty_masks']} of {summary['instances']} instance(s) have an empty mask (no "
                     "pixel at the image's resolution); they are in results.json with an empty segmentation")
    if summary["failures"]:
        lines.append(f"{len(summary['failures'])} failure(s), listed in summary.json")
    return "\n".join(lines)

