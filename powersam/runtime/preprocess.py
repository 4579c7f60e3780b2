"""NumPy twins of :mod:`powersam.transforms`: resize-longest-side, normalise + zero-pad, mask upsampling.

Preprocessing reproduces the PyTorch path bit for bit (same Pillow resize, same float32 arithmetic). Mask
upsampling uses OpenCV's bilinear ``resize`` when OpenCV is installed, else a NumPy implementation; both sample
at pixel centres like ``F.interpolate(..., mode="bilinear", align_corners=False)`` (no antialiasing), so logits
agree with the PyTorch path to float rounding (~1e-5) and thresholded masks differ at most on pixels whose logit
is that close to 0.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ..inference.direct_upsample import threshold_low_res_into
from ..inference.upsample import linear_taps

try:  # optional: faster mask upsampling
    import cv2
except ImportError:  # pragma: no cover - exercised only where OpenCV is absent
    cv2 = None

Size = tuple[int, int]

# OpenCV resizes at most this many channels at once (CV_CN_MAX).
_CV_MAX_CHANNELS = 512


def preprocess_shape(height: int, width: int, long_side: int) -> Size:
    """``(h, w)`` after resizing so the long side is ``long_side``, rounded half-up (segment-anything's rule)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive; got (h, w) = ({height}, {width})")
    scale = long_side * 1.0 / max(height, width)
    # at least one pixel: a 3×5000 strip at S=256 would otherwise round its short side to 0
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize an H×W×3 uint8 image with Pillow's bilinear filter → h×w×3 uint8 (as ``ResizeLongestSide``)."""
    new_h, new_w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.BILINEAR)
    return np.array(resized)


