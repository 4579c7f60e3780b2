"""One bench frame = one call of the library's shared inference pipeline, timed by that pipeline.

``powersam bench`` does not rebuild ``predict`` stage by stage: a frame runs

* :func:`powersam.inference.detect_and_segment` on the model's backend (a PyTorch ``PowerSAM`` /
  ``DecoupledPowerSAM``, or the runtime's ``OnnxPowerSAM``) for models that detect, or
* :meth:`~powersam.inference.prompts.PromptPipeline.set_image` + ``predict_batch`` with box prompts on the
  model's predictor (``SamPredictor`` / ``OnnxSamPredictor``) for SAM-only models,

with a :class:`~powersam.inference.timing.StageTimer`, and reports the milliseconds per stage that pipeline measured
(``Results.speed``). The only thing added here is :class:`GivenBoxes`, which lets a detector with random weights
decode a fixed number of boxes (its own detection stages still run and are timed).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ..inference.detect import DetectBackend, Detections, detect_and_segment
from ..inference.timing import StageTimer

Sync = Optional[Callable[[], None]]
FrameFn = Callable[[dict[str, Any]], Mapping[str, float]]

# The parts each kind of frame reports, in the order the shared pipelines first run them.
INTEGRATED_PARTS = ("preprocess", "encoder", "bbpg", "detect", "decoder", "postprocess")
DECOUPLED_PARTS = ("preprocess", "det_preprocess", "detector", "detect", "encoder", "decoder", "postprocess")
GRAPH_PARTS = ("preprocess", "network", "postprocess")
PROMPT_PARTS = ("preprocess", "encoder", "decoder", "postprocess")
_OPTIONAL_BACKEND_MEMBERS = ("mask_threshold", "low_res_numpy", "input_logits")


class GivenBoxes:
    """A :class:`~powersam.inference.DetectBackend` that runs the wrapped backend's detection stages as usual (timed
    on the same timer) and then hands the pipeline ``count`` synthetic boxes to decode instead of its detections.

    The boxes come from ``make_boxes(count, input_size)`` (input frame, xyxy); scores are 1 and labels 0.
    """

    def __init__(self, backend: DetectBackend, count: int,
                 make_boxes: Callable[[int, tuple[int, int]], np.ndarray]) -> None:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self.backend = backend
        self.count = int(count)
        self.make_boxes = make_boxes
        self._boxes: dict[tuple[int, int], np.ndarray] = {}

    @property
    def class_names(self) -> list[str]:
        return list(self.backend.class_names)

    def detection_defaults(self) -> tuple[float, float, int]:
        return self.backend.detection_defaults()

    def detect(self, rgb: np.ndarray, conf: float, iou: float, max_det: int, timer: StageTimer) -> Detections:
        found = self.backend.detect(rgb, conf, iou, max_det, timer)
        size = tuple(int(v) for v in found.input_size)
        if size not in self._boxes:  # fixed per frame size: made once, then reused
            self._boxes[size] = np.asarray(self.make_boxes(self.count, size), dtype=np.float32).reshape(-1, 4)
        return Detections(boxes=self._boxes[size], scores=np.ones(self.count, np.float32),
                          labels=np.zeros(self.count, np.int64), input_size=found.input_size, state=found.state)

    def decode(self, detections: Detections, keep: np.ndarray) -> Any:
        return self.backend.decode(detections, keep)

    def upsample(self, low_res: Any, input_size: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
        return self.backend.upsample(low_res, input_size, original_size)

    def __getattr__(self, name: str) -> Any:
        # The optional backend members the pipeline looks for (detect.DetectBackend) are the wrapped backend's.
        # Without them compact_masks fell back to `upsample`, full-frame planes per mask that predict() never runs
        # (the two-step PyTorch resize of a whole 1080×1920 frame, ~30 ms a mask), and that is what the torch rows
        # timed as postprocess.
        if name in _OPTIONAL_BACKEND_MEMBERS:
            return getattr(self.backend, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def detect_frame(backend: DetectBackend, info: dict[str, Any], conf: Optional[float] = None,
                 max_det: Optional[int] = None, sync: Sync = None,
                 fold: Optional[Mapping[str, str]] = None) -> FrameFn:
    """A frame that runs :func:`~powersam.inference.detect_and_segment` on ``state["image"]`` → its ``speed``.

    ``conf`` / ``max_det`` override the backend's defaults (None keeps them). ``fold`` adds a stage's time into
    another's (an exported graph decodes its masks inside ``network``: ``{"decoder": "network"}``). Each frame sets
    ``info["boxes_decoded"]``.
    """
    def frame(state: dict[str, Any]) -> Mapping[str, float]:
        result = detect_and_segment(backend, state["image"], conf=conf, max_det=max_det, timer=StageTimer(sync))
        info["boxes_decoded"] = len(result)
        return _folded(result.speed, fold or {})

    return frame


def prompt_frame(predictor: Any, boxes: np.ndarray, info: dict[str, Any], sync: Sync = None) -> FrameFn:
    """A frame that encodes ``state["image"]`` with the predictor's ``set_image`` and decodes one single-mask output
    per box (N×4 xyxy, original pixels) with ``predict_batch`` → the stages both timed."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)

    def frame(state: dict[str, Any]) -> Mapping[str, float]:
        timer = StageTimer(sync)
        predictor.set_image(state["image"], timer=timer)
        masks, _, _ = predictor.predict_batch(boxes=boxes, multimask_output=False, timer=timer)
        info["boxes_decoded"] = int(masks.shape[0])
        return timer.ms

    return frame


def _folded(speed: Mapping[str, float], fold: Mapping[str, str]) -> dict[str, float]:
    out = dict(speed)
    for source, target in fold.items():
        if source in out:
            out[target] = out.get(target, 0.0) + out.pop(source)
    return out


def frame_parts(structure: str, graph: bool) -> Sequence[str]:
    """The parts a frame of this model reports: ``structure`` from :func:`~powersam.bench.pipelines.structure_of`,
    ``graph`` True for one exported detect-and-segment graph."""
    if structure == "segmenter":
        return PROMPT_PARTS
    if graph:
        return GRAPH_PARTS
    return INTEGRATED_PARTS if structure == "integrated" else DECOUPLED_PARTS
