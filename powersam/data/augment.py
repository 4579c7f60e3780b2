"""Detection augmentations for training the box-prompt generator (the YOLOX recipe of spec §4.4), NumPy + OpenCV.

Every function takes and returns a :class:`DetectionSample` (image H×W×3 uint8 **RGB**, boxes N×4 float32 xyxy
pixels, labels N int64, optional masks N×H×W bool) and draws randomness only from its ``rng`` argument
(:class:`numpy.random.Generator`), so a seeded generator reproduces a sample exactly.

Coordinates are continuous: pixel (col c, row r) covers [c, c+1) × [r, r+1), so the tight box of a mask with
columns c0..c1 is x1 = c0, x2 = c1 + 1. Geometric transforms are built in that frame and converted to OpenCV's
pixel-index frame, which keeps boxes and warped masks consistent to within interpolation rounding.

Differences from the reference (spec §9.8): images stay RGB, and :class:`DetectionAugment` does not pad by
default — pad after normalisation with :func:`powersam.transforms.normalize_and_pad` so the detector sees exactly
the SAM encoder's input (zero padding in normalised space, Pillow resize) instead of a 114-grey border.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

_MASK_CHUNK = 256  # OpenCV warps at most 512 channels at once


@dataclass
class DetectionSample:
    """An image with its instances (N of them)."""

    image: np.ndarray  # H×W×3 uint8 RGB
    boxes: np.ndarray  # N×4 float32 xyxy
    labels: np.ndarray  # N int64
    masks: Optional[np.ndarray] = None  # N×H×W bool

    @classmethod
    def from_any(cls, sample) -> "DetectionSample":
        """Take ``image``/``boxes``/``labels``/``masks`` attributes (e.g. a ``coco.Sample``), validating shapes."""
        image = np.asarray(sample.image)
        boxes = np.asarray(sample.boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(sample.labels, dtype=np.int64).reshape(-1)
        masks = getattr(sample, "masks", None)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be H×W×3 uint8; got {image.dtype} {image.shape}")
        if len(labels) != len(boxes):
            raise ValueError(f"boxes and labels disagree: {len(boxes)} boxes, {len(labels)} labels")
        if masks is not None:
            masks = np.asarray(masks, dtype=bool)
            if masks.shape != (len(boxes), *image.shape[:2]):
                raise ValueError(f"masks must be N×H×W = {(len(boxes), *image.shape[:2])}; got {masks.shape}")
        return cls(image, boxes, labels, masks)

    def select(self, keep: np.ndarray) -> "DetectionSample":
        return DetectionSample(self.image, self.boxes[keep], self.labels[keep], None if self.masks is None else self.masks[keep])


def _cv2():
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("powersam.data.augment needs OpenCV: pip install opencv-python-headless") from err
    return cv2


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight xyxy boxes (continuous frame) of N×H×W bool masks → N×4 float32; empty masks give all zeros."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        cols, rows = np.flatnonzero(m.any(axis=0)), np.flatnonzero(m.any(axis=1))
        if len(cols):
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def horizontal_flip(sample: DetectionSample, rng: np.random.Generator, p: float = 0.5) -> DetectionSample:
    """Mirror left–right with probability ``p`` (``p=1`` always flips)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1]; got {p}")
    if p < 1.0 and rng.random() >= p:
        return sample
    width = sample.image.shape[1]
    boxes = sample.boxes.copy()
    boxes[:, [0, 2]] = width - sample.boxes[:, [2, 0]]
    masks = None if sample.masks is None else np.ascontiguousarray(sample.masks[:, :, ::-1])
    return DetectionSample(np.ascontiguousarray(sample.image[:, ::-1]), boxes, sample.labels, masks)


