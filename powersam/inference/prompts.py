"""Interactive prompting: the one implementation behind every backend's ``predict`` / ``predict_batch``.

:class:`PromptPipeline` owns what does not depend on the backend: loading the image, checking prompts (see
:class:`~powersam.prompt_frame.PromptFrameMixin`), mapping them into the input frame, the no-prompt case, allocating
the outputs and decoding ``chunk_size`` prompts at a time. A backend subclass supplies four tensor-level hooks:

* ``_encode(rgb, timer) -> None``: build the network input under ``timer("preprocess")``, run the image encoder under
  ``timer("encoder")`` and call :meth:`set_image_embedding` (the stored embedding is a backend array: a torch tensor
  on the device, or a NumPy array);
* ``_decode_prompts(boxes, point_coords, point_labels, mask_input, multimask_output) -> (low_res B×C×s×s,
  scores B×C)`` on **input-frame** NumPy prompts (any may be None), as backend arrays;
* ``_upsample_into(low_res, out, return_logits)``: write B×C×H×W masks (bool, or float32 logits) into the NumPy
  array ``out`` at the original resolution;
* ``_num_outputs(multimask_output) -> int`` and ``_mask_input_size() -> int`` (s);
* optionally ``input_logits(low_res K×1×s×s, input_size) -> K×h×w`` float32 NumPy (the first, cheap upsampling step,
  as the detect backends have it) and ``mask_threshold``: :meth:`PromptPipeline.predict_compact` then upsamples each
  mask only where it can be set (:mod:`powersam.inference.upsample`); without them it calls ``_upsample_into`` one
  prompt at a time.

:meth:`PromptPipeline.predict_batch` returns N×C×H×W planes (segment-anything's contract);
:meth:`PromptPipeline.predict_compact` returns :class:`~powersam.masks.CompactMasks` instead, so memory does not grow
with N full-resolution planes (``Model.segment``, ``powersam predict --boxes`` and ``/v1/segment`` use it).

Stage timings: :meth:`PromptPipeline.set_image` and :meth:`PromptPipeline.predict_batch` take an optional
:class:`~powersam.inference.timing.StageTimer` and time ``preprocess``, ``encoder``, ``decoder`` (prompt encoder + mask
decoder) and ``postprocess`` (upsampling to the original image) on it, the names ``powersam bench`` reports.

NumPy only: the torch-free runtime's :class:`~powersam.runtime.OnnxSamPredictor` is one of the subclasses.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

from ..io import ImageSource, load_image
from ..masks import CompactMasks
from ..prompt_frame import PromptFrameMixin
from ..results import Results
from .detect import compact_masks
from .timing import StageTimer

__all__ = ["PROMPT_CLASS_NAMES", "PromptPipeline", "as_finite_float", "prompt_results"]


PROMPT_CLASS_NAMES: tuple[str, ...] = ("object",)

Multimask = Union[bool, int]


def as_finite_float(name: str, value: object) -> np.ndarray:
    """``value`` as a float64 array; ValueError naming ``name`` if it holds NaN or infinity."""
    array = np.asarray(value, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def check_multimask(multimask_output: Any) -> Any:
    """``multimask_output`` if it is a bool or a mask count of 1, 3 or 4, else ValueError naming the value (a
    negative count reached the decoder as "negative dimensions are not allowed")."""
    if isinstance(multimask_output, (bool, np.bool_)):
        return multimask_output
    if isinstance(multimask_output, (int, np.integer)) and int(multimask_output) in (1, 3, 4):
        return int(multimask_output)
    raise ValueError(f"multimask_output must be True/False or a mask count of 1, 3 or 4; got {multimask_output!r}")


class PromptPipeline(PromptFrameMixin):
    """Shared ``set_image`` / ``predict`` / ``predict_batch`` of the interactive predictors (see the module doc)."""

    # Converts one prompt input to a finite float64 array; the torch predictor also accepts tensors.
    _as_float: Callable[[str, object], np.ndarray] = staticmethod(as_finite_float)

    # ------------------------------------------------------------------ backend hooks
    def _encode(self, rgb: np.ndarray, timer: StageTimer) -> None:
        raise NotImplementedError

    def _decode_prompts(
        self,
        boxes: Optional[np.ndarray],
        point_coords: Optional[np.ndarray],
        point_labels: Optional[np.ndarray],
        mask_input: Optional[np.ndarray],
        multimask_output: Multimask,
    ) -> tuple[Any, Any]:
        raise NotImplementedError

    def _upsample_into(self, low_res: Any, out: np.ndarray, return_logits: bool) -> None:
        raise NotImplementedError

    def _num_outputs(self, multimask_output: Multimask) -> int:
        raise NotImplementedError

    def _mask_input_size(self) -> int:
        raise NotImplementedError

    @staticmethod
    def _to_numpy(array: Any) -> np.ndarray:
        """A backend array as float32 NumPy (torch tensors are moved to the CPU by the subclass's override)."""
        return np.asarray(array, dtype=np.float32)

    # ------------------------------------------------------------------ image
    @staticmethod
    def _load_rgb(image: ImageSource, image_format: str = "RGB") -> np.ndarray:
        """``image`` → H×W×3 uint8 RGB; ``image_format="BGR"`` flips a NumPy array's channels (files and PIL images
        always load as RGB)."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR'; got {image_format!r}")
        if image_format == "BGR" and not isinstance(image, np.ndarray):
            raise ValueError("image_format='BGR' only applies to numpy arrays; files and PIL images load as RGB")
        rgb = load_image(image)
        if image_format == "BGR":
            rgb = np.ascontiguousarray(rgb[..., ::-1])
        return rgb

    def set_image(self, image: ImageSource, image_format: str = "RGB", timer: Optional[StageTimer] = None) -> None:
        """Run the image encoder once on ``image`` (anything :func:`powersam.io.load_image` accepts).

        ``image_format`` ("RGB" or "BGR") describes the channel order of an ndarray input; files and PIL
        images are always decoded as RGB, so "BGR" is only accepted for arrays. ``timer`` (optional) receives the
        ``preprocess`` (loading included) and ``encoder`` milliseconds.
        """
        timer = timer if timer is not None else StageTimer()
        with timer("preprocess"):
            rgb = self._load_rgb(image, image_format)
        self._encode(rgb, timer)

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: Multimask = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for one prompt set (same semantics as segment-anything's ``SamPredictor.predict``).

        Args:
            point_coords: N×2 (x, y) points in original pixels; needs ``point_labels``.
            point_labels: N labels, 1 foreground, 0 background, -1 ignored.
            box: length-4 xyxy box in original pixels (1×4 accepted); clipped to the image like
                :meth:`predict_batch`.
            mask_input: 1×s×s low-res logits from a previous call (s = 256 for SAM at 1024).
            multimask_output: True → 3 masks (C=3), False → 1. PowerSAM's decoder also accepts an int mask
                count (1, 3 or 4 = all tokens); segment-anything's only takes a bool.
            return_logits: return float logits instead of bool masks.

        Returns:
            ``(masks C×H×W bool or float32, iou_scores C float32, low_res_logits C×s×s float32)``.
        """
        self._require_image()
        check_multimask(multimask_output)
        box, point_coords, point_labels, mask_input = self._single_prompt_as_batch(
            point_coords, point_labels, box, mask_input, self._mask_input_size(), self._as_float
        )
        masks, scores, low_res = self.predict_batch(
            boxes=box, point_coords=point_coords, point_labels=point_labels, mask_input=mask_input,
            multimask_output=multimask_output, return_logits=return_logits,
        )
        if masks.shape[0] == 0:  # no prompt at all: SAM still decodes once with only the output tokens
            low_res_b, scores_b = self._decode_prompts(None, None, None, None, multimask_output)
            height, width = self._original_size
            masks = np.empty((1, low_res_b.shape[1], height, width), dtype=np.float32 if return_logits else np.bool_)
            self._upsample_into(low_res_b, masks, return_logits)
            scores, low_res = self._to_numpy(scores_b), self._to_numpy(low_res_b)
        return masks[0], scores[0], low_res[0]

    def predict_batch(
        self,
        boxes: Optional[np.ndarray] = None,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: Multimask = False,
        return_logits: bool = False,
        chunk_size: int = 64,
        timer: Optional[StageTimer] = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict one mask set per prompt for N prompts, decoding ``chunk_size`` prompts at a time.

        Args:
            boxes: N×4 xyxy in original pixels. Boxes reaching outside the image are clipped to it (warned
                once per predictor); a box with zero width or height after clipping raises ValueError.
            point_coords: N×K×2 (x, y) in original pixels, with ``point_labels`` N×K in {-1, 0, 1}.
            mask_input: N×1×s×s low-res logits.
            The prompt kinds given are combined per prompt index and must agree on N.

        Returns:
            ``(masks N×C×H×W bool (float32 if return_logits), scores N×C float32, low_res N×C×s×s float32)``,
            C = 3 with ``multimask_output`` else 1 (or the int count given). N = 0 returns empty arrays
            without running the decoder. Masks are upsampled a chunk at a time into a preallocated array.
            ``timer`` (optional) accumulates the ``decoder`` and ``postprocess`` milliseconds over the chunks.
        """
        timer = timer if timer is not None else StageTimer()
        n, num_masks, chunks = self._decoded_chunks(boxes, point_coords, point_labels, mask_input, multimask_output,
                                                    chunk_size, timer)
        height, width = self._original_size
        s = self._mask_input_size()
        masks = np.empty((n, num_masks, height, width), dtype=np.float32 if return_logits else np.bool_)
        scores = np.empty((n, num_masks), dtype=np.float32)
        low_res = np.empty((n, num_masks, s, s), dtype=np.float32)
        for start, stop, low_res_c, scores_c in chunks:
            with timer("postprocess"):
                # Upsample straight into the preallocated output: no full-size float copy of the chunk.
                self._upsample_into(low_res_c, masks[start:stop], return_logits)
                scores[start:stop] = self._to_numpy(scores_c)
                low_res[start:stop] = self._to_numpy(low_res_c)
        return masks, scores, low_res

    def predict_compact(
        self,
        boxes: Optional[np.ndarray] = None,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: Multimask = False,
        chunk_size: int = 64,
        timer: Optional[StageTimer] = None,
    ) -> tuple[CompactMasks, np.ndarray, np.ndarray]:
        """:meth:`predict_batch` with the masks as :class:`~powersam.masks.CompactMasks` (run lengths) instead of
        N×C×H×W planes: ``(masks, scores N×C float32, low_res N×C×s×s float32)``, mask ``c`` of prompt ``i`` at
        index ``i·C + c``. Each mask is upsampled and encoded on its own, only where it can be set, so the peak is
        one mask's crop plus bounded strips whatever N is (``masks.to_dense().reshape(N, C, H, W)`` is
        :meth:`predict_batch`'s array, up to float rounding at the threshold)."""
        timer = timer if timer is not None else StageTimer()
        n, num_masks, chunks = self._decoded_chunks(boxes, point_coords, point_labels, mask_input, multimask_output,
                                                    chunk_size, timer)
        s = self._mask_input_size()
        masks = CompactMasks(self._original_size)
        scores = np.empty((n, num_masks), dtype=np.float32)
        low_res = np.empty((n, num_masks, s, s), dtype=np.float32)
        for start, stop, low_res_c, scores_c in chunks:
            with timer("postprocess"):
                flat = low_res_c.reshape(-1, 1, s, s)  # one mask per row, prompt-major
                compact_masks(self, flat, self._input_size, self._original_size, out=masks)
                scores[start:stop] = self._to_numpy(scores_c)
                low_res[start:stop] = self._to_numpy(low_res_c)
        return masks, scores, low_res

    def upsample(self, low_res: Any, input_size: Any, original_size: Any) -> np.ndarray:
        """K×1×s×s logits → K×1×H×W bool planes through ``_upsample_into`` (the fallback of :meth:`predict_compact`
        for a backend without ``input_logits``; it is called one mask at a time)."""
        out = np.empty((low_res.shape[0], 1, *self._original_size), dtype=np.bool_)
        self._upsample_into(low_res, out, False)
        return out

    def _decoded_chunks(
        self,
        boxes: Optional[np.ndarray],
        point_coords: Optional[np.ndarray],
        point_labels: Optional[np.ndarray],
        mask_input: Optional[np.ndarray],
        multimask_output: Multimask,
        chunk_size: int,
        timer: StageTimer,
    ) -> tuple[int, int, Iterator[tuple[int, int, Any, Any]]]:
        """Validate the prompts → ``(N, C, chunks)``; iterating ``chunks`` decodes ``chunk_size`` prompts at a time
        (timed as ``decoder``) and yields ``(start, stop, low_res B×C×s×s, scores B×C)`` as backend arrays."""
        self._require_image()
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}")
        boxes, point_coords, point_labels, mask_input, n = self._validate_batch_prompts(
            boxes, point_coords, point_labels, mask_input, self._mask_input_size(), self._as_float
        )
        num_masks = self._num_outputs(check_multimask(multimask_output))
        # Prompts go to the input frame in float64 (segment-anything's apply_coords), then chunk by chunk to the
        # backend, which casts to its own dtype.
        if n:  # N = 0: empty outputs, the decoder does not run
            boxes = None if boxes is None else self._to_input_frame(boxes)
            point_coords = None if point_coords is None else self._to_input_frame(point_coords)

        def chunks() -> Iterator[tuple[int, int, Any, Any]]:
            for start in range(0, n, chunk_size):
                stop = min(start + chunk_size, n)
                with timer("decoder"):
                    low_res_c, scores_c = self._decode_prompts(
                        None if boxes is None else boxes[start:stop],
                        None if point_coords is None else point_coords[start:stop],
                        None if point_labels is None else point_labels[start:stop],
                        None if mask_input is None else mask_input[start:stop],
                        multimask_output,
                    )
                if low_res_c.shape[1] != num_masks:
                    raise ValueError(
                        f"the mask decoder returned {low_res_c.shape[1]} masks per prompt for "
                        f"multimask_output={multimask_output!r}; expected {num_masks}"
                    )
                yield start, stop, low_res_c, scores_c

        return n, num_masks, chunks()


def _mask_box(mask: np.ndarray) -> Optional[list[float]]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def _compact_box(masks: CompactMasks, i: int) -> Optional[list[float]]:
    y0, x0, y1, x1 = masks.box(i)
    return None if y1 == y0 else [float(x0), float(y0), float(x1), float(y1)]


def prompt_results(
    masks: Union[np.ndarray, CompactMasks],
    scores: np.ndarray,
    boxes: Optional[np.ndarray],
    points: Optional[np.ndarray],
    original_size: tuple[int, int],
) -> Results:
    """Prompted masks as :class:`Results` of the single class ``"object"``.

    Args:
        masks: N×H×W bool or :class:`~powersam.masks.CompactMasks` (kept as they are),
        scores: N predicted IoU, boxes: the N×4 prompt boxes (original pixels) or None,
        points: the clicks (K×2, or N×K×2) when there are no boxes.

    Each result's box is its prompt box clipped to the image, or without boxes the mask's bounding box (the clicks'
    bounding box when the mask is empty).
    """
    height, width = original_size
    if boxes is not None:
        out_boxes = np.asarray(boxes, dtype=np.float64).copy()
        out_boxes[:, 0::2] = out_boxes[:, 0::2].clip(0, width)
        out_boxes[:, 1::2] = out_boxes[:, 1::2].clip(0, height)
    else:
        clicks = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        fallback = [*clicks.min(axis=0), *(clicks.max(axis=0) + 1)]
        if isinstance(masks, CompactMasks):
            found = [_compact_box(masks, i) for i in range(len(masks))]
        else:
            found = [_mask_box(m) for m in masks]
        out_boxes = np.asarray([box or fallback for box in found], dtype=np.float64).reshape(-1, 4)
    return Results(out_boxes, scores, np.zeros(len(masks), np.int64), masks, list(PROMPT_CLASS_NAMES),
                   (height, width))
