"""Write a dataset's train/val division as two annotation files (``powersam data split``).

A dataset with one annotation file is divided by :func:`powersam.data.coco.split_image_ids` wherever PowerSAM reads
it (training, evaluation, the pipeline). This module writes that same division to disk::

    OUT/annotations/train.json   the images (and their annotations) of split "train"
    OUT/annotations/val.json     those of split "val"
    OUT/images                   a link to the source's image folder (nothing is copied)

so ``OUT`` is itself a dataset folder with per-split files. Why: to choose a recipe (an epoch count, a zoom
context, a learning rate) without looking at the held-out images, divide the *training* split again
(``powersam data split OUT/annotations/train.json --seed 1 --out SEL``), compare the candidates on ``SEL``'s val
split, then train the chosen one on all training images and report the held-out split once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

from .coco import split_image_ids
from .coco_annotations import load_coco_json, resolve_annotation_file, resolve_images_dir

PathLike = Union[str, Path]


def _image_records(images: list) -> dict[int, dict]:
    """The image records CocoInstances keeps (integer id, string file_name; first of duplicate ids), by id."""
    records: dict[int, dict] = {}
    for img in images:
        if not isinstance(img, dict):
            continue
        image_id = img.get("id")
        if isinstance(image_id, int) and not isinstance(image_id, bool) and isinstance(img.get("file_name"), str):
            records.setdefault(image_id, img)
    return records


def check_output_folder(out: PathLike, overwrite: bool, what: str) -> Path:
    """``out`` as a Path if a dataset can be written there: absent, an empty folder, or ``overwrite`` (replacing
    ``what``); NotADirectoryError / FileExistsError otherwise."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out '{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"'{out}' is not empty; pass overwrite=True (--overwrite) to replace {what}")
    return out


def write_split(
    path: PathLike,
    out: PathLike,
    val_fraction: float = 0.2,
    seed: int = 0,
    images_dir: Optional[PathLike] = None,
    overwrite: bool = False,
) -> dict[str, dict[str, int]]:
    """Write the ``(val_fraction, seed)`` division of the dataset at ``path`` to ``out`` (see the module docstring).

    Args:
        path: a dataset folder with one annotation file, or a COCO JSON.
        out: output folder; must be empty or absent unless ``overwrite``.
        val_fraction, seed: the division, as in the ``val_fraction`` / ``split_seed`` settings of every stage.
        images_dir: the folder ``file_name`` entries are relative to (default: found next to the JSON).
        overwrite: replace ``out/annotations/{train,val}.json`` and ``out/images`` if present.

    Returns:
        ``{"train": {"images": n, "annotations": m}, "val": {...}}``.

    Raises:
        ValueError: a dataset with per-split files already, fewer than two images, or a bad fraction.
        FileExistsError: ``out`` holds files and ``overwrite`` is false.
    """
    json_path, _ = resolve_annotation_file(path)
    data = load_coco_json(json_path)
    records = _image_records(data["images"])
    if len(records) < 2:
        raise ValueError(f"'{json_path}' has {len(records)} valid image record(s); a split needs at least 2")
    source_images = resolve_images_dir(json_path, [r["file_name"] for r in records.values()], images_dir).resolve()
    divisions = {split: split_image_ids(list(records), split, val_fraction, seed) for split in ("train", "val")}

    out = check_output_folder(out, overwrite, "its split files")
    link = out / "images"
    if link.exists() and not link.is_symlink():  # e.g. OUT is the source dataset itself
        raise FileExistsError(f"'{link}' is a real folder; refusing to replace it with a link")
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    os.symlink(source_images, link, target_is_directory=True)

    annotations = [a for a in data.get("annotations", []) if isinstance(a, dict)]
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "val"):
        ids = divisions[split]
        part = {key: value for key, value in data.items() if key not in ("images", "annotations")}
        part["images"] = [records[i] for i in sorted(ids)]
        part["annotations"] = [a for a in annotations if a.get("image_id") in ids]
        info = data.get("info") if isinstance(data.get("info"), dict) else {}
        part["info"] = {**info, "powersam_split": {"source": str(json_path.resolve()), "split": split,
                                                   "val_fraction": val_fraction, "seed": seed}}
        (out / "annotations" / f"{split}.json").write_text(json.dumps(part), encoding="utf-8")
        counts[split] = {"images": len(part["images"]), "annotations": len(part["annotations"])}
    return counts
