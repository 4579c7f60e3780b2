"""Merge several COCO datasets into one with per-split files (``powersam data merge``).

Each source keeps its own train/val division: a folder with per-split files (``annotations/train.json`` and
``val.json``, e.g. written by ``powersam data split``) contributes them as they are; a source with one annotation
file is divided by :func:`powersam.data.coco.split_image_ids` with ``(val_fraction, seed)``, the division every
stage reads from it. So an image held out of one source's training stays held out of the merge: e.g. the box-prompt
generator trained on a merge of two insulator sets never sees the photos the teacher and student are evaluated on.
Written::

    OUT/annotations/train.json   every source's train images, ids renumbered, file_name "s<k>/<original name>"
    OUT/annotations/val.json     every source's val images, the same way
    OUT/images/s<k>              a link to source k's image folder (nothing is copied)

Categories are matched **by name** (their ids renumbered 1..K in order of first appearance). If any source is
boxes-only (``info.annotation_type == "boxes_only"``, or only box polygons) the merge is marked boxes-only: its box
polygons must not pass for masks next to the other sources' real ones.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .coco import split_image_ids
from .coco_annotations import annotations_are_boxes_only, load_coco_json, resolve_annotation_file, resolve_images_dir
from .split import _image_records, check_output_folder

PathLike = Union[str, Path]
SPLITS = ("train", "val")


def _source_splits(path: PathLike, val_fraction: float, seed: int) -> dict[str, tuple[Path, dict, list[int]]]:
    """``{split: (json file, its COCO dict, the image ids of that split)}`` of one source."""
    path = Path(path)
    if path.is_dir():
        try:
            files = {s: resolve_annotation_file(path, s) for s in SPLITS}
        except ValueError:
            files = {}
        if files and all(is_split for _, is_split in files.values()) and files["train"][0] != files["val"][0]:
            out = {}
            for split, (json_path, _) in files.items():
                data = load_coco_json(json_path)
                out[split] = (json_path, data, sorted(_image_records(data["images"])))
            return out
    json_path, _ = resolve_annotation_file(path)
    data = load_coco_json(json_path)
    ids = list(_image_records(data["images"]))
    if len(ids) < 2:
        raise ValueError(f"'{json_path}' has {len(ids)} valid image record(s); its train/val division needs 2")
    return {split: (json_path, data, sorted(split_image_ids(ids, split, val_fraction, seed))) for split in SPLITS}


def merge_datasets(
    sources: Sequence[PathLike],
    out: PathLike,
    val_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Merge ``sources`` (dataset folders or COCO JSON files) into ``out`` (see the module docstring).

    Args:
        sources: two or more datasets.
        out: output folder; must be empty or absent unless ``overwrite``.
        val_fraction, seed: the division of a source with one annotation file (as ``val_fraction`` /
            ``split_seed`` of every stage).
        overwrite: replace the files a previous merge wrote in ``out``.

    Returns:
        ``{"train": {"images", "annotations"}, "val": {...}, "categories": [names], "boxes_only": bool,
        "sources": [{"path", "link", "train_images", "val_images"}]}``.

    Raises:
        ValueError: fewer than two sources, or a source without valid images.
        FileExistsError: ``out`` holds files and ``overwrite`` is false, or ``out/images`` is a real folder.
    """
    if len(sources) < 2:
        raise ValueError(f"merge needs at least two datasets, got {len(sources)}")
    loaded = [_source_splits(s, val_fraction, seed) for s in sources]  # every error before anything is written
    out = check_output_folder(out, overwrite, "the merge")
    images_root = out / "images"
    if images_root.is_symlink() or images_root.is_file():
        raise FileExistsError(f"'{images_root}' is not a folder of links; refusing to write into it")

    categories: dict[str, int] = {}  # name → merged id
    boxes_only = False
    for splits in loaded:
        for _, data, _ in splits.values():
            boxes_only = boxes_only or annotations_are_boxes_only(data)
            for cat in data["categories"]:
                if isinstance(cat, dict) and isinstance(cat.get("name"), str):
                    categories.setdefault(cat["name"], len(categories) + 1)

    images_root.mkdir(parents=True, exist_ok=True)
    merged = {split: {"images": [], "annotations": []} for split in SPLITS}
    report_sources = []
    image_id = annotation_id = 0
    for k, (source, splits) in enumerate(zip(sources, loaded)):
        link = images_root / f"s{k}"
        for split in SPLITS:
            json_path, data, ids = splits[split]
            records = _image_records(data["images"])
            folder = resolve_images_dir(json_path, [records[i]["file_name"] for i in ids]).resolve()
            if split == "train" or not link.is_symlink():
                if link.is_symlink():
                    link.unlink()
                os.symlink(folder, link, target_is_directory=True)
            elif Path(os.readlink(link)) != folder:
                raise ValueError(f"source '{source}': its train and val images lie in different folders "
                                 f"({os.readlink(link)} and {folder}); merge cannot link both")
            cat_names = {c["id"]: c["name"] for c in data["categories"] if isinstance(c, dict) and "id" in c}
            new_ids: dict[int, int] = {}
            for old in ids:
                image_id += 1
                new_ids[old] = image_id
                merged[split]["images"].append({**records[old], "id": image_id,
                                                "file_name": f"{link.name}/{records[old]['file_name']}"})
            for ann in data.get("annotations", []):
                if not isinstance(ann, dict) or ann.get("image_id") not in new_ids:
                    continue
                name = cat_names.get(ann.get("category_id"))
                annotation_id += 1
                merged[split]["annotations"].append({
                    **ann, "id": annotation_id, "image_id": new_ids[ann["image_id"]],
                    # an id the source does not define becomes -1, which the loader reports, never another class
                    "category_id": categories.get(name, -1)})
        report_sources.append({"path": str(source), "link": f"images/{link.name}",
                               "train_images": len(splits["train"][2]), "val_images": len(splits["val"][2])})

    (out / "annotations").mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"description": "merged by powersam data merge",
                            "powersam_merge": {"sources": report_sources, "val_fraction": val_fraction,
                                               "seed": seed}}
    if boxes_only:
        info["annotation_type"] = "boxes_only"
    counts: dict[str, Any] = {}
    for split in SPLITS:
        part = {"info": info, "images": merged[split]["images"], "annotations": merged[split]["annotations"],
                "categories": [{"id": i, "name": n, "supercategory": n} for n, i in categories.items()]}
        (out / "annotations" / f"{split}.json").write_text(json.dumps(part), encoding="utf-8")
        counts[split] = {"images": len(part["images"]), "annotations": len(part["annotations"])}
    return {**counts, "categories": list(categories), "boxes_only": boxes_only, "sources": report_sources}


def describe_merge(result: dict[str, Any], out: Optional[PathLike] = None) -> str:
    """The console summary of :func:`merge_datasets`."""
    lines = [f"{s['path']}: {s['train_images']} train / {s['val_images']} val images -> {s['link']}"
             for s in result["sources"]]
    for split in SPLITS:
        where = f"{Path(out) / 'annotations' / (split + '.json')}" if out is not None else split
        lines.append(f"{where}: {result[split]['images']} images, {result[split]['annotations']} annotations")
    lines.append(f"categories (matched by name): {', '.join(result['categories'])}")
    if result["boxes_only"]:
        lines.append("a source is boxes-only, so the merge is boxes-only (for box-prompt generator / detector "
                     "training; its box polygons are not masks)")
    return "\n".join(lines)
