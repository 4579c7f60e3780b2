"""Prompt sampling for training (stage 2) and evaluation: box jitter, points in masks, refinement clicks.

Conventions (shared by every function here):

* **Points** are (x, y) = (column, row) **pixel indices** as floats, SAM's convention: SAM's prompt encoder adds
  0.5 before normalising, so a point (c, r) lands on the centre of pixel (c, r). Samplers working on a coarser
  grid than the prompt frame take ``scale`` (e.g. 4 for 256² masks and 1024² prompts) and return the centre of
  the chosen cell in the prompt frame, ``(index + 0.5)·scale − 0.5`` — not its top-left corner as the reference
  does (spec §5.3 step 6).
* **Labels**: 1 = positive (foreground) click, 0 = negative (background) click, −1 = padding, "no point".
  SAM's prompt encoder gives −1 points its ``not_a_point_embed``, so padding rows can be stacked with real
  clicks (the reference emits −2, a zero token). Refinement clicks accumulate in the caller with
  :func:`append_points`; earlier points and the box prompt are kept.
* **rng**: a :class:`numpy.random.Generator`, a :class:`torch.Generator` (advanced by one draw per call) or an
  int seed; the same rng state always gives the same prompts.
* **Arrays**: NumPy arrays or torch tensors (any device; sampling runs on the CPU). Outputs follow the type
  and device of the first argument.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]
RngLike = Union[np.random.Generator, torch.Generator, int]


def as_numpy_rng(rng: RngLike) -> np.random.Generator:
    """A NumPy generator from ``rng`` (a torch generator is advanced by one draw to seed it)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, torch.Generator):
        seed = torch.randint(0, 2**62, (1,), generator=rng, device=rng.device).item()
        return np.random.default_rng(int(seed))
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator, a torch.Generator or an int seed; got {type(rng).__name__}")


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy array or a torch tensor; got {type(x).__name__}")


def _like(values: np.ndarray, reference: ArrayLike) -> ArrayLike:
    if isinstance(reference, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(values)).to(reference.device)
    return values


def _as_masks(x: ArrayLike, name: str) -> np.ndarray:
    """N×H×W boolean view of ``x`` (bool or integer 0/1; floats must be thresholded by the caller)."""
    array = _to_numpy(x, name)
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape N×H×W; got {array.shape}")
    if array.dtype == np.bool_:
        return array
    if np.issubdtype(array.dtype, np.integer):
        return array != 0
    raise TypeError(f"{name} must be bool (threshold logits first, e.g. logits > 0); got dtype {array.dtype}")


def _cv2():
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("center-mode prompt sampling needs OpenCV: pip install opencv-python-headless") from err
    return cv2


def jitter_boxes(
    boxes: ArrayLike, rng: RngLike, noise: float = 0.1, max_noise: float = 20.0,
    clip_size: Optional[Sequence[int]] = None,
) -> ArrayLike:
    """Perturb N×4 xyxy boxes like SAM's training: each coordinate moves by Gaussian noise whose std is
    ``noise`` × the box side along that axis, capped at ``max_noise`` pixels. Corners are re-ordered if
    they cross and clipped to ``clip_size`` = (H, W) when given. Returns float32 N×4."""
    array = _to_numpy(boxes, "boxes").astype(np.float32).reshape(-1, 4)
    rng = as_numpy_rng(rng)
    sides = np.stack([array[:, 2] - array[:, 0], array[:, 3] - array[:, 1]], axis=1)
    std = np.minimum(noise * np.abs(sides), max_noise)[:, [0, 1, 0, 1]]
    out = array + (rng.standard_normal(array.shape) * std).astype(np.float32)
    out = np.concatenate([np.minimum(out[:, :2], out[:, 2:]), np.maximum(out[:, :2], out[:, 2:])], axis=1)
    if clip_size is not None:
        h, w = clip_size
        out = np.clip(out, 0, np.array([w, h, w, h], dtype=np.float32))
    return _like(out, boxes)


def box_centers(boxes: ArrayLike) -> ArrayLike:
    """Centres ((x1 + x2)/2, (y1 + y2)/2) of N×4 xyxy boxes → N×2 (a common point prompt for boxes)."""
    array = _to_numpy(boxes, "boxes").astype(np.float32).reshape(-1, 4)
    return _like((array[:, :2] + array[:, 2:]) * 0.5, boxes)