def preprocess_image(
    image: np.ndarray, img_size: int, pixel_mean: Sequence[float], pixel_std: Sequence[float],
    resize_mode: Optional[str] = None,
) -> tuple[np.ndarray, Size]:
    """H×W×3 uint8 RGB → (1×3×S×S float32 normalised input, input_size (h, w)).

    ``resize_mode`` ``"longest_side"`` (default, SAM): long side resized to S, zero-padded bottom/right.
    ``"squash"`` (SAM 2): resized to S×S whatever the aspect ratio (bilinear with antialiasing on float pixels, as
    SAM 2's torch ``interpolate(..., antialias=True)``; Pillow's filter is the one torch's antialiasing copies);
    input_size is then (S, S).
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            "preprocess_image expects an H×W×3 uint8 RGB array (use powersam.io.load_image); got "
            f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        )
    mean = np.asarray(pixel_mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(pixel_std, dtype=np.float32).reshape(3, 1, 1)
    if resize_mode == "squash":
        channels = [np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(
            (img_size, img_size), Image.BILINEAR)) for c in range(3)]
        return ((np.stack(channels) - mean) / std)[None].astype(np.float32), (img_size, img_size)
    if resize_mode not in (None, "longest_side"):
        raise ValueError(f"resize_mode must be 'longest_side' or 'squash', got {resize_mode!r}")
    resized = resize_longest_side(image, img_size)
    h, w = resized.shape[:2]
    normalised = (resized.transpose(2, 0, 1).astype(np.float32) - mean) / std
    padded = np.zeros((1, 3, img_size, img_size), dtype=np.float32)
    padded[0, :, :h, :w] = normalised
    return padded, (h, w)


def detector_feeds(image: np.ndarray, det_size: int, input_size: Sequence[int]) -> dict[str, np.ndarray]:
    """A decoupled graph's detector inputs for an H×W×3 uint8 RGB image: ``det_image`` 1×3×D×D float32 (long side
    resized to D, letterboxed with 114, raw 0–255, as ``DecoupledPowerSAM.detector_input``) and ``box_scale`` [4]
    (detector-input → segmenter-input box factors, the segmenter input being ``input_size``)."""
    resized = resize_longest_side(image, det_size)
    canvas = np.full((det_size, det_size, 3), 114, dtype=np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    det_sy, det_sx = axis_scales(image.shape[:2], resized.shape[:2])
    sy, sx = axis_scales(image.shape[:2], input_size)
    return {
        "det_image": canvas.transpose(2, 0, 1)[None].astype(np.float32),
        "box_scale": np.array([sx / det_sx, sy / det_sy] * 2, dtype=np.float32),
    }


def axis_scales(original_size: Sequence[int], input_size: Sequence[int]) -> tuple[float, float]:
    """``(h / H, w / W)``: the exact per-axis resize factors (prompts and boxes are mapped with these)."""
    return input_size[0] / original_size[0], input_size[1] / original_size[1]


def _resize_numpy(stack: np.ndarray, size: Size) -> np.ndarray:
    """C×h×w float32 → C×H×W bilinear (separable: rows, then columns)."""
    y0, y1, wy = linear_taps(stack.shape[1], size[0])
    x0, x1, wx = linear_taps(stack.shape[2], size[1])
    rows = stack[:, y0] * (1 - wy)[:, None] + stack[:, y1] * wy[:, None]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


def _resize(stack: np.ndarray, size: Size) -> np.ndarray:
    if cv2 is None:
        return _resize_numpy(stack, size)
    out = np.empty((stack.shape[0], *size), dtype=np.float32)
    for start in range(0, stack.shape[0], _CV_MAX_CHANNELS):
        part = np.ascontiguousarray(stack[start : start + _CV_MAX_CHANNELS].transpose(1, 2, 0))
        resized = cv2.resize(part, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        out[start : start + _CV_MAX_CHANNELS] = resized.reshape(*size, -1).transpose(2, 0, 1)
    return out


def upsample_masks(
    low_res_logits: np.ndarray,
    input_size: Sequence[int],
    original_size: Sequence[int],
    img_size: int,
    threshold: Optional[float] = 0.0,
    chunk_size: int = 16,
    resize_mode: Optional[str] = None,
) -> np.ndarray:
    """N×M×s×s low-res logits → N×M×H×W masks: bool ``logits > threshold``, float32 logits if threshold is None.

    Like :func:`powersam.transforms.masks_to_original`: bilinear to the padded S×S input, crop the resized image,
    bilinear to the original size, ``chunk_size`` prompts at a time so the float32 intermediates stay at
    chunk·M·(S² + h·w + H·W)·4 bytes on top of the output. ``resize_mode="squash"`` (SAM 2) resizes the low-res
    logits straight to the original size, as SAM 2's ``postprocess_masks``. Bool masks skip the float planes:
    :func:`~powersam.inference.direct_upsample.threshold_low_res_into` (the same masks to float rounding).
    """
    if low_res_logits.ndim != 4:
        raise ValueError(f"low_res_logits must be N×M×h×w, got shape {low_res_logits.shape}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    n, m = low_res_logits.shape[:2]
    height, width = int(original_size[0]), int(original_size[1])
    in_h, in_w = int(input_size[0]), int(input_size[1])
    out = np.empty((n, m, height, width), dtype=np.float32 if threshold is None else np.bool_)
    if threshold is not None:  # bool masks: one composed pass per mask, only where it can be set
        square = None if resize_mode == "squash" else img_size
        return threshold_low_res_into(low_res_logits, input_size, original_size, square, float(threshold), out)
    for start in range(0, n, chunk_size):
        chunk = low_res_logits[start : start + chunk_size].astype(np.float32, copy=False)
        stack = chunk.reshape(-1, *chunk.shape[2:])
        if resize_mode == "squash":  # SAM 2: nothing to crop, straight to the original size
            logits = _resize(stack, (height, width)).reshape(chunk.shape[0], m, height, width)
        else:
            padded = _resize(stack, (img_size, img_size))[:, :in_h, :in_w]
            logits = _resize(padded, (height, width)).reshape(chunk.shape[0], m, height, width)
        out[start : start + chunk.shape[0]] = logits if threshold is None else logits > threshold
    return out
