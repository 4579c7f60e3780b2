"""Prompt samplers: box jitter, points in masks, refinement clicks (labels, regions, determinism, edge cases)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from powersam.data.prompts import (
    append_points,
    as_numpy_rng,
    box_centers,
    jitter_boxes,
    sample_points_in_masks,
    sample_refinement_clicks,
    subsample_instances,
)

H, W = 32, 40


def _at(masks: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Mask values at integer (x, y) points: masks N×H×W, coords N×2."""
    xy = np.asarray(coords).round().astype(int)
    return masks[np.arange(len(masks)), xy[:, 1], xy[:, 0]]


def test_jitter_boxes_noise_scales_with_side_and_is_capped() -> None:
    boxes = np.array([[100, 100, 200, 110], [0, 0, 1000, 1000]], dtype=np.float32)
    draws = np.stack([jitter_boxes(boxes, seed) for seed in range(400)]) - boxes
    std = draws.std(axis=0)
    np.testing.assert_allclose(std[0], [10, 1, 10, 1], rtol=0.2)  # 10 % of width (100) and height (10)
    np.testing.assert_allclose(std[1], [20, 20, 20, 20], rtol=0.2)  # capped at 20 px
    np.testing.assert_array_equal(jitter_boxes(boxes, 3), jitter_boxes(boxes, np.random.default_rng(3)))

    clipped = jitter_boxes(np.array([[0, 0, 40, 30]]), 0, noise=0.5, max_noise=1e9, clip_size=(30, 40))
    assert np.all(clipped >= 0) and np.all(clipped[:, [0, 2]] <= 40) and np.all(clipped[:, [1, 3]] <= 30)
    crossing = np.stack([jitter_boxes(np.array([[10, 10, 11, 11]]), s, noise=5.0) for s in range(20)])
    assert np.all(crossing[..., 2] >= crossing[..., 0]) and np.all(crossing[..., 3] >= crossing[..., 1])

    out = jitter_boxes(torch.tensor([[1.0, 2, 30, 40]]), torch.Generator().manual_seed(0))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 4) and out.dtype == torch.float32
    assert jitter_boxes(np.zeros((0, 4)), 0).shape == (0, 4)


def test_box_centers() -> None:
    np.testing.assert_array_equal(box_centers(np.array([[10, 20, 30, 60]])), [[20, 40]])


def test_points_land_inside_masks() -> None:
    masks = np.zeros((3, H, W), dtype=bool)
    masks[0, 5:9, 30:33] = True
    masks[1, 20:22, 2:3] = True  # 2 pixels only
    coords, labels = sample_points_in_masks(masks, np.random.default_rng(0), k=4)
    assert coords.shape == (3, 4, 2) and labels.shape == (3, 4) and coords.dtype == np.float32
    np.testing.assert_array_equal(labels, [[1] * 4, [1] * 4, [-1] * 4])
    assert np.all(coords == coords.round())  # pixel indices, SAM convention
    for n in range(2):
        assert _at(np.repeat(masks[n : n + 1], 4, 0), coords[n]).all()
    assert len({tuple(p) for p in coords[0]}) == 4  # distinct while the mask has enough pixels
    np.testing.assert_array_equal(coords[2], 0)

    again, _ = sample_points_in_masks(masks, np.random.default_rng(0), k=4)
    np.testing.assert_array_equal(coords, again)
    ga, _ = sample_points_in_masks(torch.from_numpy(masks), torch.Generator().manual_seed(5))
    gb, gl = sample_points_in_masks(torch.from_numpy(masks), torch.Generator().manual_seed(5))
    assert isinstance(ga, torch.Tensor) and torch.equal(ga, gb) and gl.dtype == torch.int64


def test_center_point_is_interior_most() -> None:
    masks = np.zeros((2, H, W), dtype=bool)
    masks[0, 4:15, 10:31] = True  # 11 × 21 rectangle: centre pixel (x 20, y 9)
    masks[0, 20:22, 0:40] = True  # a long thin bar is never the deepest point
    masks[1, :, :] = True  # the image border counts as outside: centre of the image
    coords, labels = sample_points_in_masks(masks, 0, mode="center")
    np.testing.assert_array_equal(coords[:, 0], [[20, 9], [19, 15]])
    np.testing.assert_array_equal(labels, [[1], [1]])
    scaled, _ = sample_points_in_masks(masks[:1], 0, mode="center", scale=4)
    np.testing.assert_array_equal(scaled[0, 0], [20 * 4 + 1.5, 9 * 4 + 1.5])  # centre of the 4×4 cell
    with pytest.raises(ValueError, match="k must be"):
        sample_points_in_masks(masks, 0, k=2, mode="center")


