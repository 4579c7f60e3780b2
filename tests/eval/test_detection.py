"""COCO AP: the COCOeval wiring on hand-made GT, evaluate_detection with fake detectors, and the CLI."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from powersam.data.coco import CocoInstances
from powersam.data.synth import generate_dataset
from powersam.cli.eval import add_det_arguments, run_det
from powersam.eval.detection import (
    REPORTED_STATS,
    coco_from_dict,
    evaluate_detection,
    evaluate_detections_from_results,
    format_detection_report,
)
from powersam.results import Results

torch.set_num_threads(1)

H, W = 60, 80
# (image_id, category_id, x, y, w, h): boxes are filled rectangles, so box and mask IoUs agree.
GT_BOXES = [(1, 1, 5, 5, 20, 30), (1, 2, 40, 10, 30, 20), (2, 1, 10, 20, 40, 30)]


def _rle(x: int, y: int, w: int, h: int) -> dict:
    mask = np.zeros((H, W), np.uint8)
    mask[y : y + h, x : x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@pytest.fixture
def coco_gt():
    annotations = [
        {"id": i + 1, "image_id": img, "category_id": cat, "bbox": [x, y, w, h], "area": float(w * h),
         "iscrowd": 0, "segmentation": _rle(x, y, w, h)}
        for i, (img, cat, x, y, w, h) in enumerate(GT_BOXES)
    ]
    return coco_from_dict({
        "images": [{"id": i, "height": H, "width": W} for i in (1, 2, 3)],  # image 3 has no GT
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],  # c: no GT
    })


def _detections(shift: int = 0, score: float = 1.0, with_boxes: bool = True, with_masks: bool = True):
    out = []
    for img, cat, x, y, w, h in GT_BOXES:
        record = {"image_id": img, "category_id": cat, "score": score}
        if with_boxes:
            record["bbox"] = [float(x + shift), float(y), float(w), float(h)]
        if with_masks:
            record["segmentation"] = _rle(min(x + shift, W - 1), y, w, h)
        out.append(record)
    return out


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_perfect_empty_and_shifted_detectors(coco_gt, iou_type, capsys):
    perfect = evaluate_detections_from_results(coco_gt, _detections(), iou_type)
    assert set(perfect) == {*REPORTED_STATS, "per_category"}
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AP50"] == pytest.approx(1.0)
    assert perfect["AR100"] == pytest.approx(1.0)
    assert perfect["AP_l"] is None, "no large GT: COCOeval's -1 must become None"
    assert perfect["per_category"][1]["AP"] == pytest.approx(1.0)
    assert perfect["per_category"][3]["AP"] is None

    empty = evaluate_detections_from_results(coco_gt, [], iou_type)
    assert empty["AP"] == 0.0 and empty["AP50"] == 0.0 and empty["AR100"] == 0.0
    assert empty["per_category"][2]["AP"] == 0.0

    shifted = evaluate_detections_from_results(coco_gt, _detections(shift=15), iou_type)
    assert shifted["AP"] < 0.2
    assert capsys.readouterr().out == "", "pycocotools must stay quiet unless verbose"


def test_inputs_are_not_mutated_and_mask_only_results_work_for_boxes(coco_gt):
    results = _detections()
    before = json.dumps(results)
    evaluate_detections_from_results(coco_gt, results, "segm")
    assert json.dumps(results) == before
    mask_only = evaluate_detections_from_results(coco_gt, _detections(with_boxes=False), "bbox")
    assert mask_only["AP"] == pytest.approx(1.0)


def test_image_restriction(coco_gt):
    # Wrong detections on image 2 only: restricting the evaluation to image 1 must ignore them.
    results = [r for r in _detections() if r["image_id"] == 1] + [r for r in _detections(shift=30) if r["image_id"] == 2]
    assert evaluate_detections_from_results(coco_gt, results, "bbox")["AP"] < 0.8
    only_first = evaluate_detections_from_results(coco_gt, [r for r in results if r["image_id"] == 1], "bbox", img_ids=[1])
    assert only_first["AP"] == pytest.approx(1.0)


def test_bad_inputs(coco_gt):
    with pytest.raises(ValueError, match="iou_type"):
        evaluate_detections_from_results(coco_gt, _detections(), "keypoints")
    with pytest.raises(ValueError, match="missing from the ground truth"):
        evaluate_detections_from_results(coco_gt, [{**_detections()[0], "image_id": 99}], "bbox")
    with pytest.raises(ValueError, match="segmentation"):
        evaluate_detections_from_results(coco_gt, _detections(with_masks=False), "segm")
    with pytest.raises(ValueError, match="img_ids"):
        evaluate_detections_from_results(coco_gt, _detections(), "bbox", img_ids=[7])


# ---------------------------------------------------------------------------------------------- models
class FakeDetector:
    """Answers with the dataset's own GT in its own class order, plus ``extra[image index]`` = [(xyxy, label)]
    detections scored above every true one."""

    def __init__(self, dataset, class_names, extra=None, empty=False) -> None:
        self.class_names, self.empty = list(class_names), empty
        self.gt = {}
        for i in range(len(dataset)):
            s = dataset[i]
            labels = np.array([self.class_names.index(dataset.class_names[k]) for k in s.labels], np.int64)
            self.gt[s.image.tobytes()] = (s.boxes, labels, s.masks, (extra or {}).get(i, []))

    def predict(self, image, conf=None, iou=None, max_det=None) -> Results:
        if self.empty:
            return Results.empty(image.shape[:2], self.class_names)
        boxes, labels, masks, extra = self.gt[image.tobytes()]
        scores = np.full(len(boxes), 0.9, np.float32)
        for box, label in extra:
            mask = np.zeros(image.shape[:2], bool)
            x1, y1, x2, y2 = (int(v) for v in box)
            mask[y1:y2, x1:x2] = True
            boxes = np.concatenate([boxes, np.array([box], np.float32)])
            labels, scores = np.append(labels, label), np.append(scores, np.float32(1.0))
            masks = np.concatenate([masks, mask[None]])
        return Results(boxes, scores, labels, masks, self.class_names, image.shape[:2])


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synth") / "ds", 3, seed=0, image_size=(96, 128))


def test_evaluate_detection_with_fake_detectors(synth_root, capsys):
    dataset = CocoInstances(synth_root)
    shuffled = list(reversed(dataset.class_names))  # classes are matched by name, not by index
    perfect = evaluate_detection(FakeDetector(dataset, shuffled), dataset, progress=False)
    assert perfect["bbox"]["AP"] == pytest.approx(1.0) and perfect["segm"]["AP"] == pytest.approx(1.0)
    assert perfect["num_images"] == 3 and perfect["failed_images"] == []
    present = {dataset.class_names[k] for i in range(3) for k in dataset[i].labels}
    for name, values in perfect["per_class"].items():
        expected = pytest.approx(1.0) if name in present else None
        assert values["bbox_AP"] == expected and values["segm_AP"] == expected and values["bbox_AP50"] == expected
    assert "bbox" in format_detection_report(perfect)
    assert capsys.readouterr().out == ""

    silent = FakeDetector(dataset, dataset.class_names, empty=True)
    empty = evaluate_detection(silent, dataset, max_images=2, progress=False)
    assert empty["bbox"]["AP"] == 0.0 and empty["segm"]["AP"] == 0.0 and empty["num_images"] == 2
    assert empty["num_detections"] == 0

    with pytest.raises(ValueError, match="missing from the model"):
        evaluate_detection(FakeDetector(dataset, dataset.class_names[:-1]), dataset, progress=False)
    with pytest.raises(TypeError, match="predict"):
        evaluate_detection(object(), dataset, progress=False)
    with pytest.raises(ValueError, match=r"min_side=16: FakeDetector.predict\(\) has no min_side"):
        evaluate_detection(FakeDetector(dataset, dataset.class_names), dataset, progress=False, min_side=16)
    with pytest.raises(ValueError, match="min_side must be an int >= 0"):
        evaluate_detection(FakeDetector(dataset, dataset.class_names), dataset, progress=False, min_side=-1)


def test_crowd_regions_ignore_detections(tmp_path):
    root = generate_dataset(tmp_path / "ds", 2, seed=0, image_size=(96, 128))
    data = json.loads((root / "annotations.json").read_text())
    x, y, w, h = 2, 2, 20, 12
    data["annotations"].append({"id": 999, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [x, y, w, h],
                                "area": w * h, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    (root / "annotations.json").write_text(json.dumps(data))
    dataset = CocoInstances(root)
    # A top-scoring false detection of class 0 (category 1) on the crowd region of image 1 (index 0).
    extra = {0: [([x, y, x + w, y + h], 0)]}
    with_crowd = evaluate_detection(FakeDetector(dataset, dataset.class_names, extra=extra), dataset, progress=False)
    assert with_crowd["bbox"]["AP"] == pytest.approx(1.0) and with_crowd["segm"]["AP"] == pytest.approx(1.0)

    image = next(img for img in data["images"] if img["id"] == 1)
    image["width"], image["height"] = str(image["width"]), str(image["height"])  # crowd regions were dropped
    (root / "annotations.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="invalid_image_size"):
        dataset = CocoInstances(root)
    text_size = evaluate_detection(FakeDetector(dataset, dataset.class_names, extra=extra), dataset, progress=False)
    assert text_size["bbox"]["AP"] == pytest.approx(1.0)
    image["width"], image["height"] = int(image["width"]), int(image["height"])

    data["annotations"].pop()  # the same detection without the crowd region is a false positive
    (root / "annotations.json").write_text(json.dumps(data))
    dataset = CocoInstances(root)
    without = evaluate_detection(FakeDetector(dataset, dataset.class_names, extra=extra), dataset, progress=False)
    assert without["bbox"]["AP"] < 1.0


def test_cli_writes_json(synth_root, tmp_path):
    out = tmp_path / "det.json"
    args = add_det_arguments(argparse.ArgumentParser()).parse_args([
        "--model", "powersam_s", "--img-size", "64", "--data", str(synth_root), "--split", "all", "--conf", "0.0",
        "--max-det", "5", "--device", "cpu", "--no-progress", "--json", str(out),
    ])
    assert run_det(args) == 0
    report = json.loads(out.read_text())
    assert set(report["bbox"]) == set(REPORTED_STATS) and set(report["segm"]) == set(REPORTED_STATS)
    assert report["num_images"] == 3 and report["num_detections"] == 15
    assert set(report["per_class"]) == set(CocoInstances(synth_root).class_names)

    sam_only = add_det_arguments(argparse.ArgumentParser()).parse_args(
        ["--model", "edgesam", "--img-size", "64", "--data", str(synth_root), "--no-progress"])
    assert run_det(sam_only) == 1


def test_failed_image_is_left_out_of_the_ground_truth(tmp_path):
    root = generate_dataset(tmp_path / "ds", 3, seed=2, image_size=(96, 128))
    detector = FakeDetector(CocoInstances(root), CocoInstances(root).class_names)
    (root / "images" / "000003.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match="cannot decode"):
        result = evaluate_detection(detector, CocoInstances(root), progress=False)
    assert [f["image_id"] for f in result["failed_images"]] == [3]
    assert result["num_images"] == 2
    # Had image 3's annotations stayed in the GT, they would count as misses.
    assert result["bbox"]["AP"] == pytest.approx(1.0) and result["bbox"]["AR100"] == pytest.approx(1.0)
