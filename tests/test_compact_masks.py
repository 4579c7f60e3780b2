"""Compact masks (run lengths + box) and the per-mask, windowed upsampling of the detect pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from powersam.inference.upsample import masks_from_input_logits, support_window, upsample_to_original
from powersam.masks import CompactMasks, rle_counts_from_string
from powersam.results import Results
from powersam.runtime.preprocess import _resize_numpy
from powersam.transforms import masks_to_original


def random_masks(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    masks = np.zeros((n, height, width), bool)
    for i in range(n):
        kind = i % 5
        if kind == 0:
            masks[i] = rng.random((height, width)) < 0.5  # many runs
        elif kind == 1:
            masks[i] = True  # full: runs cross every column boundary
        elif kind == 2:
            pass  # empty
        elif kind == 3:
            masks[i, :, rng.integers(0, width)] = True  # one full column: touches top and bottom borders
        else:
            y0, y1 = sorted(rng.integers(0, height + 1, 2))
            x0, x1 = sorted(rng.integers(0, width + 1, 2))
            masks[i, y0:y1, x0:x1] = True
    return masks


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (13, 17), (40, 3)])
def test_round_trip_and_coco_strings_match_pycocotools(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        dense = random_masks(rng, 6, *shape)
        compact = CompactMasks.from_dense(dense)
        assert compact.shape == dense.shape
        np.testing.assert_array_equal(compact.to_dense(), dense)
        np.testing.assert_array_equal(compact.areas(), dense.sum(axis=(1, 2)))
        for i, mask in enumerate(dense):
            want = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert compact.coco_rle(i) == {"size": list(shape), "counts": want["counts"].decode("ascii")}
            np.testing.assert_array_equal(rle_counts_from_string(want["counts"]), compact.counts(i))
            np.testing.assert_array_equal(compact[i], mask)
            y0, x0, crop = compact.crop(i)
            rows, cols = np.nonzero(mask)
            if rows.size:  # the crop is the tight box
                assert (y0, x0, crop.shape) == (rows.min(), cols.min(), (np.ptp(rows) + 1, np.ptp(cols) + 1))
            else:
                assert crop.shape == (0, 0)
        back = CompactMasks.from_coco([compact.coco_rle(i) for i in range(len(compact))], shape)
        np.testing.assert_array_equal(back.to_dense(), dense)
        np.testing.assert_array_equal(compact[::-2].to_dense(), dense[::-2])


def test_append_crop_places_the_crop_and_rejects_what_does_not_fit():
    rng = np.random.default_rng(0)
    crop = rng.random((5, 4)) < 0.5
    crop[0, 0] = crop[-1, -1] = True
    masks = CompactMasks((8, 9))
    masks.append_crop(crop, 3, 5)  # touches the bottom and right borders
    masks.append_crop(np.zeros((0, 0), bool), 0, 0)
    want = np.zeros((8, 9), bool)
    want[3:, 5:] = crop
    np.testing.assert_array_equal(masks[0], want)
    assert masks.box(0) == (3, 5, 8, 9) and masks.box(1) == (0, 0, 0, 0) and not masks[1].any()
    with pytest.raises(ValueError, match="does not fit"):
        masks.append_crop(crop, 4, 5)


@pytest.mark.parametrize("columns", [3, 1024])
@pytest.mark.parametrize("image", [(1, 1), (7, 1), (1, 9), (23, 31), (40, 6)])
def test_append_crop_in_either_memory_order_matches_pycocotools(monkeypatch, image, columns):
    """The flat-buffer run-length encoder (C- or Fortran-ordered crops, several column blocks when ``columns`` is
    small): COCO counts of the placed dense mask and its tight box, for noisy, full, empty, border-touching crops."""
    monkeypatch.setattr("powersam.masks._ENCODE_COLUMNS", columns)
    rng = np.random.default_rng(sum(image) + columns)
    height, width = image
    for trial in range(12):
        h, w = int(rng.integers(0, height + 1)), int(rng.integers(0, width + 1))
        y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        crop = rng.random((h, w)) < (0.5, 1.0, 0.0, 0.05)[trial % 4]
        if trial % 4 == 3 and w:  # one full column: touches the crop's top and bottom, runs join across columns
            crop[:, int(rng.integers(0, w))] = True
        dense = np.zeros(image, bool)
        dense[y0 : y0 + h, x0 : x0 + w] = crop
        want = rle_counts_from_string(mask_utils.encode(np.asfortranarray(dense.astype(np.uint8)))["counts"])
        rows, cols = np.nonzero(dense)
        box = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) if rows.size else (0, 0, 0, 0)
        for order in ("C", "F"):
            masks = CompactMasks(image)
            masks.append_crop(np.asarray(crop, order=order), y0, x0)
            np.testing.assert_array_equal(masks.counts(0), want)
            assert masks.box(0) == tuple(int(v) for v in box)
            np.testing.assert_array_equal(masks[0], dense)


def test_empty_collection():
    masks = CompactMasks((6, 4))
    assert len(masks) == 0 and masks.to_dense().shape == (0, 6, 4) and masks.areas().shape == (0,)


# ------------------------------------------------------------------------------------------------ upsampling
@pytest.mark.parametrize("threshold", [0.0, 0.7, -0.3])
@pytest.mark.parametrize("frames", [((64, 43), (30, 20)), ((200, 256), (1000, 1281)), ((128, 85), (1, 1)),
                                    ((128, 85), (3, 2)), ((96, 128), (96, 128))])
def test_windowed_upsampling_equals_the_full_frame_resize(frames, threshold):
    """Inside the window: the full-frame NumPy resize bit for bit; outside: provably empty (checked here)."""
    (h, w), original = frames
    rng = np.random.default_rng(h + w)
    logits = (rng.standard_normal((6, h // 8, w // 8)).astype(np.float32) * 3 - 2).repeat(8, 1).repeat(8, 2)
    logits = np.pad(logits, ((0, 0), (0, h - logits.shape[1]), (0, w - logits.shape[2])), constant_values=-4)
    logits[0] = -1.0  # empty
    logits[1, :4, :4] = 5.0  # top-left corner only
    logits[2, -3:, -3:] = 5.0  # bottom-right corner: the mask touches the border
    logits[3] = 2.0  # full
    full = _resize_numpy(logits, original) > threshold
    np.testing.assert_array_equal(masks_from_input_logits(logits, original, threshold).to_dense(), full)
    assert upsample_to_original(logits[0], original, threshold) is None
    for i in range(len(logits)):
        window = support_window(logits[i], original, threshold)
        if window is not None:
            y0, y1, x0, x1 = window
            outside = full[i].copy()
            outside[y0:y1, x0:x1] = False
            assert not outside.any()


def test_windowed_upsampling_agrees_with_the_torch_path():
    """The PyTorch path upsampled with F.interpolate: logits agree to float rounding, so masks agree except on
    pixels whose logit is ~0."""
    rng = np.random.default_rng(3)
    low_res = torch.from_numpy(rng.standard_normal((4, 1, 64, 64)).astype(np.float32) * 4)
    size, input_size, original = 256, (256, 171), (900, 600)
    want = masks_to_original(low_res, input_size, original, size)[:, 0].numpy()
    logits = torch.nn.functional.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
    got = masks_from_input_logits(logits[:, 0, : input_size[0], : input_size[1]].numpy(), original).to_dense()
    assert (got != want).mean() < 1e-5 and 0 < want.mean() < 1


# ------------------------------------------------------------------------------------------------ Results
def make_results(masks) -> Results:
    n = len(masks)
    boxes = np.tile(np.array([[1.0, 2.0, 9.0, 7.0]], np.float32), (n, 1))
    return Results(boxes, np.linspace(0.9, 0.2, n), np.arange(n) % 3, masks, ["a", "b", "c"], (12, 15))


def test_compact_results_behave_like_dense_ones(tmp_path):
    rng = np.random.default_rng(1)
    dense = random_masks(rng, 7, 12, 15)
    a, b = make_results(dense), make_results(CompactMasks.from_dense(dense))
    assert b.has_masks and repr(b).startswith("Results(n=7") and "compact" in repr(b)
    assert a.to_coco(3) == b.to_coco(3)
    np.testing.assert_array_equal(a.mask_areas(), b.mask_areas())
    image = rng.integers(0, 256, (12, 15, 3), dtype=np.uint8)
    np.testing.assert_array_equal(a.plot(image), b.plot(image))
    for i in range(len(dense)):
        np.testing.assert_array_equal(b.mask(i), dense[i])
        y0, x0, crop = b.mask_crop(i)
        assert not crop.any() or crop.shape[0] * crop.shape[1] <= dense[i].size
    assert b.compact_masks.nbytes > 0 and a.compact_masks.shape == (7, 12, 15)
    np.testing.assert_array_equal(b.masks, dense)  # materialised once, on request
    assert b.masks is b.masks
    b.masks = None
    assert not b.has_masks and b.masks is None and "segmentation" not in b.to_coco(1)[0]
    with pytest.raises(ValueError, match="N×H×W"):
        make_results(CompactMasks((12, 14)))


def test_empty_results_and_box_only_results():
    empty = Results.empty((5, 6), ["a"])
    assert empty.masks.shape == (0, 5, 6) and empty.has_masks and empty.to_coco(1) == []
    box_only = Results.empty((5, 6), ["a"], with_masks=False)
    assert not box_only.has_masks and box_only.masks is None
    with pytest.raises(ValueError, match="no masks"):
        box_only.mask_areas()
