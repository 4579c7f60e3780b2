"""scripts/resolution_ceiling.py: the mIoU a perfect SAM-architecture model could reach at an input size."""
from __future__ import annotations

import numpy as np

from script_loader import load_script


def test_large_shapes_survive_and_thin_ones_do_not_at_a_small_input():
    ceiling = load_script("resolution_ceiling").ceiling_ious
    masks = np.zeros((2, 512, 640), bool)
    masks[0, 100:400, 100:500] = True  # a large block
    masks[1, 50:450, 300:302] = True  # a 2-pixel wire
    low, high = ceiling(masks, 256), ceiling(masks, 1024)
    assert low[0] > 0.98 and high[0] > 0.99
    assert low[1] < 0.5 < high[1]


def test_per_size_table_over_a_dataset():
    from powersam.eval.scenes import heldout_scenes

    result = load_script("resolution_ceiling").resolution_ceiling(heldout_scenes(3), [256, 1024])
    assert set(result) == {"256", "1024"}
    assert 0 < result["256"]["all"] < result["1024"]["all"] <= 100
