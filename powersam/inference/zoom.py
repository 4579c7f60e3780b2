"""Zoom-in box prompting: each box is decoded on a crop of the image around it, at the network's full input size.

A 2048-px inspection photo shrinks 4× into a 512 input, and 8× into 256: a pin insulator of 40 px becomes a few
cells of the decoder's quarter-resolution mask, and the mask is lost (docs/zoom.md has the numbers). Cropping a
square window of ``context`` × the box's longer side around each box and running the encoder on that crop gives
small equipment the resolution the model was trained at; the masks are pasted back into the full frame.

The cost is one encoder pass per distinct window (cached, so refinement clicks on the same box reuse it); boxes
whose window would cover most of the image share one full-frame pass. Prompts without a box (points only) have no
extent of their own: once a point prompt holds a refinement click (two points or more), it is decoded on the full
frame first and then again in the window around that answer's extent and its clicks (``points=True``, the
default); a single point stays on the full frame.

:func:`zoom_window` is the one geometry rule, shared with the training crops of
:class:`~powersam.data.zoom_crops.ZoomCrops`, so a model adapted on those crops sees the same framing here.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Iterator, Optional

import numpy as np

from ..masks import CompactMasks

Window = tuple[int, int, int, int]  # x0, y0, x1, y1 in whole pixels, exclusive end
OUTSIDE_LOGIT = -1.0e4  # mask logit returned outside a prompt's window (finite: sigmoid 0, no NaN in sums)
# A point prompt is zoomed once it holds this many points (the first point and a refinement click). A single
# point is ambiguous (a part or the whole): zooming on its first mask's extent locked onto parts and lost 2.3 points
# of single-point mIoU on the demo's held-out images, while the clicks after it gained 3-4 (docs/zoom.md).
MIN_POINTS_TO_ZOOM = 2

__all__ = ["OUTSIDE_LOGIT", "ZoomPredictor", "check_context", "covers_most_of", "zoom_window"]


def check_context(context: Any, name: str = "context") -> float:
    """``context`` as a float ≥ 1 (the window side over the box's longer side), else ValueError naming it."""
    if isinstance(context, bool) or not isinstance(context, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number >= 1 (window side / box side); got {context!r}")
    value = float(context)
    if not math.isfinite(value) or value < 1.0:
        raise ValueError(f"{name} must be a finite number >= 1 (window side / box side); got {context!r}")
    return value


def zoom_window(box: Any, image_size: tuple[int, int], context: float, min_side: int = 16) -> Window:
    """The square crop around ``box`` (x0, y0, x1, y1 pixels) in an image of ``image_size`` = (H, W).

    Side = ``context`` × the box's longer side (at least ``min_side``), centred on the box and shifted to lie
    inside the image; a side larger than the image's is cut to it (the window is then not square). The window
    always contains the part of the box that lies in the image.
    """
    height, width = int(image_size[0]), int(image_size[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, 1.0) * context
    side = max(side, float(min_side))

    def span(lo: float, hi: float, limit: int) -> tuple[int, int]:
        size = min(int(math.ceil(side)), limit)
        lo, hi = max(lo, 0.0), min(hi, float(limit))
        start = int(math.floor((lo + hi) / 2 - size / 2))
        start = min(max(start, 0), limit - size)
        start = min(start, max(int(math.floor(lo)), 0))  # keep the box inside even after rounding
        start = max(start, int(math.ceil(hi)) - size)
        return start, start + size

    wx0, wx1 = span(x0, x1, width)
    wy0, wy1 = span(y0, y1, height)
    return wx0, wy0, wx1, wy1


def covers_most_of(window: Window, image_size: tuple[int, int], full_frame_fraction: float = 0.5) -> bool:
    """True when ``window`` covers at least ``full_frame_fraction`` of the (H, W) image's area: zoom-in then uses the
    full frame instead (the rule :class:`ZoomPredictor` and the training crops of
    :class:`~powersam.data.zoom_crops.ZoomedStream` share)."""
    x0, y0, x1, y1 = window
    return (x1 - x0) * (y1 - y0) >= full_frame_fraction * int(image_size[0]) * int(image_size[1])


class ZoomPredictor:
    """Wraps any prompt predictor (:class:`~powersam.predictor.SamPredictor`, the ONNX Runtime / TensorRT ones) so
    that box prompts are decoded on a crop around each box (module docstring).

    Args:
        predictor: the wrapped predictor; it is re-pointed at each crop, so do not share it meanwhile.
        context: window side / box side (≥ 1). 4 suits box prompts on large photos (docs/zoom.md).
        full_frame_fraction: a window covering at least this share of the image's area uses the full frame.
        cache_size: encoded windows kept (refinement clicks decode the same windows again).
        points: zoom point prompts with refinement clicks on their full-frame answer (module docstring); False:
            points always use the full frame. A ``mask_input`` keeps point prompts on the full frame (the logits
            are in the frame they were decoded in).

    ``set_image`` / ``predict_batch`` follow the wrapped predictor's contract, so :func:`powersam.eval.miou.
    evaluate_miou` takes it as a ready predictor. ``low_res`` logits come back in each prompt's own window frame;
    passed back as ``mask_input`` with the same boxes they land in the same windows.
    """

    def __init__(self, predictor: Any, context: float = 4.0, full_frame_fraction: float = 0.5,
                 cache_size: int = 64, points: bool = True) -> None:
        if not (hasattr(predictor, "set_image") and hasattr(predictor, "predict_batch")):
            raise TypeError(f"ZoomPredictor wraps a predictor with set_image / predict_batch; got {type(predictor)}")
        if not 0.0 < float(full_frame_fraction) <= 1.0:
            raise ValueError(f"full_frame_fraction must lie in (0, 1]; got {full_frame_fraction!r}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"cache_size must be a positive int; got {cache_size!r}")
        self.predictor = predictor
        self.model = getattr(predictor, "model", None)  # evaluate_miou puts a module in eval mode through this
        self.context = check_context(context)
        self.full_frame_fraction = float(full_frame_fraction)
        self.cache_size = cache_size
        self.points = bool(points)
        self._image: Optional[np.ndarray] = None
        self._states: "OrderedDict[Window, dict[str, Any]]" = OrderedDict()
        self.encoder_calls = 0  # encoder passes since set_image (for reports and tests)

    @property
    def is_image_set(self) -> bool:
        return self._image is not None

    @property
    def original_size(self) -> Optional[tuple[int, int]]:
        return None if self._image is None else (int(self._image.shape[0]), int(self._image.shape[1]))

    def set_image(self, image: Any, image_format: str = "RGB", full_frame_state: Optional[dict] = None,
                  window_states: Optional[dict[Window, dict]] = None) -> None:
        """Keep ``image`` (anything the wrapped predictor loads); windows are encoded when prompts need them.
        ``full_frame_state``: the wrapped predictor's ``image_state()`` for this very image, if it has encoded it
        already (the whole-image window then costs no second encoder pass). ``window_states``: windows of this
        image encoded earlier (:meth:`window_states` of a previous wrapper, e.g. kept by a server between clicks)."""
        self._image = self.predictor._load_rgb(image, image_format)
        self._states.clear()
        self.encoder_calls = 0
        height, width = self._image.shape[:2]
        if full_frame_state is not None:
            if tuple(full_frame_state.get("_original_size") or ()) != (height, width):
                raise ValueError(f"full_frame_state is of a {full_frame_state.get('_original_size')} image, not "
                                 f"this {height}×{width} one")
            self._states[(0, 0, width, height)] = full_frame_state
        for window, state in (window_states or {}).items():
            x0, y0, x1, y1 = window
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise ValueError(f"window_states: window {window} does not lie in this {height}×{width} image")
            self._states[tuple(window)] = state

    def window_states(self, include_full_frame: bool = False) -> dict[Window, dict]:
        """The encoded windows' predictor states, least recently used first (for :meth:`set_image` later)."""
        height, width = self.original_size or (0, 0)
        return {w: s for w, s in self._states.items() if include_full_frame or w != (0, 0, width, height)}

    def window_of(self, box: Any) -> Window:
        """The window a box prompt is decoded in (the full frame when the zoom would cover most of it)."""
        height, width = self.original_size
        window = zoom_window(box, (height, width), self.context)
        if covers_most_of(window, (height, width), self.full_frame_fraction):
            return 0, 0, width, height
        return window

    def _use_window(self, window: Window) -> None:
        if window in self._states:
            self._states.move_to_end(window)
            self.predictor.restore_image_state(self._states[window])
            return
        x0, y0, x1, y1 = window
        self.predictor.set_image(np.ascontiguousarray(self._image[y0:y1, x0:x1]))
        self.encoder_calls += 1
        self._states[window] = self.predictor.image_state()
        if len(self._states) > self.cache_size:
            self._states.popitem(last=False)

    def _parts(self, method: str, boxes: Any, point_coords: Any, point_labels: Any, mask_input: Any,
               **kwargs: Any) -> Iterator[tuple[Window, list[int], Any]]:
        """Call the wrapped predictor's ``method`` once per window with that window's prompts shifted into it:
        yields ``(window, prompt rows, its result)``; no prompts at all go to the whole image as they are."""
        if self._image is None:
            raise RuntimeError(f"call set_image(...) before {method}(...)")
        height, width = self.original_size
        full = (0, 0, width, height)
        counts = {len(a) for a in (boxes, point_coords, point_labels, mask_input) if a is not None}
        if len(counts) > 1:
            raise ValueError(f"boxes, point_coords, point_labels and mask_input must have the same length N; "
                             f"got lengths {sorted(counts)}")
        if not counts or 0 in counts:  # nothing to zoom on: the wrapped predictor's own answer (and errors)
            self._use_window(full)
            yield full, [], getattr(self.predictor, method)(boxes=boxes, point_coords=point_coords,
                                                            point_labels=point_labels, mask_input=mask_input, **kwargs)
            return
        n = counts.pop()
        boxes = None if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(n, 4)
        groups: "OrderedDict[Window, list[int]]" = OrderedDict()
        clicks_only = boxes is None and mask_input is None and point_coords is not None and point_labels is not None
        if self.points and clicks_only:
            windows = self._point_windows(np.asarray(point_coords, np.float64).reshape(n, -1, 2),
                                          np.asarray(point_labels).reshape(n, -1),
                                          kwargs.get("multimask_output", False), kwargs.get("chunk_size", 64))
        else:
            windows = [full if boxes is None else self.window_of(boxes[i]) for i in range(n)]
        for i, window in enumerate(windows):
            groups.setdefault(window, []).append(i)
        for window, rows in groups.items():
            shift = np.array(window[:2], dtype=np.float64)
            self._use_window(window)
            yield window, rows, getattr(self.predictor, method)(
                boxes=None if boxes is None else boxes[rows] - np.tile(shift, 2),
                point_coords=None if point_coords is None else np.asarray(point_coords, np.float64)[rows] - shift,
                point_labels=None if point_labels is None else np.asarray(point_labels)[rows],
                mask_input=None if mask_input is None else np.asarray(mask_input)[rows], **kwargs)

    def _point_windows(self, point_coords: np.ndarray, point_labels: np.ndarray, multimask_output: Any,
                       chunk_size: int) -> list[Window]:
        """The window of each point prompt: one with a refinement click is decoded once on the full frame and zoomed
        on the extent of its best-scored mask together with its clicks (the full frame when that mask is empty or
        the window would cover most of it); a single point keeps the full frame without that first pass."""
        height, width = self.original_size
        full = (0, 0, width, height)
        clicks = [coords[labels >= 0] for coords, labels in zip(point_coords, point_labels)]
        probed = [i for i, c in enumerate(clicks) if len(c) >= MIN_POINTS_TO_ZOOM]
        windows = [full] * len(point_coords)
        if not probed:
            return windows
        self._use_window(full)
        compact, scores, _ = self.predictor.predict_compact(point_coords=point_coords[probed],
                                                            point_labels=point_labels[probed],
                                                            multimask_output=multimask_output, chunk_size=chunk_size)
        per_prompt = scores.shape[1]
        for k, i in enumerate(probed):
            y0, x0, y1, x1 = compact.box(k * per_prompt + int(np.argmax(scores[k])))
            if y1 <= y0:
                continue
            x0, y0 = min(x0, float(clicks[i][:, 0].min())), min(y0, float(clicks[i][:, 1].min()))
            x1, y1 = max(x1, float(clicks[i][:, 0].max()) + 1), max(y1, float(clicks[i][:, 1].max()) + 1)
            windows[i] = self.window_of((x0, y0, x1, y1))
        return windows

    def predict_batch(self, boxes: Optional[np.ndarray] = None, point_coords: Optional[np.ndarray] = None,
                      point_labels: Optional[np.ndarray] = None, mask_input: Optional[np.ndarray] = None,
                      multimask_output: Any = False, return_logits: bool = False, chunk_size: int = 64,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As the wrapped predictor's ``predict_batch``: prompts in original pixels, N×C×H×W masks in the full frame
        (outside a prompt's window: False, or the logit :data:`OUTSIDE_LOGIT` with ``return_logits``)."""
        height, width = self.original_size or (0, 0)
        masks = scores = low_res = None
        for (x0, y0, _, _), rows, part in self._parts("predict_batch", boxes, point_coords, point_labels, mask_input,
                                                       multimask_output=multimask_output, return_logits=return_logits,
                                                       chunk_size=chunk_size):
            if not rows:
                return part
            if masks is None:
                n = _prompt_count(boxes, point_coords, mask_input)
                masks = np.full((n, part[0].shape[1], height, width), OUTSIDE_LOGIT if return_logits else 0,
                                dtype=part[0].dtype)
                scores = np.zeros((n, *part[1].shape[1:]), dtype=part[1].dtype)
                low_res = np.zeros((n, *part[2].shape[1:]), dtype=part[2].dtype)
            masks[rows, :, y0 : y0 + part[0].shape[-2], x0 : x0 + part[0].shape[-1]] = part[0]
            scores[rows], low_res[rows] = part[1], part[2]
        return masks, scores, low_res

    def predict_compact(self, boxes: Optional[np.ndarray] = None, point_coords: Optional[np.ndarray] = None,
                        point_labels: Optional[np.ndarray] = None, mask_input: Optional[np.ndarray] = None,
                        multimask_output: Any = False, chunk_size: int = 64) -> tuple[CompactMasks, Any, Any]:
        """As the wrapped predictor's ``predict_compact`` (``Model.segment`` uses it): run-length masks in the full
        frame, mask ``c`` of prompt ``i`` at index ``i·C + c``; no full-frame plane is ever allocated."""
        per_mask: dict[int, tuple[int, int, np.ndarray]] = {}
        scores = low_res = None
        num_masks = 1
        for (x0, y0, _, _), rows, part in self._parts("predict_compact", boxes, point_coords, point_labels,
                                                       mask_input, multimask_output=multimask_output,
                                                       chunk_size=chunk_size):
            if not rows:
                return part
            compact, part_scores, part_low = part
            if scores is None:
                n = _prompt_count(boxes, point_coords, mask_input)
                num_masks = part_scores.shape[1]
                scores = np.zeros((n, num_masks), dtype=part_scores.dtype)
                low_res = np.zeros((n, *part_low.shape[1:]), dtype=part_low.dtype)
            scores[rows], low_res[rows] = part_scores, part_low
            for k, row in enumerate(rows):
                for c in range(num_masks):
                    cy, cx, crop = compact.crop(k * num_masks + c)
                    per_mask[row * num_masks + c] = (y0 + cy, x0 + cx, crop)
        masks = CompactMasks(self.original_size)
        for index in range(len(per_mask)):
            y, x, crop = per_mask[index]
            masks.append_crop(crop, y, x)
        return masks, scores, low_res


def _prompt_count(*arrays: Any) -> int:
    return next(len(a) for a in arrays if a is not None)
