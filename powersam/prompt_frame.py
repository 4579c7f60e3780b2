"""Prompt handling shared by the PyTorch :class:`~powersam.predictor.SamPredictor` and the torch-free
:class:`~powersam.runtime.predictor.OnnxSamPredictor`: mapping prompts into the model input frame, clipping
boxes, and argument checks. NumPy only, so the edge runtime can use it without torch."""
from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import numpy as np

Size = tuple[int, int]
VALID_POINT_LABELS = (-1, 0, 1)  # -1 padding / ignored, 0 background, 1 foreground


def check_shape(name: str, array: np.ndarray, expected: Sequence[Optional[int]], description: str) -> None:
    """Raise ValueError unless ``array.shape`` matches ``expected`` (None = any size)."""
    if array.ndim != len(expected) or any(e is not None and e != s for e, s in zip(expected, array.shape)):
        raise ValueError(f"{name} must have shape {description}; got shape {tuple(array.shape)}")


class PromptFrameMixin:
    """Image state (embedding, sizes) and prompt mapping of a predictor; the embedding is a torch tensor or a
    NumPy array depending on the predictor. Needs ``self._warned_clipping`` from the predictor using it."""

    _warned_clipping: bool

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @property
    def original_size(self) -> Optional[Size]:
        return self._original_size

    @property
    def input_size(self) -> Optional[Size]:
        return self._input_size

    @property
    def features(self) -> Any:
        """The current image embedding (1×C×h×w), or None."""
        return self._embedding

    @property
    def multiscale_features(self) -> Optional[tuple[Any, ...]]:
        return self._multiscale_features

    #: Attributes that hold the current image (see :meth:`image_state`); a predictor with more adds its own.
    _IMAGE_STATE_ATTRS: tuple[str, ...] = ("_embedding", "_multiscale_features", "_original_size", "_input_size")

    def image_state(self) -> dict[str, Any]:
        """The current image's state (embedding, features, sizes), to put back later with
        :meth:`restore_image_state` without running the encoder again (e.g. a server keeping several images'
        embeddings). The arrays are shared with the predictor, not copied."""
        self._require_image()
        return {name: getattr(self, name) for name in self._IMAGE_STATE_ATTRS}

    def restore_image_state(self, state: dict[str, Any]) -> None:
        """Make the image of an earlier :meth:`image_state` the current one."""
        missing = [name for name in self._IMAGE_STATE_ATTRS if name not in state]
        if missing:
            raise ValueError(f"image state lacks {missing}; pass what image_state() returned")
        for name in self._IMAGE_STATE_ATTRS:
            setattr(self, name, state[name])

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self._embedding: Any = None
        self._multiscale_features: Optional[tuple[Any, ...]] = None
        self._original_size: Optional[Size] = None
        self._input_size: Optional[Size] = None

    def _to_input_frame(self, coords: np.ndarray) -> np.ndarray:
        """Scale (x, y) pairs in the last dimension (points ...×2 or boxes ...×4) to the input frame.

        Done in float64 NumPy, like segment-anything's ``apply_coords``, so the float32 prompts match it
        exactly. The ratio ``input_size / original_size`` equals ResizeLongestSide's for images set here."""
        (orig_h, orig_w), (in_h, in_w) = self._original_size, self._input_size
        shape = coords.shape
        pairs = coords.reshape(*shape[:-1], -1, 2) * np.array([in_w / orig_w, in_h / orig_h])
        return pairs.reshape(shape)

    def _clip_boxes(self, boxes: np.ndarray) -> np.ndarray:
        height, width = self._original_size
        clipped = boxes.copy()
        clipped[:, 0::2] = np.clip(boxes[:, 0::2], 0.0, float(width))
        clipped[:, 1::2] = np.clip(boxes[:, 1::2], 0.0, float(height))
        degenerate = np.flatnonzero((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
        if degenerate.size:
            i = int(degenerate[0])
            raise ValueError(
                f"box {i} {boxes[i].tolist()} has zero width or height after clipping to the image "
                f"(W={width}, H={height}): {clipped[i].tolist()}; {degenerate.size} degenerate box(es) in total"
            )
        if not self._warned_clipping and not np.array_equal(clipped, boxes):
            self._warned_clipping = True
            warnings.warn(
                f"boxes outside the {width}×{height} image were clipped to it (warned once per predictor)",
                UserWarning,
                stacklevel=3,
            )
        return clipped

    def _warn_points_outside(self, point_coords: np.ndarray, point_labels: np.ndarray) -> None:
        """Warn (once per predictor) about clicks outside the image: they are used as given, like SAM does, but
        are almost always a coordinate mix-up (x/y swapped, another image's size)."""
        height, width = self._original_size
        real = point_labels != -1  # padding points carry no position
        x, y = point_coords[..., 0], point_coords[..., 1]
        outside = real & ((x < 0) | (y < 0) | (x > width) | (y > height))
        if outside.any() and not getattr(self, "_warned_points", False):
            self._warned_points = True
            first = point_coords[outside][0].tolist()
            warnings.warn(f"{int(outside.sum())} point(s) lie outside the {width}×{height} image (e.g. {first}); "
                          "they are used as given (x is the column, y the row; warned once per predictor)",
                          UserWarning, stacklevel=3)

    @staticmethod
    def _single_prompt_as_batch(point_coords, point_labels, box, mask_input, mask_size: int, as_float):
        """``predict``'s one prompt set → the 1-prompt batch ``predict_batch`` takes:
        (boxes 1×4, point_coords 1×K×2, point_labels 1×K, mask_input 1×1×s×s), absent kinds None."""
        if box is not None:
            box = as_float("box", box)
            if box.shape not in ((4,), (1, 4)):
                raise ValueError(f"box must have shape (4,) or (1, 4) xyxy; got shape {tuple(box.shape)}")
            box = box.reshape(1, 4)
        if mask_input is not None:
            mask_input = as_float("mask_input", mask_input)
            check_shape("mask_input", mask_input, (1, mask_size, mask_size), f"1×{mask_size}×{mask_size}")
            mask_input = mask_input[None]
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if point_coords is not None:
            point_coords = as_float("point_coords", point_coords)
            check_shape("point_coords", point_coords, (None, 2), "N×2")
            point_coords = point_coords[None]
            point_labels = np.asarray(point_labels)
            check_shape("point_labels", point_labels, (point_coords.shape[1],), f"({point_coords.shape[1]},)")
            point_labels = point_labels[None]
        return box, point_coords, point_labels, mask_input

    def _validate_batch_prompts(self, boxes, point_coords, point_labels, mask_input, mask_size: int, as_float):
        """Check N-prompt inputs (original pixels) → (boxes clipped, point_coords, point_labels, mask_input, N).

        ``as_float(name, value)`` converts one input to a finite float64 array (the torch predictor also accepts
        tensors). Every given prompt kind must have the same N; N = 0 when none is given."""
        counts: dict[str, int] = {}
        if boxes is not None:
            boxes = as_float("boxes", boxes)
            check_shape("boxes", boxes, (None, 4), "N×4 xyxy")
            counts["boxes"] = boxes.shape[0]
            boxes = self._clip_boxes(boxes)
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if point_coords is not None:
            point_coords = as_float("point_coords", point_coords)
            check_shape("point_coords", point_coords, (None, None, 2), "N×K×2")
            point_labels = np.asarray(point_labels)
            n, k = point_coords.shape[:2]
            check_shape("point_labels", point_labels, (n, k), f"N×K = ({n}, {k}) to match point_coords")
            if not np.isin(point_labels, VALID_POINT_LABELS).all():
                bad = sorted(set(np.unique(point_labels).tolist()) - set(VALID_POINT_LABELS))
                raise ValueError(f"point_labels must be in {{-1, 0, 1}}; got {bad}")
            counts["point_coords"] = n
            self._warn_points_outside(point_coords, point_labels)
        if mask_input is not None:
            mask_input = as_float("mask_input", mask_input)
            s = mask_size
            check_shape("mask_input", mask_input, (None, 1, s, s), f"N×1×{s}×{s}")
            counts["mask_input"] = mask_input.shape[0]
        if len(set(counts.values())) > 1:
            raise ValueError(f"prompt counts disagree: {counts}; every prompt kind needs one entry per prompt")
        return boxes, point_coords, point_labels, mask_input, next(iter(counts.values()), 0)

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image is set: call set_image first (or set_image_embedding)")

    @staticmethod
    def _check_size(name: str, size: Sequence[int]) -> Size:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a pair (H, W) of integers; got {size!r}") from None
        if h <= 0 or w <= 0:
            raise ValueError(f"{name} must be positive; got {(h, w)}")
        return h, w