def hsv_jitter(
    image: np.ndarray, rng: np.random.Generator, hue: float = 5, saturation: float = 30, value: float = 30
) -> np.ndarray:
    """YOLOX-style colour jitter: each of H, S, V is shifted, with probability ½, by an integer offset drawn
    uniformly from ±``hue`` (OpenCV hue units, 0–179, wrapped), ±``saturation``, ±``value`` (0–255, clipped)."""
    cv2 = _cv2()
    gains = rng.uniform(-1.0, 1.0, 3) * np.array([hue, saturation, value]) * rng.integers(0, 2, 3)
    gains = gains.astype(np.int16)
    if not gains.any():
        return image
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + gains[0]) % 180
    hsv[..., 1:] = np.clip(hsv[..., 1:] + gains[1:], 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def affine_matrix(
    input_size: tuple[int, int], output_size: tuple[int, int], scale: float = 1.0, rotate: float = 0.0,
    shear: tuple[float, float] = (0.0, 0.0), translate: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """2×3 matrix (continuous frame) that scales, rotates (degrees, counter-clockwise on screen) and shears
    (degrees, x and y) about the input centre, puts it on the output centre and shifts by ``translate`` pixels.
    Sizes are (H, W)."""
    (h_in, w_in), (h_out, w_out) = input_size, output_size
    to_origin = np.array([[1, 0, -w_in / 2], [0, 1, -h_in / 2], [0, 0, 1]], dtype=np.float64)
    a = math.radians(rotate)
    rot = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]]) * np.array([scale, scale, 1])[:, None]
    sh = np.array([[1, math.tan(math.radians(shear[0])), 0], [math.tan(math.radians(shear[1])), 1, 0], [0, 0, 1]])
    back = np.array([[1, 0, w_out / 2 + translate[0]], [0, 1, h_out / 2 + translate[1]], [0, 0, 1]])
    return (back @ sh @ rot @ to_origin)[:2]


