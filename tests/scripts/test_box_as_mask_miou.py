"""scripts/box_as_mask_miou.py: the README's reference row for prompted mIoU."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from powersam.data.coco import CocoInstances
from script_loader import load_script


def test_rectangle_scores_one_and_triangle_one_half(tmp_path):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    rectangle = [2, 2, 22, 2, 22, 12, 2, 12]  # fills its box exactly
    triangle = [0, 20, 20, 20, 0, 40]  # half of its 20×20 box
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 40}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [rectangle], "bbox": [2, 2, 20, 10],
             "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [triangle], "bbox": [0, 20, 20, 20],
             "area": 200, "iscrowd": 0},
        ],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    ious, areas = load_script("box_as_mask_miou").box_as_mask_ious(CocoInstances(tmp_path))
    assert list(areas) == [200, pytest.approx(200, rel=0.15)]
    assert ious.shape == (2,)
    assert ious[0] > 0.99
    assert 0.45 < ious[1] < 0.6  # rasterised triangle: about half the box
