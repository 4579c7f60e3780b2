"""Integrated PowerSAM on ONNX Runtime: image → :class:`~powersam.results.Results`, without PyTorch."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..io import load_image
from ..results import Results
from .preprocess import axis_scales, preprocess_image, upsample_masks
from .preprocess import detector_feeds as decoupled_detector_feeds
from .session import GraphSession

__all__ = ["OnnxPowerSAM"]


class OnnxPowerSAM:
    """Runs an integrated graph exported by ``export_onnx(..., interactive=False)``.

    The graph does the network work (backbone, detection with NMS, mask decoding at low resolution); this class
    does what depends on the image size: resize/normalise/pad in NumPy before, and box rescaling plus mask
    upsampling to the original size after (see :mod:`powersam.runtime.preprocess`). Results match
    ``PowerSAM.predict`` on the same weights (same boxes, labels and order; masks up to float rounding). A decoupled
    baseline's graph (metadata ``det_size``) also gets its detector's letterboxed input, as
    ``DecoupledPowerSAM.predict`` builds it.
    """

    def __init__(self, session: GraphSession) -> None:
        if session.metadata.graph != "integrated":
            raise ValueError(f"{session.path} is a {session.metadata.graph} graph, not an integrated one")
        self.session = session
        meta = session.metadata
        self.metadata = meta
        self.img_size = meta.img_size
        self.class_names = list(meta.class_names)
        self.score_thr = float(meta.score_thr if meta.score_thr is not None else 0.5)
        self.nms_iou = float(meta.nms_iou if meta.nms_iou is not None else 0.65)
        self.max_det = int(meta.max_det if meta.max_det is not None else 100)
        self.mask_threshold = float(meta.mask_threshold)
        self.det_size = meta.det_size

    @property
    def providers(self) -> list[str]:
        return self.session.providers

    def __repr__(self) -> str:
        return (
            f"OnnxPowerSAM({self.metadata.model_name!r}, img_size={self.img_size}, classes={len(self.class_names)}, "
            f"providers={self.providers})"
        )

    def detector_feeds(self, rgb: np.ndarray, input_size: Sequence[int]) -> dict[str, np.ndarray]:
        """A decoupled graph's extra inputs: ``det_image`` (long side resized to D, letterboxed with 114, raw 0–255)
        and ``box_scale`` (detector-input → segmenter-input box factors); empty for an integrated graph."""
        return {} if self.det_size is None else decoupled_detector_feeds(rgb, int(self.det_size), input_size)

    def run_graph(
        self, image: np.ndarray, input_size: Sequence[int], conf: float, iou: float, max_det: int,
        detector_feeds: Optional[dict[str, np.ndarray]] = None,
    ) -> dict[str, np.ndarray]:
        """Run the graph on a preprocessed 1×3×S×S input (and a decoupled graph's :meth:`detector_feeds`) → boxes
        (input frame), scores, labels, mask_logits."""
        if self.det_size is not None and not detector_feeds:
            raise ValueError("this decoupled graph also needs its detector's input: pass detector_feeds")
        feeds = {
            **(detector_feeds or {}),
            "image": np.ascontiguousarray(image, dtype=np.float32),
            "input_size": np.asarray(input_size, dtype=np.int64),
            "score_thr": np.asarray(conf, dtype=np.float32),
            "nms_iou": np.asarray(iou, dtype=np.float32),
            "max_det": np.asarray(max_det, dtype=np.int64),
        }
        return self.session.run(feeds, ["boxes", "scores", "labels", "mask_logits"])

    def predict(
        self,
        image: Any,
        conf: Optional[float] = None,
        iou: Optional[float] = None,
        max_det: Optional[int] = None,
        classes: Optional[Sequence[str]] = None,
    ) -> Results:
        """Detect and segment every object in an image (same arguments and result as ``PowerSAM.predict``).

        Args:
            image: RGB H×W×3 uint8 array, PIL image or path (see :func:`powersam.io.load_image`).
            conf: score threshold (default: the exported ``score_thr``); iou: NMS IoU (default ``nms_iou``);
            max_det: detection cap (default ``max_det``); classes: keep only these class names.
        """
        conf = self.score_thr if conf is None else float(conf)
        iou = self.nms_iou if iou is None else float(iou)
        max_det = self.max_det if max_det is None else int(max_det)
        if not 0.0 <= conf <= 1.0 or not 0.0 <= iou <= 1.0:
            raise ValueError(f"conf and iou must be in [0, 1], got conf={conf}, iou={iou}")
        if max_det < 0:
            raise ValueError(f"max_det must be >= 0, got {max_det}")
        wanted = self._class_filter(classes)
        path = str(image) if isinstance(image, (str, Path)) else None
        rgb = load_image(image)
        original_size = rgb.shape[:2]
        x, input_size = preprocess_image(rgb, self.img_size, self.metadata.pixel_mean, self.metadata.pixel_std)
        out = self.run_graph(x, input_size, conf, iou, max_det, self.detector_feeds(rgb, input_size))
        boxes, scores, labels, logits = out["boxes"], out["scores"], out["labels"], out["mask_logits"]
        if wanted is not None:
            keep = np.isin(labels, sorted(wanted))
            boxes, scores, labels, logits = boxes[keep], scores[keep], labels[keep], logits[keep]
        if boxes.shape[0] == 0:
            return Results.empty(original_size, self.class_names, image_path=path)
        masks = upsample_masks(logits, input_size, original_size, self.img_size, threshold=self.mask_threshold)
        sy, sx = axis_scales(original_size, input_size)
        to_original = np.array([1 / sx, 1 / sy, 1 / sx, 1 / sy], dtype=np.float32)
        boxes = boxes.astype(np.float32) * to_original
        h, w = original_size
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        return Results(
            boxes=boxes,
            scores=scores.astype(np.float32),
            labels=labels.astype(np.int64),
            masks=masks[:, 0],
            class_names=list(self.class_names),
            orig_shape=tuple(original_size),
            image_path=path,
        )

    __call__ = predict

    def _class_filter(self, classes: Optional[Sequence[str]]) -> Optional[set[int]]:
        if classes is None:
            return None
        unknown = [c for c in classes if c not in self.class_names]
        if unknown:
            raise ValueError(f"unknown class name(s) {unknown}; this model knows {self.class_names}")
        return {self.class_names.index(c) for c in classes}
