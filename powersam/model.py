"""One model object for every backend: :class:`Model` (opened by :func:`powersam.load`, in :mod:`powersam.loading`).

Whatever the model was loaded from (a zoo name, a checkpoint, an ONNX graph or pair, a TensorRT engine), the same
calls work:

* :meth:`Model.predict` — detect and segment (models with a box-prompt generator or detector);
* :meth:`Model.set_image` / :meth:`Model.segment` — prompt with boxes, points and masks;
* :meth:`Model.val` — mIoU with GT prompts and COCO AP on a dataset;
* :meth:`Model.export` — ``"onnx"``, ``"onnx-int8"``, ``"onnx-fp16"``, ``"tensorrt"`` (PyTorch models);
* :meth:`Model.info` — what it is and where it runs.

Both halves run the shared pipelines of :mod:`powersam.inference`; a backend only supplies the tensors. This module
imports torch only inside the calls that need it, so an ONNX model runs on a torch-free device.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .inference.prompts import prompt_results
from .inference.timing import StageTimer
from .io import ImageSource, load_image
from .masks import CompactMasks
from .results import Results

__all__ = ["EXPORT_FORMATS", "Model"]

PathLike = Union[str, Path]
EXPORT_FORMATS = ("onnx", "onnx-int8", "onnx-fp16", "tensorrt")
EXPORTED_SUFFIXES = (".onnx", ".engine")
# File names Model.export writes into its folder; load(folder) looks for them.
INTEGRATED_NAME, ENCODER_NAME, DECODER_NAME = "model", "encoder", "decoder"


class Model:
    """A detect-and-segment and/or promptable model on one backend (see the module doc).

    Attributes:
        backend: ``"torch"``, ``"onnx"`` or ``"tensorrt"``.
        detector: what :meth:`predict` runs (``PowerSAM`` / ``DecoupledPowerSAM`` module, or the runtime's
            ``OnnxPowerSAM``), or None for a prompt-only model.
        predictor: what :meth:`segment` runs (``SamPredictor`` or ``OnnxSamPredictor``), or None.
        module: the PyTorch module (torch backend only).
    """

    def __init__(self, backend: str, detector: Any = None, predictor: Any = None, module: Any = None,
                 source: Optional[str] = None) -> None:
        if detector is None and predictor is None:
            raise ValueError("a Model needs a detector, a predictor, or both")
        self.backend = backend
        self.detector = detector
        self.predictor = predictor
        self.module = module
        self.source = source
        self._image: Optional[np.ndarray] = None  # the RGB image of set_image (zoom-in prompting crops it)

    def __repr__(self) -> str:
        return f"Model({self.model_name!r}, backend={self.backend!r}, detect={self.can_detect}, segment={self.can_segment})"

    # ------------------------------------------------------------------ description
    @property
    def can_detect(self) -> bool:
        return self.detector is not None

    @property
    def can_segment(self) -> bool:
        return self.predictor is not None

    @property
    def class_names(self) -> list[str]:
        """Detector classes (empty for a prompt-only model)."""
        return list(getattr(self.detector, "class_names", []) or [])

    names = class_names

    @property
    def model_name(self) -> str:
        if self.module is not None:
            return str(getattr(self.module, "model_name", type(self.module).__name__))
        holder = self.detector if self.detector is not None else self.predictor
        return str(holder.metadata.model_name)

    @property
    def img_size(self) -> int:
        holder = self.detector if self.detector is not None else self.predictor
        return int(holder.img_size)

    def info(self) -> dict[str, Any]:
        """``{"model", "backend", "img_size", "detect", "segment", "class_names", ...}``: parameters and device for
        PyTorch, execution providers and graph files for exports."""
        out: dict[str, Any] = {
            "model": self.model_name, "backend": self.backend, "img_size": self.img_size,
            "detect": self.can_detect, "segment": self.can_segment, "class_names": self.class_names,
        }
        if self.module is not None:
            out["params"] = int(sum(p.numel() for p in self.module.parameters()))
            out["device"] = str(self.module.pixel_mean.device)
        else:
            sessions = [s for s in (getattr(self.detector, "session", None), getattr(self.predictor, "encoder", None),
                                    getattr(self.predictor, "decoder", None)) if s is not None]
            out["providers"] = sessions[0].providers
            out["graphs"] = [str(s.path) for s in sessions]
        return out

    # ------------------------------------------------------------------ detect and segment
    def predict(
        self,
        images: Union[ImageSource, Sequence[ImageSource]],
        conf: Optional[float] = None,
        iou: Optional[float] = None,
        max_det: Optional[int] = None,
        classes: Optional[Sequence[str]] = None,
        min_side: Optional[int] = None,
        zoom: Optional[float] = None,
    ) -> Union[Results, list[Results]]:
        """Detect and segment: one image (path, PIL image or H×W×3 array) → :class:`Results`; a list → a list.

        ``conf`` score threshold, ``iou`` class-aware NMS IoU, ``max_det`` detection cap (None: the model's
        defaults), ``classes`` class names to keep, ``min_side`` the shortest image side (None: 16 px, 0: any; else
        ``ImageTooSmall``). ``zoom``: the masks of the detected boxes are decoded again on crops of that many box
        sides around them (:class:`~powersam.inference.zoom.ZoomPredictor`; one encoder pass per distinct crop,
        timed as ``zoom``; a box whose crop would be most of the image keeps the detector's mask): small equipment
        on large photos keeps its pixels. Results carry ``speed`` (ms per
        stage) and ``empty_masks``."""
        if self.detector is None:
            raise ValueError(f"{self.model_name} has no box-prompt generator or detector: use segment() with prompts")
        if zoom is not None:
            from .inference.zoom import check_context

            check_context(zoom, "zoom")
            self._require_predictor()
        if isinstance(images, (list, tuple)):
            return [self.predict(image, conf=conf, iou=iou, max_det=max_det, classes=classes, min_side=min_side,
                                 zoom=zoom) for image in images]
        if zoom is None:
            return self.detector.predict(images, conf=conf, iou=iou, max_det=max_det, classes=classes,
                                         min_side=min_side)
        rgb = load_image(images)  # decoded once for the detector and the crops
        results = self.detector.predict(rgb, conf=conf, iou=iou, max_det=max_det, classes=classes, min_side=min_side)
        if isinstance(images, (str, Path)):
            results.image_path = str(images)
        return self._zoom_masks(rgb, results, zoom)

    def _zoom_masks(self, rgb: np.ndarray, results: Results, zoom: float) -> Results:
        """``results`` with each box's mask decoded on its zoom-in crop (see :meth:`predict`)."""
        from .inference.zoom import ZoomPredictor

        timer = StageTimer()
        predictor = self.predictor
        saved = predictor.image_state() if predictor.is_image_set else None
        height, width = results.orig_shape
        boxes = np.asarray(results.boxes, dtype=np.float64).copy()
        boxes[:, 0::2], boxes[:, 1::2] = boxes[:, 0::2].clip(0, width), boxes[:, 1::2].clip(0, height)
        # A box that is a line once clipped cannot be prompted, and one whose window is the whole image would be
        # decoded as the detector already did: both keep the detector's mask (no second whole-image encoder pass).
        zoomed = ZoomPredictor(predictor, context=zoom)
        zoomed.set_image(rgb)
        whole = (0, 0, width, height)
        usable = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
        usable = np.asarray([i for i in usable if zoomed.window_of(boxes[i]) != whole], dtype=np.int64)
        with timer("zoom"):
            if len(usable):
                try:
                    decoded, _, _ = zoomed.predict_compact(boxes=boxes[usable], multimask_output=False)
                finally:  # the image of set_image stays the current one
                    if saved is not None:
                        predictor.restore_image_state(saved)
                    else:
                        predictor.reset_image()
                source = {int(i): (decoded, k) for k, i in enumerate(usable)}
                before, masks = results.compact_masks, CompactMasks((height, width))
                for i in range(len(results)):
                    if i in source:
                        y0, x0, crop = source[i][0].crop(source[i][1])
                    else:
                        y0, x0, crop = before.crop(i) if before is not None else (0, 0, np.zeros((0, 0), bool))
                    masks.append_crop(crop, y0, x0)
                results.masks = masks
        results.speed = {**results.speed, **timer.ms}
        return results

    __call__ = predict

    # ------------------------------------------------------------------ prompting
    def _require_predictor(self) -> Any:
        if self.predictor is None:
            raise ValueError(f"{self.model_name} ({self.backend}) cannot be prompted: it has no encoder/decoder pair "
                             "(load the interactive export too)")
        return self.predictor

    def set_image(self, image: ImageSource, image_format: str = "RGB") -> "Model":
        """Encode ``image`` once for any number of :meth:`segment` calls; returns self."""
        predictor = self._require_predictor()
        timer = StageTimer()
        with timer("encoder"):
            rgb = predictor._load_rgb(image, image_format)
            predictor.set_image(rgb)
        self._image = rgb  # kept for zoom-in prompting (segment(zoom=...)), which crops it
        self._encode_ms = timer.ms
        return self

    def segment(
        self,
        image: Optional[ImageSource] = None,
        boxes: Optional[np.ndarray] = None,
        points: Optional[np.ndarray] = None,
        labels: Optional[np.ndarray] = None,
        mask: Optional[np.ndarray] = None,
        chunk_size: int = 64,
        zoom: Optional[float] = None,
    ) -> Results:
        """Masks for prompts in original pixels, on ``image`` (or the one given to :meth:`set_image`).

        Args:
            boxes: N×4 xyxy, one mask each.
            points: K×2 (x, y) clicks with ``labels`` K (1 foreground, 0 background): added to every box, or one
                prompt of K clicks without boxes; or N×K×2 with labels N×K, one click set per prompt.
            mask: N×1×s×s low-res logits from a previous call (``Results`` do not carry them: use
                ``model.predictor.predict_batch`` to get them).
            zoom: decode each box on a crop of ``zoom`` box sides around it, encoded at the model's full input
                size (:class:`~powersam.inference.zoom.ZoomPredictor`): small objects on large photos keep their
                pixels; one encoder pass per distinct crop, timed under ``decoder``. Point prompts without a box
                use the whole image, and once they hold two points or more also a crop around that answer.

        Returns:
            :class:`Results` with N compact single-mask outputs (class ``"object"``), the predicted IoU as score, the
            given boxes (clipped) or each mask's bounding box, and ``speed`` (``encoder`` when ``image`` is given,
            ``decoder`` = prompt encoder + mask decoder + upsampling).
        """
        predictor = self._require_predictor()
        speed: dict[str, float] = {}
        if image is not None:
            self.set_image(image)
            speed.update(self._encode_ms)
        if not predictor.is_image_set:
            raise RuntimeError("no image: pass image= or call set_image first")
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        if boxes is None and points is None and mask is None:
            raise ValueError("segment() needs prompts: boxes=, points= with labels=, or mask=")
        prompts: dict[str, Any] = {}
        n = None
        if boxes is not None:
            if (boxes := np.asarray(boxes, dtype=np.float64)).shape != (4,) and boxes.shape[1:] != (4,):
                raise ValueError(f"boxes must have shape N×4 (x0, y0, x1, y1) or 4; got shape {boxes.shape}")
            prompts["boxes"] = boxes.reshape(-1, 4)
            n = len(prompts["boxes"])
        if points is not None:
            points, labels = np.asarray(points, dtype=np.float64), np.asarray(labels)
            if points.ndim == 2:  # the same clicks for every prompt
                points, labels = np.repeat(points[None], n or 1, axis=0), np.repeat(labels[None], n or 1, axis=0)
            prompts["point_coords"], prompts["point_labels"] = points, labels
        if mask is not None:
            prompts["mask_input"] = np.asarray(mask, dtype=np.float32)
        timer = StageTimer()
        with timer("decoder"):  # compact masks: no N full-resolution planes (Results.masks builds them on demand)
            if zoom is None:
                masks, scores, _ = predictor.predict_compact(**prompts, multimask_output=False, chunk_size=chunk_size)
            else:
                masks, scores = self._segment_zoomed(prompts, zoom, chunk_size)
        result = prompt_results(masks, scores[:, 0], prompts.get("boxes"), prompts.get("point_coords"),
                                predictor.original_size)
        result.speed = {**speed, **timer.ms}
        return result

    def _segment_zoomed(self, prompts: dict[str, Any], zoom: float, chunk_size: int) -> tuple[Any, np.ndarray]:
        from .inference.zoom import ZoomPredictor

        predictor = self.predictor
        if self._image is None:
            raise RuntimeError("segment(zoom=...) crops the image given to Model.set_image or segment(image=...); "
                               "the predictor's image was set another way")
        full_frame = predictor.image_state()
        zoomed = ZoomPredictor(predictor, context=zoom)
        zoomed.set_image(self._image, full_frame_state=full_frame)
        try:
            masks, scores, _ = zoomed.predict_compact(**prompts, multimask_output=False, chunk_size=chunk_size)
        finally:  # the predictor keeps the whole image for the next call
            predictor.restore_image_state(full_frame)
        return masks, scores

    # ------------------------------------------------------------------ evaluation
    def val(
        self,
        data: Any,
        split: Optional[str] = "val",
        prompts: Sequence[str] = ("box", "point"),
        refine_iters: int = 2,
        max_images: Optional[int] = None,
        conf: float = 0.001,
        iou: float = 0.65,
        max_det: int = 100,
        progress: bool = False,
        **miou_options: Any,
    ) -> dict[str, Any]:
        """Evaluate on a COCO dataset (folder / ``annotations.json`` path, or a ``CocoInstances``).

        Returns ``{"miou": evaluate_miou(...)}`` when the model can be prompted and ``{"det": evaluate_detection(...)}``
        (COCO box and mask AP at ``conf``/``iou``/``max_det``) when it detects; see those functions for the keys.
        Needs torch (the evaluation code uses it), whatever the backend.
        """
        from .eval.detection import evaluate_detection
        from .eval.miou import evaluate_miou

        if isinstance(data, (str, Path)):
            from .data.coco import CocoInstances

            data = CocoInstances(data, split=split, load_masks=True)
        out: dict[str, Any] = {}
        if self.predictor is not None:
            out["miou"] = evaluate_miou(self.predictor, data, prompts=prompts, refine_iters=refine_iters,
                                        max_images=max_images, progress=progress, **miou_options)
        if self.detector is not None:
            out["det"] = evaluate_detection(self, data, max_images=max_images, conf=conf, iou=iou, max_det=max_det,
                                            progress=progress)
        return out

    # ------------------------------------------------------------------ export
    def export(self, format: str = "onnx", out: PathLike = "export", *, calib: Any = None, num_calib: int = 32,
               int8_decoder: bool = False, **options: Any) -> list[Path]:
        """Export a PyTorch model into the folder ``out`` → the files to deploy (``powersam.load`` takes the list).

        ``model.onnx`` (integrated detect-and-segment graph, when the model detects) and the interactive pair
        ``encoder.onnx`` + ``decoder.onnx``; then by ``format``: ``"onnx"`` those; ``"onnx-int8"`` their static INT8
        twins ``*.int8.onnx`` calibrated on ``calib`` images (the decoder stays float unless ``int8_decoder``: its
        weight MatMuls dynamic INT8, in ``model.int8.onnx`` and as ``decoder.int8.onnx``); ``"onnx-fp16"`` FP16 twins
        ``*.fp16.onnx``; ``"tensorrt"`` one ``.engine`` per graph (TensorRT >= 10 and an NVIDIA GPU). ``options`` go
        to :func:`~powersam.deploy.onnx_export.export_onnx` (``opset``, ``conf``, ``iou``, ``max_det``, ...).
        """
        if format not in EXPORT_FORMATS:
            raise ValueError(f"format must be one of {EXPORT_FORMATS}; got {format!r}")
        if int8_decoder and format != "onnx-int8":
            raise ValueError(f"int8_decoder applies to format='onnx-int8' only; got format={format!r}")
        if self.module is None:
            raise ValueError(f"{self.model_name} is already an export ({self.backend}); export the PyTorch model")
        from .deploy.onnx_export import export_onnx

        if format == "tensorrt":
            from .deploy.tensorrt import require_tensorrt

            require_tensorrt()  # before exporting: without TensorRT or a GPU there is nothing to build
        for new, old in (("conf", "score_thr"), ("iou", "nms_iou")):  # the exporter's own names
            if new in options:
                options[old] = options.pop(new)
        folder = Path(out)
        graphs: list[Path] = []
        if self.detector is not None:
            graphs += export_onnx(self.module, folder / f"{INTEGRATED_NAME}.onnx", **options)
        if self.predictor is not None:
            pair_options = {k: v for k, v in options.items() if k not in ("score_thr", "nms_iou", "max_det")}
            graphs += export_onnx(self.module, folder, interactive=True, **pair_options)
        if format == "onnx":
            return graphs
        if format == "onnx-int8":
            from .deploy.quantize import quantize_export

            int8 = quantize_export(graphs, calib, num_calib, decoder=int8_decoder)
            return int8 if int8_decoder else int8 + [g for g in graphs if g.stem == DECODER_NAME]
        if format == "onnx-fp16":
            from .deploy.precision import float16_twins

            return float16_twins(graphs)  # an interactive pair's twins name each other as partners
        from .deploy.tensorrt import ENGINE_SUFFIX, build_engine

        return [build_engine(g, g.with_suffix(ENGINE_SUFFIX), calib_images=calib, num_calib=num_calib) for g in graphs]
