"""The one-pass thresholded upsampling (powersam.inference.direct_upsample) against SAM's two bilinear steps."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from powersam.inference.direct_upsample import (
    composed_axis,
    masks_from_low_res,
    threshold_low_res,
    threshold_low_res_into,
)
from powersam.runtime.preprocess import preprocess_shape
from powersam.transforms import postprocess_masks


def _logits(seed: int, shape, offset: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 3 + offset).astype(np.float32)


@pytest.mark.parametrize("original", [(90, 140), (300, 200), (37, 91), (50, 30), (64, 64)])
@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_matches_the_two_step_postprocess(original, threshold):
    size = 64
    input_size = preprocess_shape(*original, size)
    low_res = _logits(0, (3, 2, 16, 16))
    low_res[1, 0] -= 9  # mostly empty: a small window
    full = postprocess_masks(torch.from_numpy(low_res), input_size, original, size).numpy()
    got = np.empty(full.shape, dtype=bool)
    threshold_low_res_into(low_res, input_size, original, size, threshold, got)
    want = full > threshold
    differ = got != want
    assert differ.mean() < 1e-5 and 0 < want.mean() < 1
    assert (np.abs(full[differ] - threshold) < 1e-4).all()  # only at float rounding from the threshold
    compact = masks_from_low_res(low_res.reshape(-1, 16, 16), input_size, original, size, threshold)
    np.testing.assert_array_equal(compact.to_dense().reshape(got.shape), got)


def test_window_is_the_support_and_empty_masks_are_none():
    size, original = 256, (600, 900)
    input_size = preprocess_shape(*original, size)
    low_res = np.full((64, 64), -5.0, dtype=np.float32)
    low_res[10:14, 20:23] = 4.0
    y0, x0, crop = threshold_low_res(low_res, input_size, original, size)
    assert crop.shape[0] < 100 and crop.shape[1] < 100 and crop.any()
    dense = postprocess_masks(torch.from_numpy(low_res)[None, None], input_size, original, size)[0, 0].numpy() > 0
    outside = dense.copy()
    outside[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = False
    assert not outside.any()
    np.testing.assert_array_equal(dense[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]], crop)
    assert threshold_low_res(np.full((64, 64), -1.0, np.float32), input_size, original, size) is None


@pytest.mark.parametrize("square", [64, None])
@pytest.mark.parametrize("original", [(37, 91), (120, 7), (1, 1), (64, 64)])
def test_column_major_crop_is_the_row_major_plane_bit_for_bit(original, square):
    """threshold_low_res writes a Fortran-ordered crop with transposed products (what append_crop encodes without
    a copy); threshold_low_res_into writes C-ordered planes. Same window, same bits, also strip by strip."""
    input_size = preprocess_shape(*original, square) if square else None
    low_res = _logits(4, (6, 16, 16))
    low_res[0] = -3.0  # empty
    low_res[1] -= 9  # mostly empty: a small window
    low_res[2, -2:, :] = 9.0  # along the bottom border
    low_res[3] = 4.0  # full
    dense = np.empty((6, 1, *original), dtype=bool)
    threshold_low_res_into(low_res[:, None], input_size, original, square, 0.0, dense)
    for i, logits in enumerate(low_res):
        for strip_bytes in (1, 2**24):  # one output row per strip, or one strip
            found = threshold_low_res(logits, input_size, original, square, strip_bytes=strip_bytes)
            if found is None:
                assert not dense[i, 0].any()
                continue
            y0, x0, crop = found
            assert crop.flags.f_contiguous
            placed = np.zeros(original, bool)
            placed[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
            np.testing.assert_array_equal(placed, dense[i, 0])
    compact = masks_from_low_res(low_res, input_size, original, square)
    np.testing.assert_array_equal(compact.to_dense(), dense[:, 0])
    assert compact.empty()[0] and not compact.empty()[3]


def test_squashed_input_is_one_resize():
    low_res = _logits(1, (2, 1, 32, 32))
    original = (70, 45)
    full = F.interpolate(torch.from_numpy(low_res), original, mode="bilinear", align_corners=False).numpy()
    got = np.empty(full.shape, dtype=bool)
    threshold_low_res_into(low_res, None, original, None, 0.0, got)
    assert (got != (full > 0)).mean() < 1e-5


def test_composed_axis_rows_are_convex_combinations():
    matrix, first, last = composed_axis(16, 43, 64, 100)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=1e-6)
    assert (matrix >= 0).all() and (np.diff(first) >= 0).all() and (np.diff(last) >= 0).all()
    assert (last - first).max() <= 2  # at most three low-res taps per output pixel and axis
    assert not matrix[:, 12:].any()  # low-res rows past the resized image (43 of 64 reads 0..11 of 16): never read


def test_checks_shapes():
    with pytest.raises(ValueError, match="agree"):
        threshold_low_res_into(np.zeros((1, 1, 8, 8), np.float32), (32, 32), (10, 10), 32, 0.0,
                               np.zeros((1, 1, 10, 11), bool))
    with pytest.raises(ValueError, match="bool"):
        threshold_low_res_into(np.zeros((1, 1, 8, 8), np.float32), (32, 32), (10, 10), 32, 0.0,
                               np.zeros((1, 1, 10, 10), np.float32))
