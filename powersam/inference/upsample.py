"""Input-frame mask logits → compact original-resolution masks, one mask at a time, only where a mask can be set.

SAM's postprocessing is two bilinear steps (``align_corners=False``, no antialiasing): the s×s low-res logits go
to the padded S×S input square, the resized image area h×w is cropped, and that goes to the original H×W. A
backend does the first, cheap step (its own resize, exactly as before: see ``input_logits`` of the backends);
:func:`upsample_to_original` does the second, which is where the memory goes (H×W float32 per mask), for one
mask on one rectangle:

* Every output pixel of a bilinear resize is a combination of at most 2×2 input pixels with non-negative weights
  summing to one. If all of an output pixel's taps are ≤ the threshold, so is the pixel (with threshold 0 this
  holds exactly in floating point: non-negative weights times non-positive values sum to a non-positive number;
  other thresholds get a 1e-5 relative margin). So the mask is provably empty outside the output rows and columns
  whose taps touch the bounding box of the input-frame logits above the threshold: only that rectangle is
  computed, in strips of rows (bounded float32 transient), and thresholded into a ``bool`` crop.
* Inside the rectangle each pixel is computed with the same taps, weights and operation order as the full-frame
  NumPy resize of :mod:`powersam.runtime.preprocess` (``_resize_numpy``), so the mask equals that full-frame
  result exactly; against PyTorch's ``F.interpolate`` or OpenCV's ``resize`` (the former full-frame paths) logits
  differ by float rounding (~1e-6 relative), so only pixels whose logit is that close to the threshold can differ.

NumPy only: the torch-free runtime uses this module.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..masks import CompactMasks

__all__ = ["linear_taps", "masks_from_input_logits", "support_window", "upsample_to_original"]

# float32 bytes of one strip's intermediates (rows interpolated, then columns): bounds the per-mask transient.
STRIP_BYTES = 32 * 2**20


def linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and the weight of i1 for half-pixel bilinear sampling, edges clamped (the taps of
    ``F.interpolate(..., mode="bilinear", align_corners=False)``, in float32)."""
    scale = np.float32(in_size / out_size)
    source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    source = np.maximum(source, np.float32(0.0))
    i0 = np.minimum(source.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (source - i0).astype(np.float32)


def _touching(first: np.ndarray, last: np.ndarray, low: int, high: int) -> Optional[tuple[int, int]]:
    """[start, stop) of the outputs whose taps reach into [low, high] (the taps are non-decreasing: a range)."""
    start = int(np.searchsorted(last, low, side="left"))
    stop = int(np.searchsorted(first, high, side="right"))
    return None if start >= stop else (start, stop)


def taps_window(logits: np.ndarray, row_taps: tuple[np.ndarray, np.ndarray], col_taps: tuple[np.ndarray, np.ndarray],
                threshold: float) -> Optional[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of the output rectangle outside which a linear resampling of ``logits`` (h×w) whose output
    rows / columns read the input cells ``(first, last)`` of ``row_taps`` / ``col_taps`` is provably ≤ ``threshold``
    (its weights are non-negative); None when the whole mask is empty."""
    margin = 0.0 if threshold == 0 else abs(float(threshold)) * 1e-5
    above = logits > threshold - margin
    rows = np.flatnonzero(above.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(above.any(axis=0))
    ys = _touching(row_taps[0], row_taps[1], int(rows[0]), int(rows[-1]))
    xs = _touching(col_taps[0], col_taps[1], int(cols[0]), int(cols[-1]))
    if ys is None or xs is None:
        return None
    return ys[0], ys[1], xs[0], xs[1]


def support_window(
    logits: np.ndarray, original_size: Sequence[int], threshold: float = 0.0
) -> Optional[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of the original-frame rectangle outside which the upsampled ``logits`` (h×w, input frame)
    are provably ≤ ``threshold``; None when the whole mask is empty."""
    height, width = int(original_size[0]), int(original_size[1])
    return taps_window(logits, linear_taps(logits.shape[0], height)[:2], linear_taps(logits.shape[1], width)[:2],
                       threshold)


def upsample_to_original(
    logits: np.ndarray, original_size: Sequence[int], threshold: float = 0.0, strip_bytes: int = STRIP_BYTES
) -> Optional[tuple[int, int, np.ndarray]]:
    """One mask's h×w input-frame logits → ``(y0, x0, bool crop)`` of ``bilinear(logits, H×W) > threshold``, zero
    outside the crop (see the module doc); None when the mask is empty."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2:
        raise ValueError(f"logits must be h×w; got shape {logits.shape}")
    window = support_window(logits, original_size, threshold)
    if window is None:
        return None
    y0, y1, x0, x1 = window
    height, width = int(original_size[0]), int(original_size[1])
    ry0, ry1, wy = linear_taps(logits.shape[0], height)
    cx0, cx1, wx = linear_taps(logits.shape[1], width)
    cx0, cx1, wx = cx0[x0:x1], cx1[x0:x1], wx[x0:x1]
    lo, hi = int(cx0.min()), int(cx1.max()) + 1
    sub = logits[:, lo:hi]  # the input columns the window reads
    cx0, cx1, one_minus_wx = cx0 - lo, cx1 - lo, 1 - wx
    crop = np.empty((y1 - y0, x1 - x0), dtype=np.bool_)
    step = max(1, int(strip_bytes) // (4 * 3 * max(hi - lo, x1 - x0)))
    for start in range(y0, y1, step):
        stop = min(start + step, y1)
        w = wy[start:stop][:, None]
        # The operation order of _resize_numpy: rows first, then columns.
        rows = sub[ry0[start:stop]] * (1 - w) + sub[ry1[start:stop]] * w
        values = rows[:, cx0] * one_minus_wx + rows[:, cx1] * wx
        crop[start - y0 : stop - y0] = values > threshold
    return y0, x0, crop


def masks_from_input_logits(
    logits: np.ndarray, original_size: Sequence[int], threshold: float = 0.0, out: Optional[CompactMasks] = None
) -> CompactMasks:
    """K×h×w input-frame logits → :class:`CompactMasks` (appended to ``out`` when given), one mask at a time."""
    masks = CompactMasks(original_size) if out is None else out
    for mask_logits in logits:
        upsampled = upsample_to_original(mask_logits, original_size, threshold)
        if upsampled is None:
            masks.append_crop(np.zeros((0, 0), dtype=np.bool_), 0, 0)
        else:
            y0, x0, crop = upsampled
            masks.append_crop(crop, y0, x0)
    return masks