def _warp_masks(masks: np.ndarray, matrix_px: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    cv2 = _cv2()
    out = np.zeros((len(masks), *out_hw), dtype=bool)
    for start in range(0, len(masks), _MASK_CHUNK):
        chunk = np.ascontiguousarray(masks[start : start + _MASK_CHUNK].transpose(1, 2, 0), dtype=np.uint8)
        warped = cv2.warpAffine(chunk, matrix_px, (out_hw[1], out_hw[0]), flags=cv2.INTER_NEAREST, borderValue=0)
        out[start : start + _MASK_CHUNK] = warped.reshape(*out_hw, -1).transpose(2, 0, 1).astype(bool)
    return out


def _box_filter(
    boxes: np.ndarray, reference_area: np.ndarray, min_size: float, min_area_ratio: float, max_aspect_ratio: float
) -> np.ndarray:
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    aspect = np.maximum(w / np.maximum(h, 1e-6), h / np.maximum(w, 1e-6))
    return (w > min_size) & (h > min_size) & (w * h > min_area_ratio * reference_area) & (aspect < max_aspect_ratio)


def apply_affine(
    sample: DetectionSample, matrix: np.ndarray, output_size: Optional[tuple[int, int]] = None, border_value: int = 114,
    min_size: float = 2.0, min_area_ratio: float = 0.1, max_aspect_ratio: float = 20.0, boxes_from_masks: bool = True,
) -> DetectionSample:
    """Warp a sample with a 2×3 continuous-frame ``matrix`` onto an ``output_size`` (H, W) canvas.

    Boxes are the clipped hull of their 4 warped corners or, with masks and ``boxes_from_masks``, the tight box
    of the warped mask. Instances are dropped when a side is ≤ ``min_size``, the area is ≤ ``min_area_ratio`` of
    the warped original's area (mostly cut off), or the aspect ratio is ≥ ``max_aspect_ratio``.
    """
    cv2 = _cv2()
    h_in, w_in = sample.image.shape[:2]
    h_out, w_out = output_size or (h_in, w_in)
    linear, shift = matrix[:, :2], matrix[:, 2]
    # Continuous → pixel-index frame: p_idx' = A(p_idx + ½) + t − ½.
    matrix_px = np.concatenate([linear, (shift + linear.sum(axis=1) * 0.5 - 0.5)[:, None]], axis=1)
    image = cv2.warpAffine(sample.image, matrix_px, (w_out, h_out), flags=cv2.INTER_LINEAR, borderValue=(border_value,) * 3)
    n = len(sample.boxes)
    corners = sample.boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(n, 4, 2).astype(np.float64)
    warped = corners @ linear.T + shift
    hull = np.concatenate([warped.min(axis=1), warped.max(axis=1)], axis=1)
    reference_area = (hull[:, 2] - hull[:, 0]) * (hull[:, 3] - hull[:, 1])
    boxes = np.clip(hull, 0, [w_out, h_out, w_out, h_out]).astype(np.float32)
    masks = None
    if sample.masks is not None:
        masks = _warp_masks(sample.masks, matrix_px, (h_out, w_out))
        if boxes_from_masks:
            boxes = masks_to_boxes(masks)
    keep = _box_filter(boxes, reference_area, min_size, min_area_ratio, max_aspect_ratio)
    return DetectionSample(image, boxes, sample.labels, masks).select(keep)


def random_affine(
    sample: DetectionSample, rng: np.random.Generator, scale: tuple[float, float] = (0.5, 1.5), rotate: float = 10.0,
    translate: float = 0.1, shear: float = 2.0, output_size: Optional[tuple[int, int]] = None, border_value: int = 114,
    **filter_kwargs,
) -> DetectionSample:
    """Random scale in ``scale``, rotation in ±``rotate``°, shear in ±``shear``° and translation in ±``translate``
    × output size, about the image centre (mmdet ``RandomAffine``). ``output_size`` (H, W) smaller than the
    input crops its centre (how a 2S mosaic canvas becomes S). ``filter_kwargs`` go to :func:`apply_affine`."""
    h_out, w_out = output_size or sample.image.shape[:2]
    s = rng.uniform(*scale)
    angle = rng.uniform(-rotate, rotate)
    shears = tuple(rng.uniform(-shear, shear, 2))
    shift = (rng.uniform(-translate, translate) * w_out, rng.uniform(-translate, translate) * h_out)
    matrix = affine_matrix(sample.image.shape[:2], (h_out, w_out), s, angle, shears, shift)
    return apply_affine(sample, matrix, (h_out, w_out), border_value, **filter_kwargs)


def letterbox(sample: DetectionSample, size: int, pad_value: Optional[int] = 114) -> DetectionSample:
    """Resize so the long side is ``size`` (SAM's :class:`~powersam.transforms.ResizeLongestSide`: Pillow bilinear)
    and pad bottom/right to ``size×size`` with ``pad_value`` (None: no padding)."""
    from powersam.transforms import ResizeLongestSide

    cv2 = _cv2()
    h, w = sample.image.shape[:2]
    resize = ResizeLongestSide(size)
    new_h, new_w = resize.get_preprocess_shape(h, w, size)
    image = resize.apply_image(sample.image) if (new_h, new_w) != (h, w) else sample.image
    boxes = (sample.boxes * np.array([new_w / w, new_h / h] * 2, dtype=np.float32)).astype(np.float32)
    masks = sample.masks
    if masks is not None and (new_h, new_w) != (h, w):
        resized = np.zeros((len(masks), new_h, new_w), dtype=bool)
        for i, m in enumerate(masks):
            resized[i] = cv2.resize(m.view(np.uint8), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        masks = resized
    if pad_value is not None and (new_h, new_w) != (size, size):
        canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)
        canvas[:new_h, :new_w] = image
        image = canvas
        if masks is not None:
            padded = np.zeros((len(masks), size, size), dtype=bool)
            padded[:, :new_h, :new_w] = masks
            masks = padded
    return DetectionSample(image, boxes, sample.labels, masks)


def mosaic(
    samples: Sequence[DetectionSample], size: int, rng: np.random.Generator,
    center_ratio_range: tuple[float, float] = (0.5, 1.5), pad_value: int = 114,
) -> DetectionSample:
    """Tile 4 samples (long side resized to ``size``) around a random centre of a 2·size square canvas
    (top-left, top-right, bottom-left, bottom-right), as mmdet ``Mosaic``. Boxes are clipped to each tile."""
    cv2 = _cv2()
    if len(samples) != 4:
        raise ValueError(f"mosaic needs exactly 4 samples; got {len(samples)}")
    canvas_size = 2 * size
    xc, yc = (int(rng.uniform(*center_ratio_range) * size) for _ in range(2))
    canvas = np.full((canvas_size, canvas_size, 3), pad_value, dtype=np.uint8)
    with_masks = all(s.masks is not None for s in samples)
    boxes, labels, masks = [], [], []
    for corner, sample in enumerate(samples):
        h, w = sample.image.shape[:2]
        ratio = size / max(h, w)
        nh, nw = max(1, round(h * ratio)), max(1, round(w * ratio))
        image = cv2.resize(sample.image, (nw, nh), interpolation=cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR)
        # Where the tile's top-left lands on the canvas, so that its inner corner touches (xc, yc).
        x0 = xc - nw if corner in (0, 2) else xc
        y0 = yc - nh if corner in (0, 1) else yc
        cx1, cy1, cx2, cy2 = max(x0, 0), max(y0, 0), min(x0 + nw, canvas_size), min(y0 + nh, canvas_size)
        canvas[cy1:cy2, cx1:cx2] = image[cy1 - y0 : cy2 - y0, cx1 - x0 : cx2 - x0]
        tile_boxes = sample.boxes * np.float32(ratio) + np.array([x0, y0, x0, y0], dtype=np.float32)
        boxes.append(np.clip(tile_boxes, [cx1, cy1, cx1, cy1], [cx2, cy2, cx2, cy2]))
        labels.append(sample.labels)
        if with_masks:
            placed = np.zeros((len(sample.masks), canvas_size, canvas_size), dtype=bool)
            for i, m in enumerate(sample.masks):
                resized = cv2.resize(m.view(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(bool)
                placed[i, cy1:cy2, cx1:cx2] = resized[cy1 - y0 : cy2 - y0, cx1 - x0 : cx2 - x0]
            masks.append(placed)
    out = DetectionSample(
        canvas, np.concatenate(boxes).astype(np.float32), np.concatenate(labels).astype(np.int64),
        np.concatenate(masks) if with_masks else None,
    )
    keep = (out.boxes[:, 2] > out.boxes[:, 0]) & (out.boxes[:, 3] > out.boxes[:, 1])
    return out.select(keep)


def mixup(
    sample: DetectionSample, other: DetectionSample, rng: np.random.Generator, size: int,
    ratio_range: tuple[float, float] = (0.8, 1.6), flip_ratio: float = 0.5, pad_value: int = 114,
    min_size: float = 2.0, min_area_ratio: float = 0.1, max_aspect_ratio: float = 20.0,
) -> DetectionSample:
    """Blend ``other`` half-and-half into ``sample``, as mmdet's ``MixUp`` in the YOLOX recipe.

    ``other`` is fitted into a ``size``×``size`` canvas (top-left), rescaled by a jitter drawn from ``ratio_range``,
    mirrored horizontally with probability 1 − ``flip_ratio`` (mmdet's convention), and a random window of
    ``sample``'s size is cut from it; its boxes follow and are kept unless the cut leaves a side ≤ ``min_size``, less
    than ``min_area_ratio`` of the box, or an aspect ratio ≥ ``max_aspect_ratio``. ``other`` without boxes leaves
    ``sample`` unchanged. The result has no masks (the box-prompt generator trains on boxes).
    """
    cv2 = _cv2()
    if len(other.boxes) == 0:
        return sample
    jitter = rng.uniform(*ratio_range)
    flip = rng.uniform(0, 1) > flip_ratio
    other_h, other_w = other.image.shape[:2]
    scale = min(size / other_h, size / other_w)
    canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)
    fit_h, fit_w = max(1, int(other_h * scale)), max(1, int(other_w * scale))
    canvas[:fit_h, :fit_w] = cv2.resize(other.image, (fit_w, fit_h), interpolation=cv2.INTER_LINEAR)
    scale *= jitter
    canvas = cv2.resize(canvas, (max(1, int(size * jitter)), max(1, int(size * jitter))), interpolation=cv2.INTER_LINEAR)
    canvas_h, canvas_w = canvas.shape[:2]
    boxes = np.clip(other.boxes * np.float32(scale), 0, [canvas_w, canvas_h, canvas_w, canvas_h]).astype(np.float32)
    if flip:
        canvas = canvas[:, ::-1]
        boxes = np.stack([canvas_w - boxes[:, 2], boxes[:, 1], canvas_w - boxes[:, 0], boxes[:, 3]], axis=1)
    target_h, target_w = sample.image.shape[:2]
    padded = np.full((max(canvas_h, target_h), max(canvas_w, target_w), 3), pad_value, dtype=np.uint8)
    padded[:canvas_h, :canvas_w] = canvas
    y_offset = int(rng.integers(0, padded.shape[0] - target_h)) if padded.shape[0] > target_h else 0
    x_offset = int(rng.integers(0, padded.shape[1] - target_w)) if padded.shape[1] > target_w else 0
    window = padded[y_offset : y_offset + target_h, x_offset : x_offset + target_w]
    reference_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cut = np.clip(boxes - np.array([x_offset, y_offset] * 2, dtype=np.float32), 0,
                  [target_w, target_h, target_w, target_h]).astype(np.float32)
    keep = _box_filter(cut, reference_area, min_size, min_area_ratio, max_aspect_ratio)
    image = (0.5 * sample.image.astype(np.float32) + 0.5 * window.astype(np.float32)).round().astype(np.uint8)
    return DetectionSample(image, np.concatenate([sample.boxes, cut[keep]]).astype(np.float32),
                           np.concatenate([sample.labels, other.labels[keep]]).astype(np.int64))


class DetectionAugment:
    """The BBPG training pipeline: [mosaic] → random affine → [MixUp] → HSV jitter → horizontal flip → resize
    long side to ``size`` [→ pad] → drop boxes smaller than ``min_box_size``.

    Args:
        size: output long side (the model's input size, 1024 for PowerSAM).
        mosaic: build each sample from 4 images (the caller passes :attr:`num_extra_samples` more to ``__call__``);
            the affine then crops the 2·size canvas back to size×size.
        mixup: blend in one more image (:func:`mixup`, jitter ``mixup_ratio``); it is the last extra sample.
        scale: affine scale range; default (0.1, 2.0) with mosaic (the reference) and (0.5, 1.5) without.
        rotate, translate, shear: affine ranges (±degrees, ±fraction of the output size, ±degrees).
        hue, saturation, value: :func:`hsv_jitter` ranges. flip_prob: probability of a horizontal flip.
        pad_value: pad to size×size with this grey (None, the default: leave padding to
            :func:`powersam.transforms.normalize_and_pad`, matching the SAM encoder input).
        border_value: fill of areas the affine/mosaic uncovers.
        min_box_size: boxes with a side smaller than this (pixels, after resizing) are dropped.

    Set :attr:`strong` to False for the last epochs (YOLOX turns mosaic, affine and MixUp off for the final 15).
    """

    def __init__(
        self, size: int = 1024, mosaic: bool = False, scale: Optional[tuple[float, float]] = None,
        rotate: float = 10.0, translate: float = 0.1, shear: float = 2.0, hue: float = 5, saturation: float = 30,
        value: float = 30, flip_prob: float = 0.5, pad_value: Optional[int] = None, border_value: int = 114,
        min_box_size: float = 1.0, mixup: bool = False, mixup_ratio: tuple[float, float] = (0.8, 1.6),
    ) -> None:
        if int(size) <= 0:
            raise ValueError(f"size must be a positive integer; got {size}")
        self.size, self.mosaic = int(size), bool(mosaic)
        self.scale = tuple(scale) if scale is not None else ((0.1, 2.0) if mosaic else (0.5, 1.5))
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be a (low, high) range with 0 < low <= high; got {scale}")
        self.rotate, self.translate, self.shear = rotate, translate, shear
        self.hue, self.saturation, self.value = hue, saturation, value
        self.flip_prob, self.pad_value, self.border_value = flip_prob, pad_value, border_value
        self.min_box_size = min_box_size
        self.mixup = bool(mixup)
        self.mixup_ratio = tuple(mixup_ratio)
        if len(self.mixup_ratio) != 2 or not 0 < self.mixup_ratio[0] <= self.mixup_ratio[1]:
            raise ValueError(f"mixup_ratio must be a (low, high) range with 0 < low <= high; got {mixup_ratio}")
        self.strong = True

    @property
    def num_extra_samples(self) -> int:
        """How many more samples ``__call__`` needs (while :attr:`strong`: 3 for mosaic, then 1 for MixUp)."""
        return (3 * self.mosaic + self.mixup) if self.strong else 0

    def __call__(self, sample, rng: np.random.Generator, extra_samples: Sequence = ()) -> DetectionSample:
        """Augment ``sample`` (anything with ``image``/``boxes``/``labels``/``masks``) → :class:`DetectionSample`."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
        if len(extra_samples) != self.num_extra_samples:
            raise ValueError(f"expected {self.num_extra_samples} extra samples (mosaic, MixUp); got {len(extra_samples)}")
        out = DetectionSample.from_any(sample)
        if self.strong:
            if self.mosaic:
                parts = [out] + [DetectionSample.from_any(s) for s in extra_samples[:3]]
                if any(p.masks is None for p in parts):  # mosaic keeps masks only if every part has them
                    parts = [DetectionSample(p.image, p.boxes, p.labels) for p in parts]
                out = mosaic(parts, self.size, rng, pad_value=self.border_value)
                output_size = (self.size, self.size)
            else:
                out = letterbox(out, self.size, pad_value=None)  # warp at the output resolution: cheaper
                output_size = out.image.shape[:2]
            out = random_affine(
                out, rng, self.scale, self.rotate, self.translate, self.shear, output_size, self.border_value
            )
            if self.mixup:
                out = mixup(out, DetectionSample.from_any(extra_samples[-1]), rng, self.size, self.mixup_ratio,
                            pad_value=self.border_value)
        out = DetectionSample(hsv_jitter(out.image, rng, self.hue, self.saturation, self.value), out.boxes, out.labels, out.masks)
        out = horizontal_flip(out, rng, self.flip_prob)
        out = letterbox(out, self.size, self.pad_value)
        w, h = out.boxes[:, 2] - out.boxes[:, 0], out.boxes[:, 3] - out.boxes[:, 1]
        return out.select((w >= self.min_box_size) & (h >= self.min_box_size))