def test_mask_center_point_is_the_mask_pixel_nearest_the_centroid() -> None:
    masks = np.zeros((3, H, W), dtype=bool)
    masks[0, 4:22, 5:10] = True  # left arm of a U
    masks[0, 4:22, 25:30] = True  # right arm
    masks[0, 17:22, 5:30] = True  # bottom bar: the centroid falls in the empty middle of the U
    masks[1, 2:7, 3:12] = True  # convex: the centroid pixel itself (x 7, y 4)
    rows, cols = np.nonzero(masks[0])
    centroid = np.array([rows.mean(), cols.mean()])
    assert not masks[0][tuple(np.round(centroid).astype(int))], "the test needs a centroid outside the mask"
    coords, labels = sample_points_in_masks(masks, np.random.default_rng(0), mode="mask-center")
    np.testing.assert_array_equal(labels, [[1], [1], [-1]])
    x, y = coords[0, 0].astype(int)
    assert masks[0, y, x], "the point must lie inside the mask"
    distances = (rows - centroid[0]) ** 2 + (cols - centroid[1]) ** 2
    assert np.isclose((y - centroid[0]) ** 2 + (x - centroid[1]) ** 2, distances.min())
    first = np.flatnonzero(np.isclose(distances, distances.min()))[0]  # ties: first in row-major order
    assert (y, x) == (rows[first], cols[first])
    np.testing.assert_array_equal(coords[1, 0], [7, 4])
    np.testing.assert_array_equal(coords[2], 0)
    # Deterministic (no rng involved), and different from the interior-most pixel on this shape.
    again, _ = sample_points_in_masks(masks, np.random.default_rng(99), mode="mask-center")
    np.testing.assert_array_equal(coords, again)
    center, _ = sample_points_in_masks(masks[:1], 0, mode="center")
    assert not np.array_equal(center[0, 0], coords[0, 0])
    scaled, _ = sample_points_in_masks(torch.from_numpy(masks[1:2]), 0, mode="mask-center", scale=4)
    assert isinstance(scaled, torch.Tensor) and scaled[0, 0].tolist() == [7 * 4 + 1.5, 4 * 4 + 1.5]
    with pytest.raises(ValueError, match="k must be"):
        sample_points_in_masks(masks, 0, k=2, mode="mask-center")
    with pytest.raises(ValueError, match="'mask-center'"):
        sample_points_in_masks(masks, 0, mode="centroid")


def _error_case():
    target = np.zeros((1, H, W), dtype=bool)
    pred = np.zeros((1, H, W), dtype=bool)
    target[0, 2:12, 2:12] = True  # 10×10 object ...
    pred[0, 2:12, 2:7] = True  # ... half found: FN = 10×5 at x 7..11
    pred[0, 20:25, 30:32] = True  # FP = 5×2 blob
    return pred, target


def test_refinement_click_labels_match_error_type() -> None:
    pred, target = _error_case()
    fn, fp = target & ~pred, pred & ~target
    n = 300
    preds, targets = np.repeat(pred, n, 0), np.repeat(target, n, 0)
    coords, labels = sample_refinement_clicks(preds, targets, np.random.default_rng(0))
    assert set(np.unique(labels)) == {0, 1}
    in_fn, in_fp = _at(np.repeat(fn, n, 0), coords), _at(np.repeat(fp, n, 0), coords)
    assert np.all(in_fn == (labels == 1)) and np.all(in_fp == (labels == 0))
    # uniform over FP ∪ FN: P(positive) = 50 / 60
    assert abs((labels == 1).mean() - 50 / 60) < 0.08

    coords, labels = sample_refinement_clicks(pred, target, 0, mode="center")
    np.testing.assert_array_equal(labels, [1])
    assert coords[0, 0] == 9 and coords[0, 1] in (6, 7)  # middle of the FN band x 7..11, rows 2..11
    coords, labels = sample_refinement_clicks(target, pred, 0, mode="center")  # roles swapped: FN ↔ FP
    np.testing.assert_array_equal(labels, [0])


