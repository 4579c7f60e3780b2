"""``powersam data check``: find what is wrong with a COCO instances dataset before training on it.

:func:`check_dataset` reads the JSON, opens every image header (Pillow ``verify()``, cheap) and validates every
annotation with the same rules the loader (:class:`powersam.data.coco.CocoInstances`) uses, so an *error* here
is a record the loader would skip (or stretch, for a size mismatch). Severities:

* ``error`` — data is lost or wrong: missing/unreadable images, size mismatches, bad or outside boxes,
  degenerate polygons, unknown categories / image ids, duplicate ids, RLE size mismatches;
* ``warning`` — usable but suspicious: image sizes that are not integers (``"640"``), non-integer annotation
  ids, zero-area boxes, boxes partly outside the image, dropped polygon parts, empty masks, a bbox that does
  not match its mask (e.g. xyxy stored as xywh), images without annotations;
* ``info`` — facts: boxes-only dataset, crowd regions, categories without instances.

Each issue lists the offending ids (image ids or annotation ids, as its message says).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union


from .coco import (
    MISMATCH_IOU,
    annotations_are_boxes_only,
    category_labels,
    image_file_size,
    image_record_size,
    inspect_annotation,
    load_coco_json,
    resolve_annotation_file,
    resolve_images_dir,
)

PathLike = Union[str, Path]
_SHOWN_IDS = 10

# code → (severity, kind of id, what it means)
_CODES: dict[str, tuple[str, str, str]] = {
    "invalid_image_record": ("error", "image", "image records without an integer id or a file_name"),
    "duplicate_image_id": ("error", "image", "image ids used by more than one image record"),
    "missing_image_file": ("error", "image", "image files that do not exist"),
    "unreadable_image": ("error", "image", "image files that cannot be read"),
    "missing_image_size": ("warning", "image", "image records without width/height (taken from the file)"),
    "invalid_image_size": ("warning", "image", "image records whose width/height is not a positive integer (numeric "
                           "text read as the number, anything else replaced by the file's size)"),
    "image_size_mismatch": ("error", "image", "images whose real size differs from the JSON width/height"),
    "exif_rotated": ("warning", "image", "images whose JSON size matches the stored pixels but whose EXIF "
                     "orientation rotates them: annotations are used on the un-rotated pixels"),
    "empty_image": ("warning", "image", "images without any annotation"),
    "duplicate_category_id": ("error", "category", "category ids defined more than once"),
    "invalid_category": ("error", "category", "categories without an integer id"),
    "empty_category": ("info", "category", "categories without instances"),
    "duplicate_annotation_id": ("error", "annotation", "annotation ids used more than once"),
    "missing_annotation_id": ("warning", "annotation", "annotations without an id (listed by position)"),
    "invalid_annotation_id": ("warning", "annotation", "annotations whose id is not an integer (listed by position)"),
    "unknown_image_id": ("error", "annotation", "annotations whose image_id is not an image"),
    "unknown_category": ("error", "annotation", "annotations whose category_id is not a category"),
    "invalid_bbox": ("error", "annotation", "annotations without a valid [x, y, w, h] bbox (missing, non-finite, negative)"),
    "zero_area_bbox": ("warning", "annotation", "annotations whose bbox has zero width or height"),
    "bbox_outside_image": ("error", "annotation", "annotations whose bbox lies entirely outside the image"),
    "bbox_partly_outside": ("warning", "annotation", "annotations whose bbox sticks out of the image by > 1 px (clipped)"),
    "missing_segmentation": ("error", "annotation", "annotations without a segmentation in a dataset with masks"),
    "invalid_segmentation": ("error", "annotation", "annotations whose segmentation cannot be read"),
    "degenerate_polygon": ("error", "annotation", "annotations with no polygon of at least 3 points"),
    "degenerate_polygon_part": ("warning", "annotation", "annotations with a polygon part of fewer than 3 points (dropped)"),
    "rle_size_mismatch": ("error", "annotation", "annotations whose RLE size differs from the image size"),
    "empty_mask": ("warning", "annotation", "annotations whose mask covers no pixel"),
    "bbox_mask_mismatch": ("warning", "annotation",
                           f"annotations whose bbox overlaps its mask's extent with IoU < {MISMATCH_IOU} (bbox format?)"),
    "crowd_annotations": ("info", "annotation", "iscrowd annotations (used as ignore regions, not instances)"),
    "boxes_only": ("info", "dataset", "boxes-only dataset: no masks (use it for box metrics / as box prompts, not for mask metrics)"),
}


@dataclass
class Issue:
    """One kind of problem with every id it concerns."""

    severity: str  # "error" | "warning" | "info"
    code: str
    message: str
    ids: list = field(default_factory=list)
    example: str = ""  # what exactly is wrong with the first offending record, when known

    @property
    def count(self) -> int:
        return len(self.ids)


@dataclass
class ClassStats:
    category_id: int
    name: str
    label: int
    instances: int = 0
    images: int = 0


@dataclass
class CheckReport:
    """Everything :func:`check_dataset` found."""

    annotation_file: str
    images_dir: str
    num_images: int
    num_annotations: int
    has_masks: bool
    issues: list[Issue] = field(default_factory=list)
    classes: list[ClassStats] = field(default_factory=list)

    def _by(self, severity: str) -> list[Issue]:
        return [i for i in self.issues if i.severity == severity]

    @property
    def errors(self) -> list[Issue]:
        return self._by("error")

    @property
    def warnings(self) -> list[Issue]:
        return self._by("warning")

    def issue(self, code: str) -> Optional[Issue]:
        """The issue with ``code``, or None when the dataset does not have it."""
        return next((i for i in self.issues if i.code == code), None)

    def to_dict(self) -> dict:
        out = asdict(self)
        for item in out["issues"]:
            item["count"] = len(item["ids"])
        out["num_errors"], out["num_warnings"] = len(self.errors), len(self.warnings)
        return out


class _Collector:
    def __init__(self) -> None:
        self.found: dict[str, list] = {}
        self.examples: dict[str, str] = {}

    def add(self, code: str, record_id: Any, detail: str = "") -> None:
        self.found.setdefault(code, []).append(record_id)
        if detail and code not in self.examples:
            self.examples[code] = f"{record_id}: {detail}"

    def issues(self) -> list[Issue]:
        order = {"error": 0, "warning": 1, "info": 2}
        issues = [Issue(_CODES[c][0], c, _CODES[c][2], ids, self.examples.get(c, "")) for c, ids in self.found.items()]
        return sorted(issues, key=lambda i: (order[i.severity], list(_CODES).index(i.code)))


def check_dataset(
    path: PathLike, images_dir: Optional[PathLike] = None, *, split: Optional[str] = None, decode_images: bool = False
) -> CheckReport:
    """Check a COCO instances dataset (folder or JSON, as :class:`~powersam.data.coco.CocoInstances` takes).

    ``split`` picks the file in a folder with per-split files; ``decode_images`` fully decodes every image
    (slower; finds truncated JPEGs that ``verify()`` lets through).

    Raises:
        FileNotFoundError: ``path`` does not exist. ValueError: the file is not a COCO JSON at all.
    """
    json_path, _ = resolve_annotation_file(path, split)
    data = load_coco_json(json_path)
    found = _Collector()

    seen_cats: set = set()
    for cat in data["categories"]:
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not isinstance(cid, int) or isinstance(cid, bool):
            found.add("invalid_category", cid)
        elif cid in seen_cats:
            found.add("duplicate_category_id", cid)
        seen_cats.add(cid)
    cat_to_label, names = category_labels(data["categories"])
    has_masks = not annotations_are_boxes_only(data)
    if not has_masks:
        found.add("boxes_only", str(json_path))

    images: dict[int, dict] = {}
    for index, img in enumerate(data["images"]):
        image_id = img.get("id") if isinstance(img, dict) else None
        if not isinstance(image_id, int) or isinstance(image_id, bool) or not isinstance(img.get("file_name"), str):
            found.add("invalid_image_record", image_id if image_id is not None else f"#{index}")
        elif image_id in images:
            found.add("duplicate_image_id", image_id)
        else:
            images[image_id] = img
    folder = resolve_images_dir(json_path, [im["file_name"] for im in images.values()], images_dir)

    sizes: dict[int, tuple[int, int]] = {}
    for image_id, img in images.items():
        file_path = folder / img["file_name"]
        json_size, note = image_record_size(img)
        if note:
            found.add("invalid_image_size", image_id, note)
        elif json_size is None:
            found.add("missing_image_size", image_id)
        if not file_path.is_file():
            found.add("missing_image_file", image_id, str(file_path))
        else:
            probed = image_file_size(file_path, verify=True, decode=decode_images)
            if probed is None:
                found.add("unreadable_image", image_id)
            elif json_size is not None and probed[0] != json_size:
                detail = f"JSON {json_size[1]}×{json_size[0]}, file {probed[0][1]}×{probed[0][0]}"
                found.add("exif_rotated" if probed[1] == json_size else "image_size_mismatch", image_id, detail)
            elif json_size is None:
                json_size = probed[0]
        if json_size is not None:
            sizes[image_id] = json_size

    classes = {cid: ClassStats(cid, names[label], label) for cid, label in cat_to_label.items()}
    class_images: dict[int, set] = {cid: set() for cid in classes}
    annotated: set = set()
    ann_ids: set = set()
    for index, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict):
            found.add("invalid_bbox", f"#{index}")
            continue
        ann_id = ann.get("id")
        if ann_id is None:
            ann_id = f"#{index}"
            found.add("missing_annotation_id", ann_id)
        elif not isinstance(ann_id, int) or isinstance(ann_id, bool):  # a list id used to crash the check
            found.add("invalid_annotation_id", f"#{index}", f"id {ann_id!r} ({type(ann_id).__name__})")
            ann_id = f"#{index}"
        elif ann_id in ann_ids:
            found.add("duplicate_annotation_id", ann_id)
        ann_ids.add(ann_id)
        image_id = ann.get("image_id")
        if not isinstance(image_id, int) or isinstance(image_id, bool) or image_id not in images:  # list: no hash
            found.add("unknown_image_id", ann_id)
            continue
        annotated.add(image_id)
        if image_id not in sizes:
            continue  # no size to check the geometry against (reported above)
        height, width = sizes[image_id]
        result = inspect_annotation(ann, height, width, cat_to_label, has_masks)
        for note in result.notes:
            found.add(note, ann_id)
        if result.reason is not None:
            found.add(result.reason, ann_id, result.detail)
            continue
        if ann.get("iscrowd"):
            found.add("crowd_annotations", ann_id)
            continue
        classes[ann["category_id"]].instances += 1
        class_images[ann["category_id"]].add(image_id)

    for image_id in images:
        if image_id not in annotated:
            found.add("empty_image", image_id)
    for cid, stats in classes.items():
        stats.images = len(class_images[cid])
        if stats.instances == 0:
            found.add("empty_category", cid)

    return CheckReport(
        annotation_file=str(json_path),
        images_dir=str(folder),
        num_images=len(data["images"]),
        num_annotations=len(data.get("annotations", [])),
        has_masks=has_masks,
        issues=found.issues(),
        classes=sorted(classes.values(), key=lambda c: c.label),
    )


def _format_ids(ids: list) -> str:
    shown = ", ".join(str(i) for i in ids[:_SHOWN_IDS])
    return shown + (f", ... (+{len(ids) - _SHOWN_IDS} more)" if len(ids) > _SHOWN_IDS else "")


def format_report(report: CheckReport) -> str:
    """A human-readable summary: header, issues by severity with ids, and the per-class table."""
    lines = [
        f"annotations: {report.annotation_file}",
        f"images:      {report.images_dir}",
        f"{report.num_images} images, {report.num_annotations} annotations, {len(report.classes)} categories, "
        f"{'masks' if report.has_masks else 'boxes only'}",
    ]
    for severity in ("error", "warning", "info"):
        for issue in (i for i in report.issues if i.severity == severity):
            kind = _CODES[issue.code][1]
            ids = f"\n      {kind} ids: {_format_ids(issue.ids)}" if kind != "dataset" else ""
            example = f"\n      e.g. {kind} {issue.example}" if issue.example else ""
            lines.append(f"  {severity.upper():7s} {issue.code} ({issue.count}): {issue.message}{ids}{example}")
    if report.classes:
        width = max(len("name"), *(len(c.name) for c in report.classes))
        lines.append(f"  {'label':>5s}  {'id':>5s}  {'name':{width}s}  {'instances':>9s}  {'images':>6s}")
        for c in report.classes:
            lines.append(f"  {c.label:5d}  {c.category_id:5d}  {c.name:{width}s}  {c.instances:9d}  {c.images:6d}")
    n_err, n_warn = len(report.errors), len(report.warnings)
    lines.append(f"result: {n_err} error kind(s), {n_warn} warning kind(s)" + (" -> FAIL" if n_err else " -> OK"))
    return "\n".join(lines)
