"""powersam.data.merge / ``powersam data merge``: each source keeps its division, categories match by name."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from powersam.cli import main
from powersam.data.coco import CocoInstances
from powersam.data.merge import merge_datasets
from powersam.data.split import write_split


def _dataset(root: Path, n: int, shade: int, categories: list[dict], boxes_only: bool = False) -> Path:
    """``n`` 20×30 images of pixel value ``shade + i`` (so every merged image can be traced back), one instance
    each of the first category, and one of the last category on odd images."""
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        name = f"img_{i}.png"
        Image.fromarray(np.full((20, 30, 3), shade + i, dtype=np.uint8)).save(root / "images" / name)
        images.append({"id": 50 + i, "file_name": name, "height": 20, "width": 30})
        for k, cat in enumerate(categories[:1] + (categories[-1:] if i % 2 else [])):
            x = 2 + 10 * k
            ann = {"id": len(annotations) + 1, "image_id": 50 + i, "category_id": cat["id"], "iscrowd": 0,
                   "bbox": [x, 3, 6, 8], "area": 48.0,
                   "segmentation": [[x, 3, x + 6, 3, x + 6, 11, x + 3, 11]]}  # a triangle-ish polygon, not a box
            if boxes_only:
                ann["segmentation"], ann["segmentation_is_box"] = [[x, 3, x + 6, 3, x + 6, 11, x, 11]], True
            annotations.append(ann)
    info = {"annotation_type": "boxes_only"} if boxes_only else {}
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories, "info": info}))
    return root


def _shades(dataset: CocoInstances) -> set[int]:
    return {int(dataset[i].image[0, 0, 0]) for i in range(len(dataset))}


def test_every_source_keeps_its_division_and_categories_match_by_name(tmp_path):
    a = _dataset(tmp_path / "a", 10, 0, [{"id": 1, "name": "insulator"}])
    b_single = _dataset(tmp_path / "b", 8, 100, [{"id": 5, "name": "pole"}, {"id": 7, "name": "insulator"}])
    write_split(b_single, tmp_path / "b_split", val_fraction=0.5, seed=4)  # b as per-split files: taken as they are
    result = merge_datasets([a, tmp_path / "b_split"], tmp_path / "m", val_fraction=0.2, seed=0)

    for split in ("train", "val"):
        merged = CocoInstances(tmp_path / "m", split=split)
        expected = _shades(CocoInstances(a, split=split, val_fraction=0.2, seed=0)) | _shades(
            CocoInstances(b_single, split=split, val_fraction=0.5, seed=4))
        assert _shades(merged) == expected  # the same images, found through the links
        assert result[split]["images"] == len(merged)
    assert result["categories"] == ["insulator", "pole"] and result["boxes_only"] is False
    train = CocoInstances(tmp_path / "m", split="train")
    assert train.class_names == ["insulator", "pole"] and train.has_masks
    for i in range(len(train)):  # b's image k has a pole on odd k (its second category id 5 → merged "pole")
        sample = train[i]
        shade = int(sample.image[0, 0, 0])
        names = sorted(train.class_names[int(c)] for c in sample.labels)
        if shade >= 100:
            assert names == (["insulator", "pole"] if shade % 2 else ["pole"]), shade
        else:  # a has one category: its odd images hold it twice
            assert names == ["insulator"] * (2 if shade % 2 else 1), shade
        assert sample.masks.shape[0] == len(names)
    files = [json.loads((tmp_path / "m" / "annotations" / f"{s}.json").read_text()) for s in ("train", "val")]
    ids = [img["id"] for f in files for img in f["images"]]
    assert len(ids) == len(set(ids)) == 18  # renumbered: the sources' ids (50..) collide
    assert files[0]["info"]["powersam_merge"]["sources"][1]["link"] == "images/s1"


def test_a_boxes_only_source_makes_the_merge_boxes_only(tmp_path, capsys):
    a = _dataset(tmp_path / "a", 6, 0, [{"id": 1, "name": "insulator"}])
    b = _dataset(tmp_path / "b", 6, 100, [{"id": 1, "name": "insulator"}], boxes_only=True)
    assert main(["data", "merge", str(a), str(b), "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "boxes-only" in out and "categories (matched by name): insulator" in out
    merged = CocoInstances(tmp_path / "m", split="train")
    assert not merged.has_masks and merged.class_names == ["insulator"]


def test_merge_refuses_bad_input_before_writing(tmp_path, capsys):
    a = _dataset(tmp_path / "a", 6, 0, [{"id": 1, "name": "insulator"}])
    with pytest.raises(ValueError, match="at least two"):
        merge_datasets([a], tmp_path / "m")
    assert main(["data", "merge", str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "m")]) == 2
    assert "missing" in capsys.readouterr().err and not (tmp_path / "m").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    assert main(["data", "merge", str(a), str(a), "--out", str(tmp_path / "busy")]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    assert main(["data", "merge", str(a), str(a), "--out", str(tmp_path / "busy"), "--overwrite"]) == 0
    assert len(CocoInstances(tmp_path / "busy", split="val")) == 2 * len(CocoInstances(a, split="val"))
