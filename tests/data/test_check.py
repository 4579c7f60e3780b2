"""check_dataset / run_check on a deliberately broken dataset, a clean one, and the real data when present."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from powersam.cli.data import add_check_arguments, run_check
from powersam.data.check import check_dataset, format_report
from powersam.data.coco import CocoInstances

H, W = 30, 40


def _image(path: Path, size=(H, W)) -> None:
    Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(path)


def _ann(ann_id, image_id, bbox, cat=1, segmentation=None, **extra):
    x, y, w, h = bbox
    if segmentation is None:
        segmentation = [[x, y, x + w, y, x + w * 0.5, y + h]]
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, "segmentation": segmentation, "iscrowd": 0, **extra}


def _dataset(root: Path, images: list, annotations: list, categories=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    categories = categories or [{"id": 1, "name": "insulator"}, {"id": 2, "name": "clamp"}]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def _clean(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    _image(root / "images" / "a.png")
    _image(root / "images" / "b.png")
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W}, {"id": 2, "file_name": "b.png", "height": H, "width": W}]
    anns = [_ann(1, 1, [2, 2, 10, 10]), _ann(2, 2, [5, 5, 20, 10], cat=2), _ann(3, 2, [1, 1, 8, 8])]
    return _dataset(root, images, anns)


def _broken(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    for name in ("ok.png", "empty.png"):
        _image(root / "images" / name)
    _image(root / "images" / "big.png", size=(2 * H, W))
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    images = [
        {"id": 1, "file_name": "ok.png", "height": H, "width": W},
        {"id": 2, "file_name": "missing.png", "height": H, "width": W},
        {"id": 3, "file_name": "corrupt.png", "height": H, "width": W},
        {"id": 4, "file_name": "empty.png", "height": H, "width": W},
        {"id": 5, "file_name": "big.png", "height": H, "width": W},  # file is 2H tall
        {"id": 1, "file_name": "ok.png", "height": H, "width": W},  # duplicate image id
    ]
    rle = mask_utils.encode(np.asfortranarray(np.ones((H + 1, W), np.uint8)))
    anns = [
        _ann(10, 1, [2, 2, 10, 10]),
        _ann(11, 1, [50, 40, 10, 10]),  # outside the 40×30 image
        _ann(12, 1, [2, 2, 0, 10]),  # zero width
        _ann(13, 1, [2, 2, 10, 10], segmentation=[[2, 2, 12, 12]]),  # 2-point polygon
        _ann(14, 1, [2, 2, 10, 10], cat=9),  # unknown category
        _ann(10, 1, [3, 3, 5, 5]),  # duplicate annotation id
        _ann(15, 77, [2, 2, 10, 10]),  # image 77 does not exist
        _ann(16, 1, [2, 2, -3, 10]),  # negative width
        _ann(17, 1, [2, 2, 10, 10], segmentation={"size": [H + 1, W], "counts": rle["counts"].decode()}),
        _ann(18, 1, [30, 20, 15, 15]),  # sticks out: warning only
        # xyxy written where xywh belongs: the box is far bigger than its polygon
        _ann(19, 1, [2, 2, 12, 12], segmentation=[[2, 2, 6, 2, 6, 6, 2, 6]]),
        _ann(20, 2, [2, 2, 10, 10]),
        _ann(21, 3, [2, 2, 10, 10]),
    ]
    return _dataset(root, images, anns)


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_check_arguments(parser)
    return run_check(parser.parse_args(argv))


def test_broken_dataset_reports_every_problem(tmp_path: Path, capsys) -> None:
    report = check_dataset(_broken(tmp_path / "broken"))
    expected = {
        "duplicate_image_id": ("error", [1]),
        "missing_image_file": ("error", [2]),
        "unreadable_image": ("error", [3]),
        "image_size_mismatch": ("error", [5]),
        "duplicate_annotation_id": ("error", [10]),
        "unknown_image_id": ("error", [15]),
        "bbox_outside_image": ("error", [11]),
        "invalid_bbox": ("error", [16]),
        "degenerate_polygon": ("error", [13]),
        "unknown_category": ("error", [14]),
        "rle_size_mismatch": ("error", [17]),
        "zero_area_bbox": ("warning", [12]),
        "bbox_partly_outside": ("warning", [18]),
        "bbox_mask_mismatch": ("warning", [19]),
        "empty_image": ("warning", [4, 5]),
        "empty_category": ("info", [2]),
    }
    found = {i.code: (i.severity, i.ids) for i in report.issues}
    assert found == expected
    text = format_report(report)
    assert "missing_image_file (1)" in text and "image ids: 2" in text and "FAIL" in text

    assert _run([str(tmp_path / "broken")]) == 1
    assert _run([str(tmp_path / "broken"), "--json"]) == 1
    out = capsys.readouterr().out
    payload = json.loads(out[out.index("{"):])
    assert payload["num_errors"] == 11 and {"code": "missing_image_file", "count": 1}.items() <= next(
        i for i in payload["issues"] if i["code"] == "missing_image_file"
    ).items()


def test_loader_skips_what_check_calls_errors(tmp_path: Path) -> None:
    root = _broken(tmp_path / "broken")
    with pytest.warns(UserWarning):
        ds = CocoInstances(root)
    for code in ("missing_image_file", "unknown_image_id", "bbox_outside_image", "invalid_bbox", "degenerate_polygon",
                 "unknown_category", "rle_size_mismatch", "zero_area_bbox", "duplicate_image_id"):
        assert code in ds.skipped, code
    assert sorted(ds.image_ids) == [1, 3, 4, 5]  # the corrupt file is found only when decoded
    assert ds.notes["bbox_mask_mismatch"] == [19] and ds.notes["bbox_partly_outside"] == [18]


def test_clean_dataset_passes_and_counts_classes(tmp_path: Path, capsys) -> None:
    root = _clean(tmp_path / "clean")
    report = check_dataset(root)
    assert report.errors == [] and report.warnings == [] and report.has_masks
    assert [(c.name, c.label, c.instances, c.images) for c in report.classes] == [("insulator", 0, 2, 2), ("clamp", 1, 1, 1)]
    assert _run([str(root), "--decode"]) == 0
    assert "-> OK" in capsys.readouterr().out


def test_warnings_fail_only_with_strict(tmp_path: Path) -> None:
    root = _clean(tmp_path / "warn")
    data = json.loads((root / "annotations.json").read_text())
    data["images"].append({"id": 3, "file_name": "a.png", "height": H, "width": W})  # no annotations
    (root / "annotations.json").write_text(json.dumps(data))
    report = check_dataset(root)
    assert report.errors == [] and [i.code for i in report.warnings] == ["empty_image"]
    assert _run([str(root)]) == 0
    assert _run([str(root), "--strict"]) == 1


def test_many_ids_are_truncated_in_text(tmp_path: Path) -> None:
    root = tmp_path / "many"
    images = [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in range(25)]
    report = check_dataset(_dataset(root, images, []))
    assert report.issue("missing_image_file").count == 25
    assert "(+15 more)" in format_report(report)


def test_not_a_coco_file(tmp_path: Path) -> None:
    (tmp_path / "annotations.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        check_dataset(tmp_path)
    (tmp_path / "annotations.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="needs 'images' and 'categories'"):
        check_dataset(tmp_path)


@pytest.mark.parametrize("height, width, size, says", [
    (H, W, (H, W), ""),
    (None, None, None, ""),  # absent: the file's size, as COCO tools allow
    ("30", 40.0, (H, W), "'height' is the text '30', read as 30; 'width' is the float 40.0, read as 40"),
    (True, W, None, "'height' is True (bool), not a positive integer"),
    (H, "forty", None, "'width' is 'forty' (str)"),
    (H, 40.5, None, "'width' is 40.5 (float)"),
    (0, W, None, "'height' is 0 (int)"),
])
def test_image_record_size_reads_numbers_and_names_the_rest(height, width, size, says) -> None:
    from powersam.data.coco_annotations import image_record_size

    got, note = image_record_size({"id": 1, "height": height, "width": width})
    assert got == size and says in note and bool(note) == bool(says)


def test_a_size_given_as_text_is_used_not_ignored(tmp_path: Path) -> None:
    # "80" (twice the file's width) used to be dropped silently for the file's size; now it is read, so the
    # aspect-ratio mismatch is found and named instead of training on a record that disagrees with its image
    root = _clean(tmp_path / "text")
    data = json.loads((root / "annotations.json").read_text())
    data["images"][0]["width"] = str(2 * W)
    (root / "annotations.json").write_text(json.dumps(data))
    report = check_dataset(root)
    assert report.issue("invalid_image_size").ids == [1] and report.issue("image_size_mismatch").ids == [1]
    with pytest.warns(UserWarning, match="image 1: 'width' is the text '80', read as 80"):
        ds = CocoInstances(root)
    with pytest.raises(ValueError, match="fix the 'width'/'height' fields of image id 1"):
        ds[ds.image_ids.index(1)]


def test_annotation_ids_that_are_not_integers_are_reported(tmp_path: Path) -> None:
    root = _clean(tmp_path / "ids")
    data = json.loads((root / "annotations.json").read_text())
    data["annotations"][1]["id"], data["annotations"][2]["id"] = [2], 1  # a list used to crash the check
    (root / "annotations.json").write_text(json.dumps(data))
    report = check_dataset(root)
    assert report.issue("invalid_annotation_id").ids == ["#1"] and report.issue("duplicate_annotation_id").ids == [1]
    assert "invalid_annotation_id (1)" in format_report(report) and _run([str(root)]) == 1


@pytest.mark.data
def test_real_datasets(shared_data: Path) -> None:
    grid = shared_data / "distribution_grid_insulators"
    ds = CocoInstances(grid, load_masks=True)
    assert ds.has_masks and ds.class_names == ["insulator"] and ds.num_skipped == 0 and len(ds) > 0
    s = ds[0]
    assert s.masks.shape == (len(s.boxes), *s.image.shape[:2]) and all(m.any() for m in s.masks)
    report = check_dataset(grid)
    assert report.errors == [], format_report(report)

    cplid = shared_data / "cplid_insulators"
    ds = CocoInstances(cplid)
    assert not ds.has_masks and ds[0].masks is None and len(ds[0].boxes) > 0
    report = check_dataset(cplid)
    assert not report.has_masks and report.issue("boxes_only") is not None
    assert report.errors == [], format_report(report)
