"""Integrated PowerSAM on ONNX Runtime: image → :class:`~powersam.results.Results`, without PyTorch."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..inference.detect import Detections, detect_and_segment
from ..inference.timing import StageTimer
from ..results import Results
from .preprocess import _resize, preprocess_image, upsample_masks
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

    # ------------------------------------------------------------------ the backend of the shared pipeline
    # predict() is powersam.inference.detect_and_segment; these four methods are all it asks of a graph.
    def detection_defaults(self) -> tuple[float, float, int]:
        """(conf, iou, max_det) used when predict() is given None: the exported defaults."""
        return self.score_thr, self.nms_iou, self.max_det

    def detect(self, rgb: np.ndarray, conf: float, iou: float, max_det: int, timer: StageTimer) -> Detections:
        """H×W×3 uint8 RGB → :class:`~powersam.inference.Detections`; the graph decodes every detection's mask in
        the same call, so ``state`` holds the N×1×s×s mask logits."""
        with timer("preprocess"):
            x, input_size = preprocess_image(rgb, self.img_size, self.metadata.pixel_mean, self.metadata.pixel_std)
            det_feeds = self.detector_feeds(rgb, input_size)
        with timer("network"):
            out = self.run_graph(x, input_size, conf, iou, max_det, det_feeds)
        return Detections(
            boxes=out["boxes"].astype(np.float32), scores=out["scores"].astype(np.float32),
            labels=out["labels"].astype(np.int64), input_size=tuple(input_size), state=out["mask_logits"],
        )

    def decode(self, detections: Detections, keep: np.ndarray) -> np.ndarray:
        """The graph's mask logits of the kept detections (already decoded by :meth:`detect`)."""
        return detections.state[keep]

    def upsample(self, low_res: np.ndarray, input_size: Sequence[int], original_size: Sequence[int]) -> np.ndarray:
        """K×1×s×s logits → K×1×H×W bool masks at the original resolution: K full planes (predict() uses
        :meth:`input_logits` and upsamples each mask only where it can be set)."""
        return upsample_masks(low_res, input_size, original_size, self.img_size, threshold=self.mask_threshold)

    def low_res_numpy(self, low_res: np.ndarray) -> tuple[np.ndarray, int]:
        """K×1×s×s logits → (K×s×s float32, S), upsampled by the pipeline in one composed pass."""
        return np.asarray(low_res, dtype=np.float32)[:, 0], self.img_size

    def input_logits(self, low_res: np.ndarray, input_size: Sequence[int]) -> np.ndarray:
        """K×1×s×s logits → K×h×w float32 logits of the input frame (bilinear to the padded S×S input, padding
        cropped), the first of :func:`~powersam.runtime.preprocess.upsample_masks`' two steps."""
        stack = np.asarray(low_res, dtype=np.float32)[:, 0]
        return _resize(stack, (self.img_size, self.img_size))[:, : int(input_size[0]), : int(input_size[1])]

    def predict(
        self,
        image: Any,
        conf: Optional[float] = None,
        iou: Optional[float] = None,
        max_det: Optional[int] = None,
        classes: Optional[Sequence[str]] = None,
        min_side: Optional[int] = None,
    ) -> Results:
        """Detect and segment every object in an image (same arguments and result as ``PowerSAM.predict``: both are
        :func:`powersam.inference.detect_and_segment`).

        Args:
            image: RGB H×W×3 uint8 array, PIL image or path (see :func:`powersam.io.load_image`).
            conf: score threshold (default: the exported ``score_thr``); iou: NMS IoU (default ``nms_iou``);
            max_det: detection cap (default ``max_det``); classes: keep only these class names; min_side: refuse
            images with a side under this many pixels (None: 16, 0: no minimum).
        """
        return detect_and_segment(self, image, conf, iou, max_det, classes, min_side=min_side)

    __call__ = predict
