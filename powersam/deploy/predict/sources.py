"""Inputs of ``powersam predict``: files, folders, glob patterns and videos become :class:`Source` s, and the
``--boxes`` / ``--points`` texts become prompt arrays. Everything here fails before a model is loaded or an output
is written, so a typo costs nothing."""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from ...io import IMAGE_EXTENSIONS
from ..video import VIDEO_EXTENSIONS

__all__ = ["Source", "collect_sources", "parse_boxes", "parse_points"]


# ---------------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    """One input file: ``kind`` is ``"image"``, ``"video"`` or ``"unsupported"``; ``file_name`` is what
    ``results.json`` records (relative to a folder source, else as given); ``stem`` names its outputs."""

    path: Path
    file_name: str
    kind: str
    stem: str


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_EXTENSIONS else "video" if suffix in VIDEO_EXTENSIONS else "unsupported"


def collect_sources(specs: Sequence[Union[str, Path]], recursive: bool = False) -> list[Source]:
    """Expand files, folders and glob patterns into :class:`Source` s.

    A folder gives its image and video files sorted by path (subfolders too with ``recursive``); a glob gives its
    matching image and video files (``**`` with ``recursive``); a file is taken whatever its suffix (an unsupported
    one is then reported as a per-file failure). A file named twice is kept once.

    Raises:
        FileNotFoundError: a path that is neither a file, a folder nor a glob pattern.
        ValueError: a folder or pattern without any image or video.
    """
    wanted = ", ".join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
    found: list[tuple[Path, str]] = []
    for spec in specs:
        text = str(spec)
        path = Path(text)
        if path.is_file():
            found.append((path, text))
        elif path.is_dir():
            members = path.rglob("*") if recursive else path.iterdir()
            files = sorted(p for p in members if p.is_file() and _kind(p) != "unsupported")
            if not files:
                hint = "" if recursive else "; add --recursive to search subfolders"
                raise ValueError(f"no images or videos in folder '{path}' (looked for {wanted}{hint})")
            found += [(p, p.relative_to(path).as_posix()) for p in files]
        elif any(char in text for char in "*?["):
            matches = map(Path, glob.glob(text, recursive=recursive))
            files = sorted(p for p in matches if p.is_file() and _kind(p) != "unsupported")
            if not files:
                raise ValueError(f"no images or videos match '{text}' (looked for {wanted})")
            found += [(p, p.as_posix()) for p in files]
        else:
            raise FileNotFoundError(f"no such file or folder, and not a glob pattern: '{text}'")

    sources, seen, stems = [], set(), set()
    for path, file_name in found:
        key = path.resolve()
        if key in seen:
            continue
        seen.add(key)
        stem, k = path.stem, 1
        while stem in stems:  # same name in two folders: keep both outputs
            k += 1
            stem = f"{path.stem}_{k}"
        stems.add(stem)
        sources.append(Source(path, file_name, _kind(path), stem))
    return sources


# ---------------------------------------------------------------------------------------------------- prompts
def _numbers(item: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in item.split(",")]
    except ValueError:
        raise ValueError(f"{what} {item!r} must be comma-separated numbers") from None
    if not np.isfinite(values).all():
        raise ValueError(f"{what} {item!r} contains NaN or infinity")
    return values


def parse_boxes(text: str) -> np.ndarray:
    """``"x0,y0,x1,y1;..."`` (original-image pixels) → N×4 float64 xyxy. Raises ValueError on a malformed box."""
    items = [item.strip() for item in text.split(";") if item.strip()]
    if not items:
        raise ValueError("--boxes is empty; expected 'x0,y0,x1,y1;...'")
    boxes = []
    for item in items:
        values = _numbers(item, "box")
        if len(values) != 4:
            raise ValueError(f"box {item!r} must have 4 values x0,y0,x1,y1; got {len(values)}")
        if values[2] <= values[0] or values[3] <= values[1]:
            raise ValueError(f"box {item!r} must have x1 > x0 and y1 > y0")
        boxes.append(values)
    return np.asarray(boxes, dtype=np.float64)


def parse_points(text: str) -> tuple[np.ndarray, np.ndarray]:
    """``"x,y[,label];..."`` → (K×2 float64 coordinates, K int64 labels: 1 foreground (default), 0 background)."""
    items = [item.strip() for item in text.split(";") if item.strip()]
    if not items:
        raise ValueError("--points is empty; expected 'x,y[,label];...'")
    coords, labels = [], []
    for item in items:
        values = _numbers(item, "point")
        if len(values) not in (2, 3):
            raise ValueError(f"point {item!r} must be x,y or x,y,label; got {len(values)} values")
        label = 1 if len(values) == 2 else values[2]
        if label not in (0, 1):
            raise ValueError(f"point {item!r}: label must be 1 (foreground) or 0 (background); got {values[2]:g}")
        coords.append(values[:2])
        labels.append(int(label))
    return np.asarray(coords, dtype=np.float64), np.asarray(labels, dtype=np.int64)