def test_center_click_uses_largest_component() -> None:
    target = np.zeros((1, H, W), dtype=bool)
    pred = np.zeros((1, H, W), dtype=bool)
    target[0, 1:4, 1:4] = True  # small FN (9 px)
    target[0, 10:21, 20:31] = True  # big FN 11×11, centre (x 25, y 15)
    pred[0, 25:30, 0:5] = True  # FP 25 px
    coords, labels = sample_refinement_clicks(pred, target, 0, mode="center")
    np.testing.assert_array_equal(coords, [[25, 15]])
    np.testing.assert_array_equal(labels, [1])


def test_no_error_gives_padding_click() -> None:
    pred, target = _error_case()
    masks = np.concatenate([target, target, pred])
    tiny = target.copy()
    tiny[0, 30, 39] = True  # one stray pixel: below min_error_pixels
    coords, labels = sample_refinement_clicks(masks, np.concatenate([target, tiny, target]), 0, min_error_pixels=10)
    np.testing.assert_array_equal(labels[:2], [-1, -1])
    assert labels[2] in (0, 1)
    np.testing.assert_array_equal(coords[:2], 0)
    _, labels = sample_refinement_clicks(target, tiny, 0, min_error_pixels=1)
    np.testing.assert_array_equal(labels, [1])


def test_valid_region_masks_out_errors() -> None:
    pred, target = _error_case()
    valid = np.ones((H, W), dtype=bool)
    valid[:, 7:] = False  # hides both error regions
    _, labels = sample_refinement_clicks(pred, target, 0, valid=valid)
    np.testing.assert_array_equal(labels, [-1])
    valid[:, 30:] = True  # only the FP blob visible
    _, labels = sample_refinement_clicks(pred, target, 0, valid=valid)
    np.testing.assert_array_equal(labels, [0])


def test_refinement_edge_cases_and_types() -> None:
    coords, labels = sample_refinement_clicks(np.zeros((0, H, W), bool), np.zeros((0, H, W), bool), 0)
    assert coords.shape == (0, 2) and labels.shape == (0,)
    pred, target = _error_case()
    tc, tl = sample_refinement_clicks(torch.from_numpy(pred), torch.from_numpy(target), torch.Generator().manual_seed(1))
    assert isinstance(tc, torch.Tensor) and tc.dtype == torch.float32 and tl.dtype == torch.int64
    nc, nl = sample_refinement_clicks(pred.astype(np.uint8), target.astype(np.uint8), torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(tc.numpy(), nc)
    with pytest.raises(TypeError, match="threshold"):
        sample_refinement_clicks(pred.astype(np.float32), target, 0)
    with pytest.raises(ValueError, match="same"):
        sample_refinement_clicks(pred, target[:, :-1], 0)
    with pytest.raises(ValueError, match="mode"):
        sample_refinement_clicks(pred, target, 0, mode="middle")
    with pytest.raises(TypeError, match="rng"):
        as_numpy_rng("seed")


def test_append_points_accumulates() -> None:
    coords, labels = append_points(None, None, np.zeros((3, 2)), np.ones(3, dtype=np.int64))
    coords, labels = append_points(coords, labels, np.ones((3, 2)), -np.ones(3, dtype=np.int64))
    assert coords.shape == (3, 2, 2) and labels.tolist() == [[1, -1]] * 3
    tc, tl = append_points(torch.zeros(2, 1, 2), torch.ones(2, 1, dtype=torch.int64), torch.ones(2, 2), torch.zeros(2, dtype=torch.int64))
    assert tc.shape == (2, 2, 2) and tl.tolist() == [[1, 0], [1, 0]]


def test_subsample_instances_without_replacement() -> None:
    idx = subsample_instances(100, 16, 0)
    assert len(idx) == 16 and len(set(idx.tolist())) == 16 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, subsample_instances(100, 16, 0))
    np.testing.assert_array_equal(subsample_instances(5, 16, 0), np.arange(5))
