"""Results: validation, COCO export round trip through pycocotools, summary, plotting, empty results."""
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from powersam.results import Results, class_color

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2

CLASSES = ["TA", "W", "SQR", "L", "FV", "CM", "TV", "QF", "C", "T", "JYZ", "QS"]
H, W = 40, 60


def _results(image_path=None):
    masks = np.zeros((3, H, W), bool)
    masks[0, 5:15, 10:30] = True
    masks[1, 20:35, 5:25] = True
    masks[2, 2:38, 40:58] = True
    masks[2, 10:12, 45:50] = False  # a hole, so the RLE is not a plain rectangle
    boxes = np.array([[10, 5, 30, 15], [5, 20, 25, 35], [40, 2, 58, 38]], dtype=np.float64)
    return Results(
        boxes=boxes, scores=np.array([0.9, 0.75, 0.6]), labels=np.array([10, 5, 10]), masks=masks,
        class_names=CLASSES, orig_shape=(H, W), image_path=image_path,
    )


def _image():
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def test_fields_are_normalised():
    results = _results()
    assert len(results) == 3
    assert results.boxes.dtype == np.float32 and results.scores.dtype == np.float32
    assert results.labels.dtype == np.int64 and results.masks.dtype == np.bool_
    assert results.names() == ["JYZ", "CM", "JYZ"]
    assert results.summary() == {"CM": 1, "JYZ": 2}
    assert list(results.summary()) == ["CM", "JYZ"]  # class-index order


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(boxes=np.zeros((3, 5))), "N×4"),
        (dict(scores=np.zeros(2)), r"scores must have shape \(3,\)"),
        (dict(labels=np.zeros(4, int)), r"labels must have shape \(3,\)"),
        (dict(labels=np.array([0, 1, 12])), r"\[0, 12\)"),
        (dict(labels=np.array([0.0, 1.0, 2.0])), "integers"),
        (dict(masks=np.zeros((3, H, W + 1), bool)), "masks must have shape"),
    ],
)
def test_invalid_fields_raise(change, match):
    base = _results()
    fields = dict(boxes=base.boxes, scores=base.scores, labels=base.labels, masks=base.masks,
                  class_names=CLASSES, orig_shape=(H, W))
    fields.update(change)
    with pytest.raises(ValueError, match=match):
        Results(**fields)


def test_to_coco_round_trip():
    results = _results()
    records = results.to_coco(image_id=7, category_ids=list(range(1, 13)))
    json.dumps(records)  # JSON-serialisable: RLE counts are str
    assert [r["category_id"] for r in records] == [11, 6, 11]
    assert records[0]["bbox"] == [10.0, 5.0, 20.0, 10.0]
    assert records[1]["score"] == pytest.approx(0.75)
    for record, mask in zip(records, results.masks):
        assert record["image_id"] == 7 and isinstance(record["segmentation"]["counts"], str)
        assert record["segmentation"]["size"] == [H, W]
        np.testing.assert_array_equal(mask_utils.decode(record["segmentation"]).astype(bool), mask)
    # Mapping form and default (label itself).
    assert [r["category_id"] for r in results.to_coco(1, category_ids={5: 50, 10: 100})] == [100, 50, 100]
    assert [r["category_id"] for r in results.to_coco(1)] == [10, 5, 10]
    with pytest.raises(ValueError, match="label 10"):
        results.to_coco(1, category_ids={5: 50})


def test_to_coco_evaluates_perfectly_against_itself():
    results = _results()
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "height": H, "width": W}],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)],
        "annotations": [],
    }
    for i, record in enumerate(results.to_coco(1, category_ids=list(range(1, 13)))):
        gt.dataset["annotations"].append(
            {"id": i + 1, "image_id": 1, "category_id": record["category_id"], "bbox": record["bbox"],
             "segmentation": record["segmentation"], "area": float(results.masks[i].sum()), "iscrowd": 0}
        )
    gt.createIndex()
    detections = gt.loadRes(results.to_coco(1, category_ids=list(range(1, 13))))
    evaluator = COCOeval(gt, detections, "segm")
    evaluator.params.areaRng = [[0, 1e10]] * 4  # the objects are tiny; count them all
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_plot_draws_masks_and_boxes(tmp_path):
    results = _results()
    image = _image()
    masks_only = results.plot(image, alpha=0.5, show_boxes=False, show_labels=False)
    assert masks_only.shape == (H, W, 3) and masks_only.dtype == np.uint8
    covered = results.masks.any(axis=0)
    np.testing.assert_array_equal(masks_only[~covered], image[~covered])  # untouched outside masks
    colour = np.array(class_color(5), float)
    only_mask_1 = results.masks[1] & ~results.masks[0] & ~results.masks[2]
    expected = np.clip(image[only_mask_1] * 0.5 + colour * 0.5 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(masks_only[only_mask_1], expected)
    np.testing.assert_array_equal(results.plot(image, alpha=0.0, show_boxes=False, show_labels=False), image)
    full = results.plot(image)
    assert (full != masks_only).any()  # boxes / labels were drawn on top
    np.testing.assert_array_equal(full, results.plot(image))  # deterministic
    assert class_color(3) == class_color(3) and class_color(3) != class_color(4)
    with pytest.raises(ValueError, match="size"):
        results.plot(image[:10])
    with pytest.raises(ValueError, match="alpha"):
        results.plot(image, alpha=2.0)

    path = results.save(tmp_path / "out" / "vis.png", image)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), full)


def test_empty_results_work_everywhere(tmp_path):
    empty = Results.empty((H, W), CLASSES, image_path="x.jpg")
    assert len(empty) == 0 and empty.masks.shape == (0, H, W) and empty.boxes.shape == (0, 4)
    assert empty.names() == [] and empty.summary() == {} and empty.to_coco(3) == []
    image = _image()
    np.testing.assert_array_equal(empty.plot(image), image)
    assert empty.save(tmp_path / "empty.png", image).exists()
    no_masks = Results.empty((H, W), CLASSES, with_masks=False)
    assert no_masks.masks is None and no_masks.to_coco(1) == []
    # Fields given as empty lists are accepted too.
    listed = Results(boxes=[], scores=[], labels=[], masks=None, class_names=[], orig_shape=(H, W))
    assert listed.boxes.shape == (0, 4) and listed.labels.dtype == np.int64


def test_box_only_results_export_without_segmentation():
    base = _results()
    results = Results(base.boxes, base.scores, base.labels, None, CLASSES, (H, W))
    records = results.to_coco(1)
    assert all("segmentation" not in r for r in records)
    assert results.plot(_image()).shape == (H, W, 3)


def test_empty_masks_are_flagged_and_counted():
    from powersam.deploy.predict.outputs import format_summary
    from powersam.masks import CompactMasks

    dense = np.zeros((3, 4, 5), bool)
    dense[1, 2, 3] = True
    for masks in (dense, CompactMasks.from_dense(dense)):
        result = Results(np.zeros((3, 4)), np.ones(3), np.zeros(3, np.int64), masks, ["x"], (4, 5))
        np.testing.assert_array_equal(result.empty_masks, [True, False, True])
    empty = Results.empty((4, 5), ["x"])
    assert empty.empty_masks.shape == (0,) and empty.mask_areas().shape == (0,)  # mask_areas raised here
    summary = {"counts": {"x": 3}, "images_with": {"x": 1}, "instances": 3, "images_processed": 1,
               "empty_masks": 2, "failures": [], "throughput": {"ms_per_image": None}}
    assert "warning: 2 of 3 instance(s) have an empty mask" in format_summary(summary)
