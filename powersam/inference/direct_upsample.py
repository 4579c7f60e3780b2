"""Low-res mask logits → thresholded original-resolution masks in one pass, only where a mask can be set.

SAM's post-processing is two bilinear steps (``align_corners=False``, no antialiasing): the s×s low-res logits to
the padded S×S input square, crop the resized image area h×w, then to the original H×W. Both steps are linear
and separable, so per axis they compose into one matrix ``A`` (H×s rows, W×s columns) whose row y holds the
product of the two steps' weights: the first step's taps, but only the ones the second step reads (the padded
part of the square is never computed). Each output pixel is then ``A_y · L · A_xᵀ``, at most 3×3 low-res taps
with non-negative weights; this is the same number as the two steps give, up to float rounding (the weights are
multiplied out in float64 and rounded once, and the sums run in another order), ~1e-6 relative: only pixels whose
two-step logit is that close to the threshold can differ (the equivalence tests' tolerance for bool masks).

Like :mod:`powersam.inference.upsample`, the mask is provably ≤ threshold outside the output rows and columns
whose taps touch the bounding box of the low-res logits above the threshold (non-negative weights), so only that
window is computed, as two small matrix products per strip of rows and block of columns (the low-res band a block
reads is a few dozen rows/columns), then thresholded into ``bool``. Nothing of size S×S or H×W in float32 is
made. SAM 2's squashed input (``img_size=None``) is the single bilinear step from s×s to H×W.

Only the thresholded masks take this path; float logits (``return_logits``) keep the two-step resize.
NumPy only: the torch-free runtime uses this module.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence

import numpy as np

from ..masks import CompactMasks
from .upsample import linear_taps, taps_window

__all__ = ["composed_axis", "low_res_window", "masks_from_low_res", "threshold_low_res", "threshold_low_res_into"]

STRIP_BYTES = 16 * 2**20  # float32 bytes of one strip's intermediates
COLUMN_BLOCK = 256  # output columns per matrix product (keeps the low-res band each product reads narrow)


@lru_cache(maxsize=16)
def composed_axis(low: int, valid: int, img_size: Optional[int], out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One axis of the composed resize: ``(A out×low float32, first, last)`` where ``first[i]``/``last[i]`` are
    the lowest/highest low-res index with a non-zero weight in row i (non-decreasing in i). ``valid`` is the
    resized image's extent in the S-square (h or w); ``img_size`` None: one step, low → out."""
    a = np.zeros((out, low), dtype=np.float64)
    rows = np.arange(out)
    if img_size is None:
        i0, i1, w = linear_taps(low, out)
        np.add.at(a, (rows, i0), 1.0 - w.astype(np.float64))
        np.add.at(a, (rows, i1), w.astype(np.float64))
    else:
        p0, p1, pw = linear_taps(low, int(img_size))  # low → S (only the first `valid` are read)
        q0, q1, qw = linear_taps(int(valid), out)  # valid → out
        pw64, qw64 = pw.astype(np.float64), qw.astype(np.float64)
        for q, qweight in ((q0, 1.0 - qw64), (q1, qw64)):
            np.add.at(a, (rows, p0[q]), qweight * (1.0 - pw64[q]))
            np.add.at(a, (rows, p1[q]), qweight * pw64[q])
    nonzero = a > 0
    first = nonzero.argmax(axis=1)
    last = low - 1 - nonzero[:, ::-1].argmax(axis=1)
    matrix = a.astype(np.float32)
    for array in (matrix, first, last):
        array.setflags(write=False)
    return matrix, first, last


def _axes(shape: Sequence[int], input_size: Optional[Sequence[int]], original_size: Sequence[int],
          img_size: Optional[int]):
    height, width = int(original_size[0]), int(original_size[1])
    if img_size is None:
        return composed_axis(shape[0], shape[0], None, height), composed_axis(shape[1], shape[1], None, width)
    return (composed_axis(shape[0], int(input_size[0]), int(img_size), height),
            composed_axis(shape[1], int(input_size[1]), int(img_size), width))


