"""COCO instance datasets (the user's own data) for PowerSAM training and evaluation.

Layouts accepted by :class:`CocoInstances` (``path``):

* a JSON file — images are looked up in ``images_dir`` or, if not given, the first of ``<json dir>/images``,
  ``<json dir>/../images``, ``<json dir>/../<split name>`` (``instances_val2017.json`` → ``val2017``) and
  ``<json dir>`` that holds the first image files;
* a dataset folder with ``annotations.json`` and ``images/`` (one file: ``split`` picks a deterministic
  train/val part of it, see below);
* a dataset folder with per-split files ``annotations/{train,val}.json`` or ``annotations/instances_{split}*.json``
  (``split`` picks the file; ``validation``/``valid`` are accepted for ``val``).

Conventions: boxes are ``xyxy`` float32 pixels of the loaded image, clipped to it; labels are contiguous
0..K−1 in category-id order (``class_names[label]``); masks are decoded with pycocotools from polygons,
compressed or uncompressed RLE. ``iscrowd=1`` regions are never instances: they come back as *ignore* boxes/masks.

Bad records are skipped, counted in :attr:`CocoInstances.skipped` and reported in one warning (ids listed),
so a broken annotation never stops a training run; ``skip_invalid=False`` raises instead. ``powersam data
check`` (:func:`powersam.data.check.check_dataset`) explains each problem in detail.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .coco_annotations import (  # re-exported: importers use them from here
    _SPLIT_NAMES,
    MISMATCH_IOU,
    AnnotationCheck,
    PathLike,
    _warn_records,
    annotations_are_boxes_only,
    category_labels,
    decode_rle_masks,
    image_file_size,
    image_record_size,
    inspect_annotation,
    load_coco_json,
    resolve_annotation_file,
    resolve_images_dir,
)

__all__ = [
    "MISMATCH_IOU",
    "AnnotationCheck",
    "CocoInstances",
    "PathLike",
    "Sample",
    "annotations_are_boxes_only",
    "category_labels",
    "decode_rle_masks",
    "image_file_size",
    "image_record_size",
    "inspect_annotation",
    "load_coco_json",
    "resolve_annotation_file",
    "resolve_images_dir",
    "split_image_ids",
]


@dataclass
class Sample:
    """One image with its instances. N instances, M crowd (ignore) regions, image of H×W pixels."""

    image: np.ndarray  # H×W×3 uint8 RGB
    image_id: int
    file_name: str
    boxes: np.ndarray  # N×4 float32 xyxy pixels
    labels: np.ndarray  # N int64 in 0..K-1
    masks: Optional[np.ndarray]  # N×H×W bool; None for boxes-only data or load_masks=False
    annotation_ids: np.ndarray  # N int64
    ignore_boxes: np.ndarray  # M×4 float32 xyxy of iscrowd regions
    ignore_mask: Optional[np.ndarray]  # H×W bool union of iscrowd regions (None like masks)
    orig_size: tuple[int, int]  # (H, W)


@dataclass
class _Instance:
    annotation_id: int
    label: int
    box: np.ndarray
    rle: Optional[dict]


@dataclass
class _ImageEntry:
    image_id: int
    file_name: str
    path: Path
    height: int
    width: int
    instances: list[_Instance]
    crowd: list[_Instance]


def split_image_ids(image_ids: list[int], split: str, val_fraction: float, seed: int) -> set[int]:
    """The ids of ``split`` in a deterministic train/val division of ``image_ids``.

    Images are ranked by a hash of ``(seed, image_id)`` and the first ``round(val_fraction · n)`` (at least 1
    and at most n−1 when n ≥ 2) are val. Membership depends only on the ids, seed and fraction, not on file
    order or on which image files exist.
    """
    if split not in _SPLIT_NAMES:
        raise ValueError(f"split must be 'train' or 'val'; got {split!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1); got {val_fraction}")
    unique = sorted(set(image_ids))
    order = sorted(unique, key=lambda i: (hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), i))
    n_val = min(max(round(val_fraction * len(unique)), 1), len(unique) - 1) if len(unique) >= 2 else 0
    val = set(order[:n_val])
    return val if split == "val" else set(unique) - val


class CocoInstances:
    """A COCO instances dataset: ``len(ds)`` images, ``ds[i]`` → :class:`Sample`.

    Args:
        path: a dataset folder or an annotation JSON (see the module docstring).
        images_dir: folder the ``file_name`` entries are relative to (default: found next to the JSON).
        split: ``"train"``, ``"val"`` or None (all images). With a single annotation file the split is a
            deterministic hash division (:func:`split_image_ids`); with per-split files it picks the file.
        val_fraction: share of images in ``"val"`` for the hash division.
        seed: seed of the hash division (same seed → same split).
        skip_invalid: skip bad records with a warning (True) or raise ``ValueError`` (False). An image that
            cannot be decoded at ``ds[i]`` time is then replaced by the next readable one.
        load_masks: decode instance masks in ``ds[i]`` (ignored for boxes-only data, :attr:`has_masks` False).
        drop_empty: leave out images without any valid instance (crowd regions do not count).

    Attributes: ``class_names``, ``category_ids`` (label → COCO id), ``has_masks``, ``images_dir``,
    ``annotation_file``, ``skipped`` (reason → ids: image ids for image-level reasons, else annotation ids)
    and ``notes`` (non-fatal findings, same shape).
    """

    def __init__(
        self,
        path: PathLike,
        images_dir: Optional[PathLike] = None,
        split: Optional[str] = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        skip_invalid: bool = True,
        *,
        load_masks: bool = True,
        drop_empty: bool = False,
    ) -> None:
        json_path, is_split_file = resolve_annotation_file(path, split)
        data = load_coco_json(json_path)
        self.annotation_file, self.split = json_path, split
        self.skip_invalid, self.load_masks = skip_invalid, load_masks
        self.cat_id_to_label, self.class_names = category_labels(data["categories"])
        self.category_ids = sorted(self.cat_id_to_label)
        self.has_masks = not annotations_are_boxes_only(data)
        self.skipped: dict[str, list] = {}
        self.notes: dict[str, list] = {}
        self._warned_sizes: set[int] = set()

        records: dict[int, dict] = {}
        for index, img in enumerate(data["images"]):
            image_id = img.get("id") if isinstance(img, dict) else None
            if not isinstance(image_id, int) or isinstance(image_id, bool) or not isinstance(img.get("file_name"), str):
                self._skip("invalid_image_record", image_id if image_id is not None else f"#{index}")
            elif image_id in records:
                self._skip("duplicate_image_id", image_id)
            else:
                records[image_id] = img
        self.images_dir = resolve_images_dir(json_path, [r["file_name"] for r in records.values()], images_dir)
        selected = set(records)
        if split is not None and not is_split_file:
            selected = split_image_ids(list(records), split, val_fraction, seed)

        entries: dict[int, _ImageEntry] = {}
        size_notes: list[str] = []
        for image_id, img in records.items():
            if image_id not in selected:
                continue
            file_path = self.images_dir / img["file_name"]
            if not file_path.is_file():
                self._skip("missing_image_file", image_id)
                continue
            size, note = image_record_size(img)
            if note:  # "640" read as 640, or no usable size at all
                self.notes.setdefault("invalid_image_size", []).append(image_id)
                size_notes.append(f"image {image_id}: {note}")
            if size is None:
                sizes = image_file_size(file_path)  # tolerate records without width/height
                if sizes is None:
                    self._skip("unreadable_image", image_id)
                    continue
                size = sizes[0]
            entries[image_id] = _ImageEntry(image_id, img["file_name"], file_path, *size, [], [])
        if size_notes:
            more = f"; … (+{len(size_notes) - 3} more)" if len(size_notes) > 3 else ""
            warnings.warn(f"{json_path}: invalid_image_size: {len(size_notes)} image record(s) whose width/height is "
                          f"not a positive integer: {'; '.join(size_notes[:3])}{more} (run `powersam data check` "
                          "for details)", stacklevel=2)

        seen_ann_ids: set = set()
        for index, ann in enumerate(data.get("annotations", [])):
            ann_id = ann.get("id", f"#{index}") if isinstance(ann, dict) else f"#{index}"
            if isinstance(ann, dict) and "id" not in ann:  # kept, numbered -1: say so
                self.notes.setdefault("missing_annotation_id", []).append(f"#{index}")
            elif not isinstance(ann_id, int) or isinstance(ann_id, bool):
                self.notes.setdefault("invalid_annotation_id", []).append(f"#{index} ({ann_id!r})")
            elif ann_id in seen_ann_ids:  # both kept (they are different objects), but COCO tools index by id
                self.notes.setdefault("duplicate_annotation_id", []).append(ann_id)
            if isinstance(ann_id, int):
                seen_ann_ids.add(ann_id)
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            if not isinstance(image_id, int) or isinstance(image_id, bool) or image_id not in records:  # list: no hash
                self._skip("unknown_image_id", ann_id)
                continue
            entry = entries.get(image_id)
            if entry is None:  # other split, or its image was skipped
                continue
            check = inspect_annotation(ann, entry.height, entry.width, self.cat_id_to_label, self.has_masks)
            for note in check.notes:
                self.notes.setdefault(note, []).append(ann_id)
            if check.reason is not None:
                self._skip(check.reason, ann_id)
                continue
            label = self.cat_id_to_label[ann["category_id"]]
            instance = _Instance(ann_id if isinstance(ann_id, int) else -1, label, check.box, check.rle)
            (entry.crowd if ann.get("iscrowd") else entry.instances).append(instance)

        self._entries = [e for e in entries.values() if e.instances or not drop_empty]
        if "duplicate_annotation_id" in self.notes:
            _warn_records({"duplicate_annotation_id": self.notes["duplicate_annotation_id"]}, str(json_path),
                          "annotation ids used twice (both kept; pycocotools keeps only one per id: renumber them)")
        unnumbered = {k: self.notes[k] for k in ("missing_annotation_id", "invalid_annotation_id") if k in self.notes}
        if unnumbered:
            _warn_records(unnumbered, str(json_path),
                          "annotations whose id is missing or not an integer (kept, numbered -1: give each an "
                          "integer id so results can be traced back to them)")
        if "bbox_mask_mismatch" in self.notes:
            _warn_records({"bbox_mask_mismatch": self.notes["bbox_mask_mismatch"]}, str(json_path),
                          f"boxes that do not match their masks (IoU < {MISMATCH_IOU}; is bbox really COCO xywh?)")
        if self.skipped:
            if not skip_invalid:
                counts = ", ".join(f"{k}: {len(v)}" for k, v in self.skipped.items())
                raise ValueError(f"'{json_path}' has invalid records ({counts}); run `powersam data check` for details")
            _warn_records(self.skipped, str(json_path))

    def _skip(self, reason: str, record_id: Any) -> None:
        self.skipped.setdefault(reason, []).append(record_id)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_ids(self) -> list[int]:
        return [e.image_id for e in self._entries]

    @property
    def num_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"CocoInstances('{self.annotation_file}', split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes}, has_masks={self.has_masks}, skipped={self.num_skipped})"
        )

    def image_info(self, index: int) -> dict:
        """Metadata of image ``index`` without decoding it: id, file name, path, size and instance count."""
        e = self._entries[index]
        return {
            "image_id": e.image_id, "file_name": e.file_name, "path": e.path,
            "height": e.height, "width": e.width, "num_instances": len(e.instances),
        }

    def __getitem__(self, index: int) -> Sample:
        from powersam.io import load_image

        n = len(self._entries)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        index %= n
        for attempt in range(n):
            entry = self._entries[(index + attempt) % n]
            try:
                image = load_image(entry.path)
                if image.shape[:2] != (entry.height, entry.width) and image.shape[:2] == (entry.width, entry.height):
                    image = self._load_unrotated(entry, image)
            except (ValueError, OSError) as err:
                if not self.skip_invalid:
                    raise
                if entry.image_id not in self.skipped.get("unreadable_image", []):
                    self._skip("unreadable_image", entry.image_id)
                    warnings.warn(f"cannot decode image {entry.image_id} ('{entry.path}'): {err}; using the next image", stacklevel=2)
                continue
            return self._make_sample(entry, image)
        raise RuntimeError(f"none of the {n} images of '{self.annotation_file}' can be decoded")

    def _load_unrotated(self, entry: _ImageEntry, rotated: np.ndarray) -> np.ndarray:
        """The JSON size is the transposed image size: if the file's EXIF orientation explains it, the annotations
        were made on the stored (un-rotated) pixels, so use those."""
        from PIL import Image

        from powersam.io import load_image

        with Image.open(entry.path) as im:
            if im.getexif().get(0x0112) not in (5, 6, 7, 8):
                return rotated
            image = load_image(im)  # a PIL image is taken as stored, without applying EXIF
        if entry.image_id not in self._warned_sizes:
            self._warned_sizes.add(entry.image_id)
            warnings.warn(
                f"image {entry.image_id} ('{entry.file_name}'): the JSON size matches the pixels as stored, not as "
                "rotated by its EXIF orientation; EXIF is ignored so the annotations line up", stacklevel=3
            )
        return image

    def _make_sample(self, entry: _ImageEntry, image: np.ndarray) -> Sample:
        height, width = image.shape[:2]
        boxes = np.stack([i.box for i in entry.instances]) if entry.instances else np.zeros((0, 4), np.float32)
        ignore_boxes = np.stack([i.box for i in entry.crowd]) if entry.crowd else np.zeros((0, 4), np.float32)
        masks = ignore_mask = None
        if self.has_masks and self.load_masks:
            masks = decode_rle_masks([i.rle for i in entry.instances], entry.height, entry.width)
            ignore_mask = decode_rle_masks([i.rle for i in entry.crowd], entry.height, entry.width).any(axis=0)
        if (height, width) != (entry.height, entry.width):
            # The JSON was made for a uniformly resized image: stretch the annotations to the pixels we have rather
            # than fail; `powersam data check` reports it. Another aspect ratio means the JSON's width/height are
            # wrong, and stretching would silently misplace every mask.
            if abs(width / entry.width - height / entry.height) > 0.01 * max(width / entry.width, height / entry.height):
                raise ValueError(
                    f"image {entry.image_id} ('{entry.path}') is {width}×{height} pixels but its JSON record says "
                    f"width={entry.width}, height={entry.height} (another aspect ratio, so not a resize): fix the "
                    f"'width'/'height' fields of image id {entry.image_id} in {self.annotation_file}")
            if entry.image_id not in self._warned_sizes:
                self._warned_sizes.add(entry.image_id)
                warnings.warn(
                    f"image {entry.image_id} ('{entry.file_name}') is {width}×{height} but the JSON says "
                    f"{entry.width}×{entry.height}; annotations are rescaled to the image", stacklevel=3
                )
            scale = np.array([width / entry.width, height / entry.height] * 2, dtype=np.float32)
            boxes, ignore_boxes = boxes * scale, ignore_boxes * scale
            if masks is not None:
                masks = _resize_masks(masks, height, width)
                ignore_mask = _resize_masks(ignore_mask[None], height, width)[0]
        return Sample(
            image=image,
            image_id=entry.image_id,
            file_name=entry.file_name,
            boxes=boxes.astype(np.float32),
            labels=np.array([i.label for i in entry.instances], dtype=np.int64),
            masks=masks,
            annotation_ids=np.array([i.annotation_id for i in entry.instances], dtype=np.int64),
            ignore_boxes=ignore_boxes.astype(np.float32),
            ignore_mask=ignore_mask,
            orig_size=(height, width),
        )


def _resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    out = np.zeros((masks.shape[0], height, width), dtype=bool)
    for i, m in enumerate(masks):
        out[i] = np.asarray(Image.fromarray(m).resize((width, height), Image.NEAREST))
    return out