def subsample_instances(num_instances: int, max_count: int, rng: RngLike) -> np.ndarray:
    """Indices of at most ``max_count`` of ``num_instances`` instances, drawn **without** replacement (the
    reference draws with replacement, so duplicates count twice), in increasing order."""
    if max_count <= 0:
        raise ValueError(f"max_count must be positive; got {max_count}")
    if num_instances <= max_count:
        return np.arange(num_instances)
    return np.sort(as_numpy_rng(rng).choice(num_instances, size=max_count, replace=False))


def _interior_most(mask: np.ndarray) -> tuple[int, int]:
    """(row, col) of the pixel farthest from the mask's outside (image borders count as outside).

    Of several equally deep pixels (a plateau, e.g. along a bar), the one nearest the plateau's mean position
    wins, so the click sits mid-way along the region rather than at its first row."""
    cv2 = _cv2()
    padded = np.pad(mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    deepest = np.argwhere(distance >= distance.max() - 1e-4)
    nearest = np.argmin(((deepest - deepest.mean(axis=0)) ** 2).sum(axis=1))  # first on ties: deterministic
    row, col = deepest[nearest]
    return int(row), int(col)


def _nearest_to_centroid(mask: np.ndarray) -> tuple[int, int]:
    """(row, col) of the mask pixel nearest the mask's centroid (the mean of its pixel positions).

    The centroid itself may lie outside a non-convex mask (a U, a ring); the returned pixel is always inside.
    Ties (equal distances) go to the first pixel in row-major order, so the choice is deterministic."""
    pixels = np.argwhere(mask)
    centroid = pixels.mean(axis=0)
    row, col = pixels[np.argmin(((pixels - centroid) ** 2).sum(axis=1))]
    return int(row), int(col)


POINT_MODES = ("random", "center", "mask-center")


def _to_frame(rows_cols: np.ndarray, scale: float) -> np.ndarray:
    """(row, col) indices → (x, y) points at the centre of the cell in a frame ``scale`` times larger."""
    return ((rows_cols[..., ::-1].astype(np.float64) + 0.5) * scale - 0.5).astype(np.float32)


def sample_points_in_masks(
    masks: ArrayLike, rng: RngLike, k: int = 1, mode: str = "random", scale: float = 1.0
) -> tuple[ArrayLike, ArrayLike]:
    """Positive point prompts inside each mask.

    Args:
        masks: N×H×W bool.
        k: points per mask ("random": distinct pixels while the mask has ≥ k of them; "center" and
            "mask-center": k must be 1).
        mode: "random" (uniform over the mask), "center" (the interior-most pixel, the maximum of a
            distance transform; of equally deep pixels the one nearest their mean position) or "mask-center"
            (the mask pixel nearest the mask's centroid, which itself may lie outside a non-convex mask; ties go
            to the first in row-major order).
        scale: see the module docstring.

    Returns:
        coords N×k×2 float32 (x, y) and labels N×k int64: 1, or −1 (padding, coords 0) for an empty mask.
    """
    if mode not in POINT_MODES:
        raise ValueError(f"mode must be one of {', '.join(repr(m) for m in POINT_MODES)}; got {mode!r}")
    if k < 1 or (mode != "random" and k != 1):
        raise ValueError(f"k must be >= 1 (and 1 for mode={mode!r}); got {k}")
    array = _as_masks(masks, "masks")
    rng = as_numpy_rng(rng)
    n, _, width = array.shape
    rows_cols = np.zeros((n, k, 2), dtype=np.int64)
    labels = np.full((n, k), -1, dtype=np.int64)
    for i in range(n):
        if mode != "random":
            if array[i].any():
                rows_cols[i, 0] = (_interior_most if mode == "center" else _nearest_to_centroid)(array[i])
                labels[i] = 1
            continue
        pixels = np.flatnonzero(array[i])
        if len(pixels) == 0:
            continue
        chosen = rng.choice(pixels, size=k, replace=len(pixels) < k)
        rows_cols[i] = np.stack(np.divmod(chosen, width), axis=1)
        labels[i] = 1
    coords = np.where(labels[..., None] == 1, _to_frame(rows_cols, scale), 0.0).astype(np.float32)
    return _like(coords, masks), _like(labels, masks)


def _largest_error_component(fn: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, int]:
    """The biggest 8-connected component among the FN and FP regions and its click label (FN wins ties)."""
    cv2 = _cv2()
    best, best_area, best_label = None, 0, -1
    for region, label in ((fn, 1), (fp, 0)):
        if not region.any():
            continue
        count, components, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        index = int(np.argmax(areas))
        if areas[index] > best_area:
            best, best_area, best_label = components == index + 1, int(areas[index]), label
    return best, best_label


def sample_refinement_clicks(
    pred: ArrayLike, target: ArrayLike, rng: RngLike, valid: Optional[ArrayLike] = None, mode: str = "random",
    min_error_pixels: int = 10, scale: float = 1.0,
) -> tuple[ArrayLike, ArrayLike]:
    """One corrective click per instance from the error between a prediction and its target.

    False negatives (target 1, pred 0) give a positive click (label 1); false positives (pred 1, target 0) a
    negative one (label 0). Pixels outside ``valid`` (e.g. the image padding) are never errors.

    Args:
        pred, target: N×H×W bool (threshold logits first: ``logits > 0``).
        valid: H×W or N×H×W bool, optional.
        mode: "random" — a pixel drawn uniformly from FP ∪ FN (the reference rule, spec §5.3); "center" — the
            interior-most pixel of the largest 8-connected FN or FP component (the usual interactive
            segmentation protocol).
        min_error_pixels: with fewer error pixels than this, no click (label −1).
        scale: see the module docstring.

    Returns:
        coords N×2 float32 (x, y) and labels N int64 in {1, 0, −1}; −1 rows have coords (0, 0).
    """
    if mode not in ("random", "center"):
        raise ValueError(f"mode must be 'random' or 'center'; got {mode!r}")
    pred_np, target_np = _as_masks(pred, "pred"), _as_masks(target, "target")
    if pred_np.shape != target_np.shape:
        raise ValueError(f"pred and target must have the same N×H×W shape; got {pred_np.shape} and {target_np.shape}")
    fn, fp = target_np & ~pred_np, pred_np & ~target_np
    if valid is not None:
        valid_np = _to_numpy(valid, "valid").astype(bool)
        if valid_np.shape not in (pred_np.shape[1:], pred_np.shape):
            raise ValueError(f"valid must be H×W or N×H×W for masks of shape {pred_np.shape}; got {valid_np.shape}")
        fn, fp = fn & valid_np, fp & valid_np
    rng = as_numpy_rng(rng)
    n, _, width = pred_np.shape
    rows_cols = np.zeros((n, 2), dtype=np.int64)
    labels = np.full(n, -1, dtype=np.int64)
    error_counts = fn.sum(axis=(1, 2)) + fp.sum(axis=(1, 2))
    for i in np.flatnonzero(error_counts >= max(min_error_pixels, 1)):
        if mode == "random":
            pixel = int(rng.choice(np.flatnonzero(fn[i] | fp[i])))
            rows_cols[i] = divmod(pixel, width)
            labels[i] = 1 if fn[i].flat[pixel] else 0
        else:
            component, labels[i] = _largest_error_component(fn[i], fp[i])
            rows_cols[i] = _interior_most(component)
    coords = np.where(labels[:, None] >= 0, _to_frame(rows_cols, scale), 0.0).astype(np.float32)
    return _like(coords, pred), _like(labels, pred)


def append_points(
    coords: Optional[ArrayLike], labels: Optional[ArrayLike], new_coords: ArrayLike, new_labels: ArrayLike
) -> tuple[ArrayLike, ArrayLike]:
    """Accumulate clicks: N×P×2 / N×P (or None for none yet) plus N×2 / N → N×(P+1)×2 / N×(P+1)."""
    if isinstance(new_coords, torch.Tensor):
        new_coords, new_labels = new_coords[:, None, :], new_labels[:, None]
        if coords is None:
            return new_coords, new_labels
        return torch.cat([coords, new_coords.to(coords)], dim=1), torch.cat([labels, new_labels.to(labels)], dim=1)
    new_coords, new_labels = np.asarray(new_coords)[:, None, :], np.asarray(new_labels)[:, None]
    if coords is None:
        return new_coords, new_labels
    return np.concatenate([coords, new_coords], axis=1), np.concatenate([labels, new_labels], axis=1)
