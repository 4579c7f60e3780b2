"""Detect-and-segment models: the integrated PowerSAM and the decoupled (separate detector) baseline.

Integrated (paper §3.3): one RepViT pass yields the stage-1..3 maps for the box-prompt generator (BBPG) and the
256×64×64 SAM embedding; the detected boxes are fed to SAM's prompt encoder and mask decoder, one mask per box.
Decoupled (paper Table 2 "D"): a separate YOLOX-S runs on its own input next to a SAM-family segmenter.
Both share :meth:`DetectSegmentModel.segment_boxes`, so the mask for a given box is computed by one code path.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..inference.detect import Detections, detect_and_segment
from ..inference.timing import StageTimer
from ..results import Results
from ..transforms import ResizeLongestSide, masks_to_original, preprocess_image
from .sam.sam import Sam

logger = logging.getLogger(__name__)


class DetectSegmentModel(Sam):
    """A SAM (image encoder, prompt encoder, mask decoder) that also finds its own box prompts.

    Subclasses implement :meth:`_detect_stages`. Everything a user calls is here: :meth:`predict` for images,
    :meth:`segment_boxes` for tensors.
    """

    def __init__(
        self,
        sam: Sam,
        class_names: Sequence[str],
        score_thr: float = 0.5,
        nms_iou: float = 0.65,
        max_det: int = 100,
    ) -> None:
        super().__init__(
            image_encoder=sam.image_encoder,
            prompt_encoder=sam.prompt_encoder,
            mask_decoder=sam.mask_decoder,
        )
        # Buffers are reassigned rather than read back, so this also works on the meta device.
        self.pixel_mean = sam.pixel_mean
        self.pixel_std = sam.pixel_std
        self.class_names = list(class_names)
        self.score_thr = float(score_thr)
        self.nms_iou = float(nms_iou)
        self.max_det = int(max_det)

    # One vocabulary with predict(conf=, iou=): the attributes keep their old names (the exported graph metadata
    # records score_thr / nms_iou, a file format), these are the names to use.
    @property
    def conf(self) -> float:
        """Default score threshold of :meth:`predict` (stored as ``score_thr``)."""
        return self.score_thr

    @conf.setter
    def conf(self, value: float) -> None:
        self.score_thr = float(value)

    @property
    def iou(self) -> float:
        """Default class-aware NMS IoU of :meth:`predict` (stored as ``nms_iou``)."""
        return self.nms_iou

    @iou.setter
    def iou(self, value: float) -> None:
        self.nms_iou = float(value)

    # ------------------------------------------------------------------ tensors
    @torch.no_grad()
    def segment_boxes(
        self, image_embedding: torch.Tensor, boxes: torch.Tensor, chunk_size: int = 64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the prompt encoder and mask decoder for N boxes on one image embedding.

        Args:
            image_embedding: 1×256×h×w embedding of one image.
            boxes: N×4 xyxy boxes in the model input frame (the resized, unpadded image).
            chunk_size: boxes per decoder call (bounds memory for many boxes).

        Returns:
            (low-res mask logits N×1×4h×4w, IoU predictions N×1) from the single-mask output (token 0).
        """
        if image_embedding.dim() != 4 or image_embedding.shape[0] != 1:
            raise ValueError(f"image_embedding must be 1×C×h×w, got {tuple(image_embedding.shape)}")
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be N×4, got {tuple(boxes.shape)}")
        h, w = image_embedding.shape[-2:]
        if boxes.shape[0] == 0:
            empty = image_embedding.new_zeros((0, 1, 4 * h, 4 * w))
            return empty, image_embedding.new_zeros((0, 1))
        dense_pe = self.prompt_encoder.get_dense_pe()
        logits, ious = [], []
        for start in range(0, boxes.shape[0], chunk_size):
            sparse, dense = self.prompt_encoder(points=None, boxes=boxes[start : start + chunk_size], masks=None)
            chunk_logits, chunk_iou = self.mask_decoder(
                image_embeddings=image_embedding,
                image_pe=dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            logits.append(chunk_logits)
            ious.append(chunk_iou)
        return torch.cat(logits), torch.cat(ious)

    def _detect_stages(
        self, image: np.ndarray, score_thr: float, nms_iou: float, max_det: int, timer: StageTimer
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, tuple[int, int]]:
        """Run the detection stages on an RGB uint8 image, each under ``timer(name)`` → (detections with boxes in
        the SAM input frame, clamped to it; SAM embedding 1×256×h×w; SAM input size (h, w))."""
        raise NotImplementedError

    def _detect_and_embed(
        self, image: np.ndarray, score_thr: float, nms_iou: float, max_det: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, tuple[int, int]]:
        """:meth:`_detect_stages` without timings (the hook's earlier name; the export tests call it)."""
        return self._detect_stages(image, score_thr, nms_iou, max_det, StageTimer())

    # ------------------------------------------------------------------ the backend of the shared pipeline
    # predict() is powersam.inference.detect_and_segment; these four methods are all it asks of a PyTorch model.
    def detection_defaults(self) -> tuple[float, float, int]:
        """(conf, iou, max_det) used when predict() is given None."""
        return self.score_thr, self.nms_iou, self.max_det

    def detect(self, rgb: np.ndarray, conf: float, iou: float, max_det: int, timer: StageTimer) -> Detections:
        """H×W×3 uint8 RGB → :class:`~powersam.inference.Detections` (NumPy boxes, scores, labels in the input
        frame; the embedding stays on the device as ``state`` for :meth:`decode`)."""
        if self.training:
            raise RuntimeError("predict() needs the model in eval mode: call model.eval() first")
        with torch.no_grad():
            dets, embedding, input_size = self._detect_stages(rgb, conf, iou, max_det, timer)
        return Detections(
            boxes=dets["boxes"].float().cpu().numpy(),
            scores=dets["scores"].float().cpu().numpy(),
            labels=dets["labels"].cpu().numpy().astype(np.int64),
            input_size=tuple(input_size),
            state=embedding,
        )

    def decode(self, detections: Detections, keep: np.ndarray) -> torch.Tensor:
        """Low-res logits K×1×s×s of the kept detections (prompt encoder + mask decoder, single-mask output)."""
        embedding = detections.state
        boxes = torch.as_tensor(detections.boxes[keep], dtype=torch.float32, device=embedding.device)
        with torch.no_grad():
            low_res, _ = self.segment_boxes(embedding, boxes)
        return low_res

    def upsample(self, low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
        """K×1×s×s logits → K×1×H×W bool masks (NumPy) at the original resolution: K full planes (predict() uses
        :meth:`input_logits` and upsamples each mask only where it can be set)."""
        with torch.no_grad():
            masks = masks_to_original(low_res, input_size, original_size, self.img_size, output_device="cpu")
        return masks.numpy()

    def low_res_numpy(self, low_res: torch.Tensor) -> tuple[np.ndarray, int]:
        """K×1×s×s logits → (K×s×s float32 NumPy, S): what :func:`~powersam.inference.detect.compact_masks`
        upsamples in one composed pass (:mod:`powersam.inference.direct_upsample`)."""
        return low_res[:, 0].detach().float().cpu().numpy(), self.img_size

    def input_logits(self, low_res: torch.Tensor, input_size: tuple[int, int]) -> np.ndarray:
        """K×1×s×s logits → K×h×w float32 NumPy logits of the input frame: bilinear to the padded S×S input (on the
        model's device, as :func:`~powersam.transforms.masks_to_original` does) and the padding cropped. The second
        step, to the original size, is :func:`powersam.inference.upsample.upsample_to_original`."""
        with torch.no_grad():
            logits = F.interpolate(low_res.float(), (self.img_size, self.img_size), mode="bilinear",
                                   align_corners=False)
            logits = logits[:, 0, : int(input_size[0]), : int(input_size[1])]
        return logits.cpu().numpy()

    # ------------------------------------------------------------------ images
    def predict(
        self,
        image: Any,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        classes: Sequence[str] | None = None,
        min_side: int | None = None,
    ) -> Results:
        """Detect every piece of equipment in an image and segment each one.

        Args:
            image: RGB image as an H×W×3 uint8 array, a PIL image or a path (grayscale, RGBA and 16-bit images are
                converted, see :func:`powersam.io.load_image`).
            conf: score threshold (default: the model's ``score_thr``).
            iou: class-aware NMS IoU threshold (default: ``nms_iou``).
            max_det: keep at most this many detections (highest scores first).
            classes: keep only these class names.
            min_side: refuse images with a side under this many pixels (None: 16, 0: no minimum; see
                :data:`powersam.inference.detect.MIN_IMAGE_SIDE`).

        Returns:
            :class:`~powersam.results.Results` with boxes (xyxy, original pixels), scores, labels, masks (N×H×W bool)
            and ``speed`` (ms per stage). The steps are :func:`powersam.inference.detect_and_segment`'s, shared with
            the ONNX Runtime and TensorRT backends.
        """
        device = self.pixel_mean.device
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
        return detect_and_segment(self, image, conf, iou, max_det, classes, timer=StageTimer(sync), min_side=min_side)

    def _sam_input(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        device = self.pixel_mean.device
        tensor, input_size = preprocess_image(image, self.img_size, self.pixel_mean, self.pixel_std)
        return tensor.to(device), input_size


class PowerSAM(DetectSegmentModel):
    """Integrated PowerSAM: a RepViT encoder shared by the box-prompt generator and SAM's decoder.

    Children: ``image_encoder`` (RepViT with ``forward_multiscale``), ``prompt_encoder``, ``mask_decoder`` (key names
    as in the official ``powersam_*.pth``) and ``box_generator`` (``neck`` = YOLOX-PAFPN, ``bbox_head`` = YOLOX head,
    key names as mmdet's, so the official detector weights load after ``powersam convert``).
    """

    def __init__(self, sam: Sam, box_generator: nn.Module, **detection: Any) -> None:
        super().__init__(sam, **detection)
        if not hasattr(self.image_encoder, "forward_multiscale"):
            raise TypeError("the integrated PowerSAM needs an image encoder with forward_multiscale (RepViT)")
        self.box_generator = box_generator

    def forward_integrated(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """One backbone pass: B×3×S×S normalised input → (raw detector outputs, SAM embedding B×256×S/16×S/16)."""
        stage1, stage2, stage3, embedding = self.image_encoder.forward_multiscale(x)
        return self.box_generator((stage1, stage2, stage3)), embedding

    def _detect_stages(self, image, score_thr, nms_iou, max_det, timer):
        # forward_integrated cut in two timed stages (the same calls): shared backbone, then the BBPG on its maps.
        with timer("preprocess"):
            x, input_size = self._sam_input(image)
        with timer("encoder"):
            stage1, stage2, stage3, embedding = self.image_encoder.forward_multiscale(x)
        with timer("bbpg"):
            raw = self.box_generator((stage1, stage2, stage3))
        with timer("detect"):
            dets = self.box_generator.bbox_head.predict(*raw, score_thr=score_thr, nms_iou=nms_iou,
                                                        max_det=max_det)[0]
            h, w = input_size
            boxes = dets["boxes"].clone()
            # Boxes may reach into the padding; the mask decoder should only see the real image area.
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, h)
        return {**dets, "boxes": boxes}, embedding, input_size

    def load_detector_weights(self, path: str | Path) -> None:
        """Load box-prompt-generator weights: the converted official ``box_prompt_generator_*.pth`` (keys
        ``backbone.*``, ``neck.*``, ``bbox_head.*``) or a PowerSAM checkpoint. The ``backbone.*`` copy must match the
        shared encoder already loaded; a difference is reported, since the head was trained on that backbone."""
        from .. import checkpoint as ckpt_io

        state = ckpt_io.read_powersam_checkpoint(path)["state_dict"]
        head = {f"box_generator.{k}": v for k, v in state.items() if k.startswith(("neck.", "bbox_head."))}
        head.update({k: v for k, v in state.items() if k.startswith("box_generator.")})
        backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        ckpt_io.load_state_dict_strict(_Prefixed(self.box_generator, "box_generator."), head, source=str(path))
        if backbone:
            own = self.image_encoder.state_dict()
            shared = [k for k in backbone if k in own and own[k].shape == backbone[k].shape]
            diff = max((float((own[k].float() - backbone[k].float()).abs().max()) for k in shared), default=0.0)
            if diff > 0:
                logger.warning(
                    "%s: its backbone copy differs from the loaded image encoder (max |Δ| = %.3g); the encoder weights "
                    "are kept. Load a matching SAM checkpoint, or retrain the head on this encoder.",
                    path,
                    diff,
                )


class _Prefixed(nn.Module):
    """View a child module under a key prefix so the strict loader can name keys as they appear in the full model."""

    def __init__(self, module: nn.Module, prefix: str) -> None:
        super().__init__()
        setattr(self, prefix.rstrip("."), module)


class DecoupledPowerSAM(DetectSegmentModel):
    """Decoupled baseline: a separate YOLOX detector (``detector``, raw 0–255 input letterboxed to ``det_size`` with
    pad value 114) and a SAM-family segmenter (its own preprocessing). Two backbones per frame."""

    def __init__(self, sam: Sam, detector: nn.Module, det_size: int = 640, **detection: Any) -> None:
        super().__init__(sam, **detection)
        self.detector = detector
        self.det_size = int(det_size)

    def detector_input(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Letterbox an RGB uint8 image for YOLOX: 1×3×det×det float (0–255, pad 114) and the xyxy resize scales."""
        resize = ResizeLongestSide(self.det_size)
        resized = resize.apply_image(image)
        h, w = resized.shape[:2]
        canvas = np.full((self.det_size, self.det_size, 3), 114, dtype=np.uint8)
        canvas[:h, :w] = resized
        x = torch.from_numpy(canvas).permute(2, 0, 1)[None].float().to(self.pixel_mean.device)
        sy, sx = resize.axis_scales(image.shape[:2])
        return x, x.new_tensor([sx, sy, sx, sy])

    def _detect_stages(self, image, score_thr, nms_iou, max_det, timer):
        with timer("det_preprocess"):
            det_x, det_scale = self.detector_input(image)
        with timer("detector"):
            raw = self.detector(det_x)  # YOLOX.predict is this forward + bbox_head.predict
        with timer("detect"):
            dets = self.detector.bbox_head.predict(*raw, score_thr=score_thr, nms_iou=nms_iou, max_det=max_det)[0]
        with timer("preprocess"):
            x, input_size = self._sam_input(image)
        with timer("encoder"):
            embedding = self.image_encoder(x)
        with timer("detect"):  # detector input frame → SAM input frame, clamped to the real image area
            sy, sx = ResizeLongestSide(self.img_size).axis_scales(image.shape[:2])
            boxes = dets["boxes"] / det_scale * det_scale.new_tensor([sx, sy, sx, sy])
            h, w = input_size
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, h)
        return {**dets, "boxes": boxes}, embedding, input_size
