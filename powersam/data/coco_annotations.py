"""Reading COCO instance annotations: files and splits, categories, polygons, RLE, ``iscrowd`` and validation.

Helpers shared by :class:`powersam.data.coco.CocoInstances` and ``powersam data check``
(:func:`powersam.data.check.check_dataset`), so both judge a record by the same rules: finding the
annotation file and image folder, mapping category ids to contiguous labels, turning polygons and (un)compressed
RLE into compressed RLE at the image size (:func:`inspect_annotation`), decoding masks and reading image sizes.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from pycocotools import mask as mask_utils

PathLike = Union[str, Path]

_SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation", "valid")}
_BOX_TOLERANCE = 1.0  # pixels a box may stick out of the image before it counts as "partly outside"
MISMATCH_IOU = 0.5  # IoU of a bbox with its mask's extent below which the bbox is suspect (xyxy stored as xywh?)


@dataclass
class AnnotationCheck:
    """What :func:`inspect_annotation` found: a skip ``reason`` (None = usable) and non-fatal ``notes``."""

    reason: Optional[str] = None
    detail: str = ""
    box: Optional[np.ndarray] = None  # xyxy float32, clipped to the image
    rle: Optional[dict] = None  # compressed RLE at the image size (None for boxes-only data)
    mask_box: Optional[np.ndarray] = None  # tight xyxy box of the mask
    notes: list[str] = field(default_factory=list)  # "bbox_partly_outside", "degenerate_polygon_part", "bbox_mask_mismatch"


def _number_list(value: Any) -> Optional[list[float]]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    return [float(v) for v in value]


def _size_field(img: dict, key: str) -> tuple[Optional[int], str]:
    """One of ``width`` / ``height`` of an image record → (value or None, what was wrong: '' when nothing)."""
    value = img.get(key)
    if value is None:
        return None, ""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, ""
    number: Optional[float] = None
    if isinstance(value, (float, str)):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is not None and math.isfinite(number) and number > 0 and number == int(number):
        kind = "the text" if isinstance(value, str) else "the float"
        return int(number), f"{key!r} is {kind} {value!r}, read as {int(number)}"
    return None, f"{key!r} is {value!r} ({type(value).__name__}), not a positive integer: the image file's size is used"


def image_record_size(img: dict) -> tuple[Optional[tuple[int, int]], str]:
    """``(height, width)`` of a COCO image record and what was wrong with its fields ('' when nothing).

    Positive integers are used as they are. Numeric text (``"640"``) and integral floats (``640.0``) are read as the
    integer they name, with a note. Anything else (``true``, ``0``, ``-5``, ``640.5``, ``"abc"``) is not a size: None,
    with a note naming the field, and the size comes from the image file. Both fields absent: None without a note
    (COCO tools leave them out; the file has the size); one absent: None too.
    """
    height, height_note = _size_field(img, "height")
    width, width_note = _size_field(img, "width")
    note = "; ".join(n for n in (height_note, width_note) if n)
    if height is None or width is None:
        return None, note
    return (height, width), note


def _segmentation_to_rle(segm: Any, height: int, width: int, check: AnnotationCheck) -> None:
    """Fill ``check.rle`` from a polygon list or an RLE dict, or set ``check.reason``."""
    if isinstance(segm, list):
        parts = [_number_list(p) for p in segm]
        if any(p is None for p in parts):
            check.reason, check.detail = "invalid_segmentation", "polygon with non-numeric coordinates"
            return
        good = [p for p in parts if len(p) >= 6 and len(p) % 2 == 0 and all(map(math.isfinite, p))]
        if not good:
            check.reason, check.detail = "degenerate_polygon", "no polygon with at least 3 points"
            return
        if len(good) < len(parts):
            check.notes.append("degenerate_polygon_part")
        rle = mask_utils.merge(mask_utils.frPyObjects(good, height, width))
        area = int(mask_utils.area(rle))
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        size = _number_list(segm["size"])
        if size is None or len(size) != 2:
            check.reason, check.detail = "invalid_segmentation", f"RLE size {segm['size']!r} is not [height, width]"
            return
        if [int(size[0]), int(size[1])] != [height, width]:
            check.reason = "rle_size_mismatch"
            check.detail = f"RLE size [{int(size[0])}, {int(size[1])}] != image [height, width] = [{height}, {width}]"
            return
        try:
            if isinstance(segm["counts"], list):  # uncompressed RLE (usual for iscrowd)
                rle = mask_utils.frPyObjects(segm, height, width)
            else:
                counts = segm["counts"]
                rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
            area = int(mask_utils.area(rle))  # also validates the counts
        except Exception as err:  # pycocotools raises bare Exceptions for bad input
            check.reason, check.detail = "invalid_segmentation", f"RLE cannot be read: {err}"
            return
    else:
        check.reason, check.detail = "invalid_segmentation", f"unsupported segmentation of type {type(segm).__name__}"
        return
    if area == 0:
        check.reason, check.detail = "empty_mask", "the segmentation covers no pixel"
        return
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    check.rle, check.mask_box = rle, np.array([x, y, x + w, y + h], dtype=np.float32)
    if check.box is not None and _box_iou(check.box, check.mask_box) < MISMATCH_IOU:
        check.notes.append("bbox_mask_mismatch")


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return float(iw * ih / union) if union > 0 else 0.0


def inspect_annotation(
    ann: dict, height: int, width: int, category_to_label: dict[int, int], expect_masks: bool
) -> AnnotationCheck:
    """Validate one COCO annotation against its image size and the known categories.

    The box comes from ``ann["bbox"]`` (COCO xywh), clipped to the image. With ``expect_masks`` the
    segmentation is converted to a compressed RLE (polygon parts with fewer than 3 points are dropped).
    """
    check = AnnotationCheck()
    category = ann.get("category_id")
    if not isinstance(category, int) or isinstance(category, bool) or category not in category_to_label:
        check.reason, check.detail = "unknown_category", f"category_id {ann.get('category_id')!r} is not in categories"
        return check
    bbox = _number_list(ann.get("bbox"))
    if bbox is None or len(bbox) != 4 or not all(map(math.isfinite, bbox)) or bbox[2] < 0 or bbox[3] < 0:
        check.reason, check.detail = "invalid_bbox", f"bbox {ann.get('bbox')!r} is not [x, y, w, h] with w, h >= 0"
        return check
    x, y, w, h = bbox
    if w == 0 or h == 0:
        check.reason, check.detail = "zero_area_bbox", f"bbox {bbox} has zero width or height"
        return check
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x2 <= x1 or y2 <= y1:
        check.reason, check.detail = "bbox_outside_image", f"bbox {bbox} lies outside the {width}×{height} image"
        return check
    if x < -_BOX_TOLERANCE or y < -_BOX_TOLERANCE or x + w > width + _BOX_TOLERANCE or y + h > height + _BOX_TOLERANCE:
        check.notes.append("bbox_partly_outside")
    check.box = np.array([x1, y1, x2, y2], dtype=np.float32)
    if expect_masks:
        segm = ann.get("segmentation")
        if segm is None or (isinstance(segm, list) and len(segm) == 0):
            check.reason, check.detail = "missing_segmentation", "no segmentation in a dataset with masks"
            return check
        _segmentation_to_rle(segm, height, width, check)
    return check


def _is_box_polygon(ann: dict) -> bool:
    segm, bbox = ann.get("segmentation"), _number_list(ann.get("bbox"))
    if not (isinstance(segm, list) and len(segm) == 1 and bbox is not None and len(bbox) == 4):
        return False
    poly = _number_list(segm[0])
    if poly is None or len(poly) not in (8, 10):  # 4 corners, optionally closed
        return False
    x, y, w, h = bbox
    xs, ys = poly[0::2], poly[1::2]
    return all(min(abs(v - x), abs(v - x - w)) <= 1 for v in xs) and all(min(abs(v - y), abs(v - y - h)) <= 1 for v in ys)


def annotations_are_boxes_only(data: dict) -> bool:
    """True for detection-only COCO files: ``info.annotation_type == "boxes_only"``, or every non-crowd
    annotation is flagged ``segmentation_is_box``, has no segmentation, or has a rectangle polygon equal to its bbox."""
    info = data.get("info")
    if isinstance(info, dict) and info.get("annotation_type") == "boxes_only":
        return True
    anns = [a for a in data.get("annotations", []) if isinstance(a, dict) and not a.get("iscrowd")]
    return bool(anns) and all(
        a.get("segmentation_is_box") or not a.get("segmentation") or _is_box_polygon(a) for a in anns
    )


def resolve_annotation_file(path: PathLike, split: Optional[str] = None) -> tuple[Path, bool]:
    """Find the annotation JSON for ``path`` (see the module docstring).

    Returns ``(json_path, is_split_file)``; ``is_split_file`` is True when the file itself is the requested
    split (so no train/val division is needed).
    """
    path = Path(path)
    if split is not None and split not in _SPLIT_NAMES:
        raise ValueError(f"split must be 'train', 'val' or None; got {split!r}")
    if path.is_file():
        return path, False
    if not path.is_dir():
        raise FileNotFoundError(f"dataset path does not exist: '{path}'")
    if (path / "annotations.json").is_file():
        return path / "annotations.json", False
    ann_dir = path / "annotations"
    candidates = sorted(ann_dir.glob("*.json")) if ann_dir.is_dir() else []
    if split is not None:
        for name in _SPLIT_NAMES[split]:
            for c in candidates:
                if c.stem == name or c.stem.startswith(f"instances_{name}"):
                    return c, True
    if len(candidates) == 1:
        return candidates[0], False
    if not candidates:
        raise FileNotFoundError(f"no annotations.json or annotations/*.json in dataset folder '{path}'")
    names = ", ".join(c.name for c in candidates)
    raise ValueError(f"'{path}' has several annotation files ({names}); pass split='train'/'val' or the JSON file itself")


def resolve_images_dir(json_path: Path, file_names: list[str], images_dir: Optional[PathLike] = None) -> Path:
    """The folder that holds the images named in ``file_names`` (``images_dir`` wins when given)."""
    if images_dir is not None:
        return Path(images_dir)
    here = json_path.parent
    candidates = [here / "images", here.parent / "images"]
    if json_path.stem.startswith("instances_"):
        candidates.append(here.parent / json_path.stem[len("instances_"):])
    candidates.append(here)
    probe = file_names[:5]
    for folder in candidates:
        if folder.is_dir() and probe and any((folder / name).is_file() for name in probe):
            return folder
    return next((c for c in candidates if c.is_dir()), here)


def load_coco_json(json_path: PathLike) -> dict:
    """Read a COCO JSON and check its top-level structure (raises ValueError naming the problem)."""
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"'{json_path}' is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"'{json_path}' must hold a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise ValueError(f"'{json_path}': '{key}' must be a list, got {type(data[key]).__name__}")
    if "images" not in data or "categories" not in data:
        raise ValueError(f"'{json_path}' is not a COCO instances file: it needs 'images' and 'categories' lists")
    return data


def category_labels(categories: list) -> tuple[dict[int, int], list[str]]:
    """Map category ids (sorted) to contiguous labels 0..K−1; returns ``(id → label, class_names)``."""
    by_id: dict[int, str] = {}
    for cat in categories:
        if isinstance(cat, dict) and isinstance(cat.get("id"), int) and cat["id"] not in by_id:
            by_id[cat["id"]] = str(cat.get("name", cat["id"]))
    ids = sorted(by_id)
    return {cid: i for i, cid in enumerate(ids)}, [by_id[cid] for cid in ids]


def _warn_records(found: dict[str, list], where: str, what: str = "skipped invalid records") -> None:
    lines = []
    for reason, ids in found.items():
        shown = ", ".join(str(i) for i in ids[:10]) + (f", … (+{len(ids) - 10})" if len(ids) > 10 else "")
        lines.append(f"  {reason}: {len(ids)} ({shown})")
    warnings.warn(f"{where}: {what} (run `powersam data check` for details):\n" + "\n".join(lines), stacklevel=3)


def decode_rle_masks(rles: list[dict], height: int, width: int) -> np.ndarray:
    """Decode compressed RLEs at ``height×width`` → N×H×W bool (0×H×W for none).

    One mask at a time, so peak memory is the output plus a single H×W mask."""
    out = np.zeros((len(rles), height, width), dtype=bool)
    with warnings.catch_warnings():
        # pycocotools ≤ 2.0.8 trips a harmless NumPy 2 DeprecationWarning on every decode.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*__array__ implementation")
        for i, rle in enumerate(rles):
            out[i] = mask_utils.decode(rle).astype(bool)
    return out


def image_file_size(path: PathLike, verify: bool = False, decode: bool = False) -> Optional[tuple[tuple[int, int], tuple[int, int]]]:
    """``((h, w) as :func:`powersam.io.load_image` returns it — EXIF orientation applied, (h, w) as stored)``
    from the file header, or None when Pillow cannot read it. ``verify`` runs Pillow's cheap structural check,
    ``decode`` decodes all pixels (finds truncated files)."""
    from PIL import Image

    try:
        if verify:
            with Image.open(path) as im:
                im.verify()  # must come straight after open, and spoils the object
        with Image.open(path) as im:
            width, height = im.size
            swap = im.getexif().get(0x0112) in (5, 6, 7, 8)  # orientations that swap the axes
            if decode:
                im.load()
    except Exception:
        return None
    return ((width, height) if swap else (height, width)), (height, width)
