"""Detect and segment one image: the one implementation behind every backend's ``predict``.

The stages, in order (names as in ``Results.speed`` and ``powersam bench``):

==============  ====================================================================================================
preprocess      load the image (:func:`powersam.io.load_image`) and build the network inputs (backend:
                resize-longest-side, normalise, zero-pad; a decoupled model's detector input too)
encoder …       the backend's detection stages: ``encoder`` + ``bbpg`` + ``detect`` (PyTorch integrated),
                ``det_preprocess`` + ``detector`` + ``detect`` + ``encoder`` (PyTorch decoupled), or ``network``
                (an exported graph that detects and decodes in one call)
decoder         prompt encoder + mask decoder for the kept boxes (single-mask output) → N×1×s×s low-res logits
postprocess     upsample the logits to the original image and threshold, one mask at a time and only where the mask
                can be set (:mod:`powersam.inference.upsample`), into :class:`~powersam.masks.CompactMasks`
                (run lengths, never N full-resolution planes); boxes back to original pixels
==============  ====================================================================================================

A backend (:class:`DetectBackend`) only runs networks and converts arrays; argument checks, the class filter, box
rescaling, empty results and timings are here. NumPy only: the torch-free runtime uses this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from ..io import load_image
from ..masks import CompactMasks
from ..results import Results
from .timing import StageTimer
from .direct_upsample import masks_from_low_res
from .upsample import masks_from_input_logits

__all__ = ["MIN_IMAGE_SIDE", "DetectBackend", "Detections", "ImageTooSmall", "check_detection_args",
           "check_image_side", "class_filter", "compact_masks", "detect_and_segment"]

Size = tuple[int, int]

#: Shortest image side (pixels) that detection accepts by default. A smaller image is blown up tens to a thousand
#: times to the network input: a 1×1 image is one flat colour at 1024×1024, and what the detector "finds" there are
#: confident boxes whose masks are empty at the image's own resolution. Pass ``min_side=0`` to run anyway.
MIN_IMAGE_SIDE = 16


class ImageTooSmall(ValueError):
    """The image is smaller than the ``min_side`` that detection needs (see :data:`MIN_IMAGE_SIDE`)."""


@dataclass
class Detections:
    """What a backend's detection stages found in one image, in the **input frame** (the resized, unpadded image).

    Attributes:
        boxes: N×4 float32 xyxy, clamped to ``input_size`` (the mask decoder only sees the real image area).
        scores: N float32, highest first.
        labels: N int64 class indices.
        input_size: (h, w) of the resized image inside the S×S network input.
        state: whatever the backend needs to decode masks later (the image embedding, or the graph's mask logits).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    input_size: Size
    state: Any = None


class DetectBackend(Protocol):
    """The tensor-level half of a detect-and-segment model (PyTorch module, ONNX Runtime session, TensorRT engine)."""

    class_names: list[str]

    def detection_defaults(self) -> tuple[float, float, int]:
        """(conf, iou, max_det) used where the caller passes None."""

    def detect(self, rgb: np.ndarray, conf: float, iou: float, max_det: int, timer: StageTimer) -> Detections:
        """H×W×3 uint8 RGB → :class:`Detections`, timing its own stages (``preprocess``, ``encoder`` …) on ``timer``."""

    def decode(self, detections: Detections, keep: np.ndarray) -> Any:
        """Low-res mask logits K×1×s×s (backend array) of the detections at indices ``keep`` (K int64)."""

    def upsample(self, low_res: Any, input_size: Size, original_size: Size) -> np.ndarray:
        """K×1×s×s logits → K×1×H×W bool masks at the original resolution (NumPy). The pipeline calls it one
        mask at a time, and only for a backend without ``input_logits``."""

    # Optional (the built-in backends have them): the mask threshold and either the low-res logits as NumPy with
    # the padded square of the first upsampling step (the pipeline then upsamples each mask in one composed pass,
    # only where it can be set: :mod:`powersam.inference.direct_upsample`), or the first, cheap upsampling step
    # (the pipeline then does the second step itself, per mask, on that rectangle).
    #   mask_threshold: float
    #   def low_res_numpy(self, low_res: Any) -> tuple[np.ndarray, Optional[int]]:
    #       """K×1×s×s logits → (K×s×s float32 NumPy, S of the padded input square; None: squashed input)."""
    #   def input_logits(self, low_res: Any, input_size: Size) -> np.ndarray:
    #       """K×1×s×s logits → K×h×w float32 NumPy logits of the input frame (bilinear to the padded S×S input,
    #       padding cropped)."""


def check_detection_args(
    conf: Optional[float], iou: Optional[float], max_det: Optional[int], defaults: tuple[float, float, int]
) -> tuple[float, float, int]:
    """Fill None from ``defaults`` and validate: conf and iou in [0, 1], max_det >= 0 (ValueError otherwise)."""
    conf = defaults[0] if conf is None else float(conf)
    iou = defaults[1] if iou is None else float(iou)
    max_det = defaults[2] if max_det is None else int(max_det)
    if not 0.0 <= conf <= 1.0 or not 0.0 <= iou <= 1.0:
        raise ValueError(f"conf and iou must be in [0, 1], got conf={conf}, iou={iou}")
    if max_det < 0:
        raise ValueError(f"max_det must be >= 0, got {max_det}")
    return conf, iou, max_det


def class_filter(classes: Optional[Sequence[str]], class_names: Sequence[str]) -> Optional[set[int]]:
    """Class indices of the names in ``classes`` (None: keep all); ValueError naming unknown classes."""
    if classes is None:
        return None
    unknown = [c for c in classes if c not in class_names]
    if unknown:
        raise ValueError(f"unknown class name(s) {unknown}; this model knows {list(class_names)}")
    return {list(class_names).index(c) for c in classes}


def check_image_side(original_size: Sequence[int], min_side: Optional[int]) -> int:
    """``min_side`` (None: :data:`MIN_IMAGE_SIDE`) after checking that the H×W image reaches it on both sides;
    :class:`ImageTooSmall` naming the size otherwise, ValueError for a negative ``min_side``."""
    min_side = MIN_IMAGE_SIDE if min_side is None else int(min_side)
    if min_side < 0:
        raise ValueError(f"min_side must be >= 0 (0: no minimum); got {min_side}")
    height, width = (int(v) for v in original_size)
    if min(height, width) < min_side:
        raise ImageTooSmall(
            f"the image is {width}×{height} pixels (W×H); detection needs at least {min_side} pixels on each side "
            f"(min_side={min_side}): a smaller image is upscaled so far that the detector only finds noise, with "
            "empty masks. Pass min_side=0 (CLI: --min-side 0) to detect on it anyway")
    return min_side


def boxes_to_original(boxes: np.ndarray, input_size: Sequence[int], original_size: Sequence[int]) -> np.ndarray:
    """N×4 input-frame xyxy → original pixels (float32), clipped to the image. The per-axis factors are the exact
    resize ratios h/H and w/W (what :class:`~powersam.transforms.ResizeLongestSide` applies)."""
    sy, sx = input_size[0] / original_size[0], input_size[1] / original_size[1]
    to_original = np.array([1 / sx, 1 / sy, 1 / sx, 1 / sy], dtype=np.float32)
    out = boxes.astype(np.float32) * to_original
    h, w = original_size
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def compact_masks(backend: DetectBackend, low_res: Any, input_size: Size, original_size: Size,
                  chunk_bytes: int = 64 * 2**20, out: Optional[CompactMasks] = None) -> CompactMasks:
    """K×1×s×s low-res logits (backend array) → :class:`CompactMasks` at the original resolution, one mask at a
    time and only where it can be set: in one composed pass from the backend's ``low_res_numpy``
    (:mod:`powersam.inference.direct_upsample`), else a bounded chunk of masks through its ``input_logits`` and the
    second step per mask (:mod:`powersam.inference.upsample`). A backend with neither has its ``upsample`` called
    one mask at a time (one full-resolution plane at a time). The masks are appended to ``out`` when given."""
    masks = CompactMasks(original_size) if out is None else out
    total = int(low_res.shape[0])
    threshold = float(getattr(backend, "mask_threshold", 0.0))
    if callable(getattr(backend, "low_res_numpy", None)):
        logits, square = backend.low_res_numpy(low_res)
        return masks_from_low_res(logits, input_size, original_size, square, threshold, out=masks)
    if not callable(getattr(backend, "input_logits", None)):
        for i in range(total):
            mask = np.asarray(backend.upsample(low_res[i : i + 1], input_size, original_size))[0, 0]
            masks.append_crop(mask, 0, 0)
        return masks
    chunk = max(1, chunk_bytes // (4 * max(1, max(int(input_size[0]), int(input_size[1])) ** 2)))  # S×S each
    for start in range(0, total, chunk):
        logits = backend.input_logits(low_res[start : start + chunk], input_size)
        masks_from_input_logits(logits, original_size, threshold, out=masks)
    return masks


def detect_and_segment(
    backend: DetectBackend,
    image: Any,
    conf: Optional[float] = None,
    iou: Optional[float] = None,
    max_det: Optional[int] = None,
    classes: Optional[Sequence[str]] = None,
    timer: Optional[StageTimer] = None,
    min_side: Optional[int] = None,
) -> Results:
    """Detect every object in ``image`` (path, PIL image or H×W×3 array) and segment each one → :class:`Results`
    with boxes in original pixels, compact masks (:class:`~powersam.masks.CompactMasks`; ``Results.masks`` gives
    them as N×H×W bool on demand) and ``speed`` (milliseconds per stage).

    Memory does not grow with full-resolution planes: masks are upsampled and encoded one at a time, so the peak
    is the image plus one mask's crop (at most H×W bool) and a bounded float32 strip, whatever the detection count.

    An image with a side under ``min_side`` pixels (None: :data:`MIN_IMAGE_SIDE`; 0: no minimum) raises
    :class:`ImageTooSmall` before any network runs. Detections whose mask is empty at the original resolution are
    kept and flagged in :attr:`Results.empty_masks`.
    """
    conf, iou, max_det = check_detection_args(conf, iou, max_det, backend.detection_defaults())
    wanted = class_filter(classes, backend.class_names)
    timer = timer if timer is not None else StageTimer()
    path = str(image) if isinstance(image, (str, Path)) else None
    with timer("preprocess"):
        rgb = load_image(image)
    original_size = rgb.shape[:2]
    check_image_side(original_size, min_side)
    dets = backend.detect(rgb, conf, iou, max_det, timer)
    keep = np.arange(len(dets.boxes), dtype=np.int64)
    if wanted is not None:
        keep = keep[np.isin(dets.labels, sorted(wanted))]
    if keep.size == 0:
        empty = Results.empty(original_size, backend.class_names, image_path=path)
        empty.speed = dict(timer.ms)
        return empty
    with timer("decoder"):
        low_res = backend.decode(dets, keep)
    with timer("postprocess"):
        masks = compact_masks(backend, low_res, dets.input_size, original_size)
        boxes = boxes_to_original(dets.boxes[keep], dets.input_size, original_size)
    return Results(
        boxes=boxes,
        scores=dets.scores[keep].astype(np.float32),
        labels=dets.labels[keep].astype(np.int64),
        masks=masks,
        class_names=list(backend.class_names),
        orig_shape=tuple(original_size),
        image_path=path,
        speed=dict(timer.ms),
    )