def low_res_window(logits: np.ndarray, rows_axis, cols_axis, threshold: float) -> Optional[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of the original-frame window outside which the mask is provably ≤ threshold; None: empty."""
    return taps_window(logits, rows_axis[1:], cols_axis[1:], threshold)


def _threshold_window(logits, rows_axis, cols_axis, window, threshold, out, strip_bytes) -> None:
    """Write ``(A_y L A_xᵀ)[window] > threshold`` into the bool array ``out`` (the window's shape).

    A Fortran-ordered ``out`` (``out.T`` C-contiguous: column-major, the order run-length encoding reads) gets each
    block as the transposed product ``A_x (A_y L)ᵀ``, written contiguously, so the crop needs no transposing copy
    before it is encoded. Same products of the same taps (bit-identical with this BLAS: the tests compare both)."""
    (ay, fy, ly), (ax, fx, lx) = rows_axis, cols_axis
    y0, y1, x0, x1 = window
    column_major = out.ndim == 2 and out.T.flags.c_contiguous and not out.flags.c_contiguous
    step = max(1, int(strip_bytes) // (4 * (2 * (x1 - x0) + logits.shape[1])))
    for r0 in range(y0, y1, step):
        r1 = min(r0 + step, y1)
        a, b = int(fy[r0]), int(ly[r1 - 1]) + 1  # low-res rows this strip reads
        c, d = int(fx[x0]), int(lx[x1 - 1]) + 1  # low-res columns the window reads
        rows = ay[r0:r1, a:b] @ logits[a:b, c:d]  # strip × (d - c)
        for u0 in range(x0, x1, COLUMN_BLOCK):
            u1 = min(u0 + COLUMN_BLOCK, x1)
            e, f = int(fx[u0]), int(lx[u1 - 1]) + 1
            if column_major:
                values = ax[u0:u1, e:f] @ rows[:, e - c : f - c].T  # block × strip
                np.greater(values, threshold, out=out.T[u0 - x0 : u1 - x0, r0 - y0 : r1 - y0])
            else:
                values = rows[:, e - c : f - c] @ ax[u0:u1, e:f].T  # strip × block
                np.greater(values, threshold, out=out[r0 - y0 : r1 - y0, u0 - x0 : u1 - x0])


def threshold_low_res(
    logits: np.ndarray, input_size: Optional[Sequence[int]], original_size: Sequence[int],
    img_size: Optional[int], threshold: float = 0.0, strip_bytes: int = STRIP_BYTES,
) -> Optional[tuple[int, int, np.ndarray]]:
    """One mask's s×s low-res logits → ``(y0, x0, bool crop)`` of the two-step upsampled mask ``> threshold``,
    False outside the crop; None when the mask is empty (see the module doc). The crop (window height × width) is
    Fortran-ordered, the column-major order :meth:`~powersam.masks.CompactMasks.append_crop` encodes."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2:
        raise ValueError(f"logits must be s×s; got shape {logits.shape}")
    rows_axis, cols_axis = _axes(logits.shape, input_size, original_size, img_size)
    window = low_res_window(logits, rows_axis, cols_axis, threshold)
    if window is None:
        return None
    y0, y1, x0, x1 = window
    # Column-major (Fortran-ordered): CompactMasks.append_crop encodes column by column, so it reads this as is.
    crop = np.empty((x1 - x0, y1 - y0), dtype=np.bool_).T
    _threshold_window(logits, rows_axis, cols_axis, window, threshold, crop, strip_bytes)
    return y0, x0, crop


def threshold_low_res_into(
    low_res: np.ndarray, input_size: Optional[Sequence[int]], original_size: Sequence[int],
    img_size: Optional[int], threshold: float, out: np.ndarray,
) -> np.ndarray:
    """N×M×s×s low-res logits → the N×M×H×W bool ``out`` (every pixel written), one mask at a time."""
    low_res = np.asarray(low_res)
    if low_res.ndim != 4 or out.shape != (*low_res.shape[:2], int(original_size[0]), int(original_size[1])):
        raise ValueError(f"low_res N×M×s×s and out N×M×H×W must agree; got {low_res.shape} and {out.shape}")
    if out.dtype != np.bool_:
        raise ValueError(f"out must be bool, got {out.dtype}")
    for i in range(low_res.shape[0]):
        for j in range(low_res.shape[1]):
            logits = np.asarray(low_res[i, j], dtype=np.float32)
            rows_axis, cols_axis = _axes(logits.shape, input_size, original_size, img_size)
            window = low_res_window(logits, rows_axis, cols_axis, threshold)
            plane = out[i, j]
            plane.fill(False)
            if window is not None:
                y0, y1, x0, x1 = window
                _threshold_window(logits, rows_axis, cols_axis, window, threshold, plane[y0:y1, x0:x1],
                                  STRIP_BYTES)
    return out


def masks_from_low_res(
    low_res: np.ndarray, input_size: Optional[Sequence[int]], original_size: Sequence[int],
    img_size: Optional[int], threshold: float = 0.0, out: Optional[CompactMasks] = None,
) -> CompactMasks:
    """K×s×s low-res logits → :class:`CompactMasks` (appended to ``out`` when given), one mask at a time."""
    masks = CompactMasks(original_size) if out is None else out
    for logits in np.asarray(low_res):
        found = threshold_low_res(logits, input_size, original_size, img_size, threshold)
        if found is None:
            masks.append_crop(np.zeros((0, 0), dtype=np.bool_), 0, 0)
        else:
            masks.append_crop(found[2], found[0], found[1])
    return masks
