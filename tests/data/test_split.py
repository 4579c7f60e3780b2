"""powersam.data.split / ``powersam data split``: the written division is the one training reads, and nests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from powersam.cli import main
from powersam.data.coco import CocoInstances
from powersam.data.split import write_split


def _dataset(root: Path, n: int = 12) -> Path:
    """``n`` 20×30 images, image i with i % 3 + 1 box-and-polygon instances; ids deliberately not 0..n-1."""
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        name = f"img_{i}.png"
        Image.fromarray(np.full((20, 30, 3), i * 10, dtype=np.uint8)).save(root / "images" / name)
        image_id = 100 + 7 * i
        images.append({"id": image_id, "file_name": name, "height": 20, "width": 30})
        for k in range(i % 3 + 1):
            x, y = 2 + 5 * k, 3
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                "bbox": [x, y, 4, 6], "area": 24.0,
                                "segmentation": [[x, y, x + 4, y, x + 4, y + 6, x, y + 6]]})
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "insulator"}],
            "info": {"description": "test"}}
    (root / "annotations.json").write_text(json.dumps(data))
    return root


def test_written_split_is_the_division_training_reads(tmp_path):
    src = _dataset(tmp_path / "src")
    counts = write_split(src, tmp_path / "out", val_fraction=0.25, seed=3)
    for split in ("train", "val"):
        on_the_fly = CocoInstances(src, split=split, val_fraction=0.25, seed=3)
        written = CocoInstances(tmp_path / "out", split=split)  # per-split file: no division applied
        assert sorted(written.image_ids) == sorted(on_the_fly.image_ids)
        assert counts[split]["images"] == len(on_the_fly)
        for i in range(len(written)):  # same images and instances, found through the images link
            a, b = written[i], on_the_fly[on_the_fly.image_ids.index(written.image_ids[i])]
            assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    assert counts["val"]["images"] == 3 and counts["train"]["images"] == 9
    assert counts["train"]["annotations"] + counts["val"]["annotations"] == sum(i % 3 + 1 for i in range(12))
    meta = json.loads((tmp_path / "out" / "annotations" / "val.json").read_text())["info"]
    assert meta["description"] == "test" and meta["powersam_split"]["seed"] == 3


def test_a_split_of_the_train_file_nests_inside_train(tmp_path):
    src = _dataset(tmp_path / "src", n=20)
    write_split(src, tmp_path / "outer")
    write_split(tmp_path / "outer" / "annotations" / "train.json", tmp_path / "inner", val_fraction=0.3, seed=1)
    held_out = set(CocoInstances(src, split="val").image_ids)
    inner_train = set(CocoInstances(tmp_path / "inner", split="train").image_ids)
    inner_val = set(CocoInstances(tmp_path / "inner", split="val").image_ids)
    assert inner_val and inner_train and not inner_val & inner_train
    assert not (inner_val | inner_train) & held_out  # choosing on inner val never sees the held-out images
    assert inner_val | inner_train == set(CocoInstances(src, split="train").image_ids)


def test_refuses_to_write_into_a_non_empty_folder_unless_told(tmp_path):
    src = _dataset(tmp_path / "src")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        write_split(src, tmp_path / "out")
    write_split(src, tmp_path / "out", overwrite=True)
    write_split(src, tmp_path / "out", seed=5, overwrite=True)  # the images link is replaced, not nested
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"
    assert json.loads((tmp_path / "out" / "annotations" / "val.json").read_text())["info"]["powersam_split"]["seed"] == 5
    with pytest.raises(FileExistsError, match="real folder"):  # OUT = the dataset itself: its images stay
        write_split(src, src, overwrite=True)
    assert (src / "images").is_dir() and not (src / "images").is_symlink() and not (src / "annotations").exists()


def test_cli_writes_and_reports_errors(tmp_path, capsys):
    src = _dataset(tmp_path / "src")
    assert main(["data", "split", str(src), "--out", str(tmp_path / "out"), "--val-fraction", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "train.json: 6 images" in out and "val.json: 6 images" in out
    assert main(["data", "split", str(tmp_path / "out"), "--out", str(tmp_path / "again")]) == 2
    assert "several annotation files" in capsys.readouterr().err  # already split: name the file to divide
    assert main(["data", "split", str(src), "--out", str(tmp_path / "bad"), "--val-fraction", "1.5"]) == 2
    assert "val_fraction" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # nothing written for a bad request
