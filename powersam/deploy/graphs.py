"""Export wrappers: the ``nn.Module`` forms that :mod:`powersam.deploy.onnx_export` traces into ONNX graphs.

Three graphs, all taking the image already resized (long side = S), normalised and zero-padded to S×S, exactly as
:func:`powersam.transforms.preprocess_image` makes it (the runtime does that in NumPy):

* :class:`IntegratedGraph` — image → detections and their low-res masks in one graph: fused RepViT, YOLOX decoding,
  score threshold, class-aware NMS (ONNX ``NonMaxSuppression``), top-``max_det``, prompt encoder and mask decoder
  for however many boxes survive (possibly none).
* :class:`EncoderGraph` — image → image embedding (and the RepViT stage maps).
* :class:`DecoderGraph` — embedding + points/box corners/mask → low-res masks, SAM's ONNX decoder interface.

Masks stay low-resolution (4h×4w) in every graph: upsampling to the original size has a data-dependent output
size and N·H·W memory, so the runtime does it a chunk at a time.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models.repvit import RepViT, ResizeTo
from ..models.sam.mask_decoder import MaskDecoder, MultimaskOutput
from ..models.sam.prompt_encoder import PromptEncoder
from ..ops.boxes import nms
from ..runtime.metadata import HIGH_RES_NAMES

__all__ = [
    "DecoderGraph",
    "EncoderGraph",
    "ExportResize",
    "IntegratedGraph",
    "NonMaxSuppressionOp",
    "bicubic_upsample_2x",
    "encoder_upsample_mode",
    "inference_encoder",
    "mask_token_indices",
]

# Scores of a candidate under every class other than its own: below NMS_SCORE_FLOOR, so the ONNX op drops them,
# while real scores (products of sigmoids, ≥ 0) always stay above it — even a score of exactly 0 at score_thr 0.
OTHER_CLASS_SCORE = -1.0
NMS_SCORE_FLOOR = -0.5


class NonMaxSuppressionOp(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (opset ≥ 11) with a PyTorch forward of the same semantics, for tracing.

    Inputs: boxes 1×K×4 xyxy, scores 1×C×K, max_per_class int64 scalar, iou_threshold / score_threshold float
    scalars. Output: M×3 int64 rows (batch, class, box index), class by class, best score first within a class.
    A box is suppressed when its IoU with a kept box of the same class exceeds ``iou_threshold``.
    """

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class, iou_threshold, score_threshold):  # type: ignore[override]
        rows = []
        limit = int(max_per_class)
        for cls in range(scores.shape[1]):
            members = torch.nonzero(scores[0, cls] > score_threshold, as_tuple=False).flatten()
            kept = members[nms(boxes[0, members], scores[0, cls, members], float(iou_threshold))][:limit]
            rows.append(torch.stack([torch.zeros_like(kept), torch.full_like(kept, cls), kept], dim=1))
        return torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_threshold, score_threshold):
        # center_point_box=0: corners, in either order; the op treats (x1, y1, x2, y2) and (y1, x1, y2, x2) alike.
        return g.op("NonMaxSuppression", boxes, scores, max_per_class, iou_threshold, score_threshold)


def _cubic_weight(distance: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel with PyTorch's a = −0.75."""
    d = abs(distance)
    if d <= 1:
        return ((a + 2) * d - (a + 3)) * d * d + 1
    return (((d - 5) * d + 8) * d - 4) * a if d < 2 else 0.0


# Taps over the 5-wide window [i−2, i+2] for output 2i (source i − ¼) and 2i+1 (source i + ¼) of an exact ×2
# upsampling with half-pixel centres.
_BICUBIC_2X_TAPS = torch.tensor(
    [
        [_cubic_weight(1.75), _cubic_weight(0.75), _cubic_weight(0.25), _cubic_weight(1.25), 0.0],
        [0.0, _cubic_weight(1.25), _cubic_weight(0.25), _cubic_weight(0.75), _cubic_weight(1.75)],
    ]
)


def bicubic_upsample_2x(x: torch.Tensor) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)`` as edge padding, one depthwise 5×5
    convolution producing the four output phases, and a pixel shuffle (ONNX ``DepthToSpace``).

    Exact up to float rounding (PyTorch clamps source indices at the border, i.e. edge replication). ONNX Runtime's
    cubic ``Resize`` takes ~10% of the whole integrated graph at 1024 on one CPU thread; this form costs a
    depthwise convolution, and TensorRT and other runtimes without cubic resize run it too.
    """
    channels = x.shape[1]
    phases = torch.einsum("yi,xj->yxij", _BICUBIC_2X_TAPS, _BICUBIC_2X_TAPS).reshape(4, 1, 5, 5).to(x)
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    return F.pixel_shuffle(F.conv2d(padded, phases.repeat(channels, 1, 1, 1), groups=channels), 2)


class ExportResize(ResizeTo):
    """``ResizeTo`` that runs an exact ×2 bicubic upsampling as :func:`bicubic_upsample_2x`."""

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.mode == "bicubic" and tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1]):
            return bicubic_upsample_2x(x)
        return super().forward(x, size)


def inference_encoder(image_encoder: nn.Module, upsample_mode: str | None = None) -> nn.Module:
    """A deep copy of the image encoder in its inference form (RepViT: BatchNorm folded, RepVGG branches merged).

    The copy keeps the caller's model untouched (its state dict still matches the checkpoints). ``upsample_mode``
    swaps RepViT's fuse-neck interpolation (e.g. ``"bilinear"`` for runtimes without cubic ``Resize``); the weights
    were trained with bicubic, so the embedding changes slightly.
    """
    encoder = copy.deepcopy(image_encoder).eval()
    if upsample_mode is not None and not isinstance(encoder, RepViT):
        raise ValueError(f"upsample_mode only applies to RepViT encoders, not {type(encoder).__name__}")
    if isinstance(encoder, RepViT):
        encoder.fuse_stage3.op_list[1] = ExportResize(upsample_mode or encoder_upsample_mode(encoder))
    if hasattr(encoder, "reparameterize"):
        encoder.reparameterize()
    return encoder


def encoder_upsample_mode(image_encoder: nn.Module) -> str | None:
    """The fuse-neck interpolation of a RepViT encoder (None for other encoders)."""
    return image_encoder.fuse_stage3.op_list[1].mode if isinstance(image_encoder, RepViT) else None


def uses_high_res_features(image_encoder: nn.Module) -> bool:
    """A SAM 2 encoder whose decoder needs the stride-4/8 features besides the embedding."""
    return hasattr(image_encoder, "forward_with_high_res") and bool(getattr(image_encoder, "use_high_res_features",
                                                                             False))


class EncoderGraph(nn.Module):
    """``image`` 1×3×S×S → ``image_embeddings`` 1×256×S/16×S/16, plus ``stage1..3`` for a multi-scale (RepViT)
    encoder or ``high_res_feats_0`` 1×32×S/4×S/4 and ``high_res_feats_1`` 1×64×S/8×S/8 for SAM 2."""

    def __init__(self, image_encoder: nn.Module, upsample_mode: str | None = None) -> None:
        super().__init__()
        self.encoder = inference_encoder(image_encoder, upsample_mode)
        self.multiscale = hasattr(self.encoder, "forward_multiscale")
        self.high_res = uses_high_res_features(self.encoder)

    @property
    def output_names(self) -> list[str]:
        if self.multiscale:
            return ["image_embeddings", "stage1", "stage2", "stage3"]
        return ["image_embeddings", *HIGH_RES_NAMES] if self.high_res else ["image_embeddings"]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.multiscale:
            stage1, stage2, stage3, embedding = self.encoder.forward_multiscale(image)
            return embedding, stage1, stage2, stage3
        if self.high_res:
            embedding, (feat_s0, feat_s1) = self.encoder.forward_with_high_res(image)
            return embedding, feat_s0, feat_s1
        return (self.encoder(image),)


def mask_token_indices(mask_decoder: MaskDecoder, multimask_output: MultimaskOutput | None) -> list[int]:
    """Mask-token indices a decoder graph returns: all of them for ``None``, else the decoder's selection."""
    if multimask_output is None:
        return list(range(mask_decoder.num_mask_tokens))
    return list(range(mask_decoder.num_mask_tokens))[mask_decoder.output_slice(multimask_output)]


class DecoderGraph(nn.Module):
    """SAM's ONNX decoder interface (without SAM's in-graph upsampling).

    Inputs:
        image_embeddings 1×256×h×w; point_coords B×K×2 float (x, y) in the input frame (the resized image);
        point_labels B×K float: 1 positive, 0 negative, −1 padding, −2 ignored, 2/3 box top-left/bottom-right
        corner (a box is two points); mask_input B×1×4h×4w (or 1×1×4h×4w, broadcast) low-res logits;
        has_mask_input [1] float, 1 to use ``mask_input``, 0 to use ``no_mask_embed``.
        No padding point is appended here: SAM appends one when there is no box, and so must the caller.
        SAM 2 decoders (``high_res``) also take high_res_feats_0 1×32×4h×4w and high_res_feats_1 1×64×2h×2w.
    Outputs:
        masks B×M×4h×4w low-res logits and iou_predictions B×M for the mask tokens ``token_indices`` (M of them).
        SAM 2's single-mask fallback to the most stable multimask output is the caller's (it needs all tokens).
    """

    def __init__(
        self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, multimask_output: MultimaskOutput | None
    ) -> None:
        super().__init__()
        self.prompt_encoder = copy.deepcopy(prompt_encoder).eval()
        self.mask_decoder = copy.deepcopy(mask_decoder).eval()
        self.token_indices = mask_token_indices(self.mask_decoder, multimask_output)
        self.high_res = bool(getattr(self.mask_decoder, "use_high_res_features", False))

    @property
    def input_names(self) -> list[str]:
        names = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
        return [*names, *HIGH_RES_NAMES] if self.high_res else names

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        *high_res_features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Same tokens as PromptEncoder.forward; box corners arrive as labelled points (labels 2 and 3).
        sparse = self.prompt_encoder._embed_points(point_coords, point_labels, pad=False)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask_input * self.prompt_encoder._embed_masks(mask_input) + (1 - has_mask_input) * no_mask
        first, last = self.token_indices[0], self.token_indices[-1] + 1
        # SAM's decoder computes only the returned tokens' masks; SAM 2's takes its high-resolution features instead
        extra = {"high_res_features": high_res_features} if self.high_res else {"token_slice": slice(first, last)}
        outputs = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            **extra,
        )
        masks, iou_predictions = outputs[0], outputs[1]  # SAM 2 also returns object-score logits
        if self.high_res:
            return masks[:, first:last], iou_predictions[:, first:last]
        return masks, iou_predictions


class _DetectSegmentGraph(nn.Module):
    """What the integrated and decoupled graphs share: YOLOX decoding + NMS inside the graph, and box-prompted
    mask decoding of the detections (token 0, the single-mask output)."""

    output_names = ["boxes", "scores", "labels", "mask_logits", "image_embeddings"]

    def __init__(self, model: nn.Module, bbox_head: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = copy.deepcopy(model.prompt_encoder).eval()
        self.mask_decoder = copy.deepcopy(model.mask_decoder).eval()
        self.num_classes = bbox_head.num_classes

    def detect(
        self,
        bbox_head: nn.Module,
        raw: Sequence[Sequence[torch.Tensor]],
        score_thr: torch.Tensor,
        nms_iou: torch.Tensor,
        max_det: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """YOLOX outputs → (boxes N×4, scores N, labels N) as ``YOLOXHead.predict`` orders them."""
        boxes, class_scores, objectness = bbox_head.decode(*raw)
        best, labels = class_scores[0].max(dim=-1)
        scores = best * objectness[0]
        # Non-finite boxes (an overflowing exp) never survive the PyTorch NMS; ONNX NMS would keep them.
        valid = (scores >= score_thr) & torch.isfinite(boxes[0]).all(dim=-1)
        candidates = torch.nonzero(valid, as_tuple=False).flatten()
        cand_boxes, cand_scores, cand_labels = boxes[0, candidates], scores[candidates], labels[candidates]
        # One NMS class row per label: a candidate scores under its own class only.
        classes = torch.arange(self.num_classes, device=labels.device)[:, None]
        other_class = torch.full_like(cand_scores, OTHER_CLASS_SCORE)
        per_class = torch.where(cand_labels[None] == classes, cand_scores[None], other_class)
        # Only the best max_det of a class can reach the overall top max_det, so that caps the op per class.
        selected = NonMaxSuppressionOp.apply(
            cand_boxes[None], per_class[None], max_det.reshape(1), nms_iou.reshape(1),
            torch.full((1,), NMS_SCORE_FLOOR),
        )
        # Rank by score, equal scores by candidate index (= YOLOXHead.predict's order): sort the indices first, then
        # by score; ONNX TopK breaks ties by lower position, so the second sort acts as a stable one.
        kept = torch.sort(selected[:, 2]).values
        order = torch.sort(cand_scores[kept], descending=True).indices
        kept = kept[order][:max_det]
        return cand_boxes[kept], cand_scores[kept], cand_labels[kept]

    def segment(
        self, boxes: torch.Tensor, input_size: torch.Tensor, embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clamp boxes (segmenter input frame) to the resized image and decode one mask each → (boxes, logits)."""
        # Boxes may reach into the padding; SAM should only see the real image area.
        height, width = input_size[0].to(boxes.dtype), input_size[1].to(boxes.dtype)
        limits = torch.stack([width, height, width, height])
        boxes = torch.minimum(torch.clamp(boxes, min=0), limits)
        # One dummy prompt rides along so the decoder never sees an empty batch (ONNX Runtime's Reshape rejects
        # 0×C×-1 inside the transformer; empty batches are a weak spot of other engines too). Dropped again below.
        prompts = torch.cat([boxes, boxes.new_zeros((1, 4))])
        sparse, dense = self.prompt_encoder(points=None, boxes=prompts, masks=None)
        mask_logits, _ = self.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return boxes, mask_logits[:-1]


class IntegratedGraph(_DetectSegmentGraph):
    """Integrated PowerSAM as one graph: image → detections with low-res masks.

    Inputs:
        image 1×3×S×S (normalised, zero-padded); input_size int64 [2] = (h, w) of the resized image inside it
        (boxes are clamped to it before prompting SAM, as ``PowerSAM.predict`` does); score_thr float scalar
        (keep score ≥ it); nms_iou float scalar (suppress IoU > it, same class); max_det int64 scalar.
    Outputs:
        boxes N×4 xyxy in the input frame (clamped), scores N, labels N int64 (best score first), mask_logits
        N×1×4h×4w (token 0, the single-mask output), image_embeddings 1×256×h×w (for a follow-up decoder call).
        N ≤ max_det and may be 0.
    """

    def __init__(self, model: nn.Module, upsample_mode: str | None = None) -> None:
        if not hasattr(model, "box_generator") or not hasattr(model.image_encoder, "forward_multiscale"):
            raise TypeError(
                "IntegratedGraph needs an integrated PowerSAM (shared RepViT + box_generator), "
                f"got {type(model).__name__}"
            )
        super().__init__(model, model.box_generator.bbox_head)
        self.encoder = inference_encoder(model.image_encoder, upsample_mode)
        self.box_generator = copy.deepcopy(model.box_generator).eval()

    def forward(
        self,
        image: torch.Tensor,
        input_size: torch.Tensor,
        score_thr: torch.Tensor,
        nms_iou: torch.Tensor,
        max_det: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        stage1, stage2, stage3, embedding = self.encoder.forward_multiscale(image)
        raw = self.box_generator((stage1, stage2, stage3))
        boxes, scores, labels = self.detect(self.box_generator.bbox_head, raw, score_thr, nms_iou, max_det)
        boxes, mask_logits = self.segment(boxes, input_size, embedding)
        return boxes, scores, labels, mask_logits, embedding


class DecoupledGraph(_DetectSegmentGraph):
    """The decoupled baseline as one graph: a separate YOLOX detector and the segmenter, each on its own input.

    Inputs:
        image 1×3×S×S (the segmenter's: normalised, zero-padded); det_image 1×3×D×D (the detector's: raw 0–255
        pixels letterboxed with 114, as ``DecoupledPowerSAM.detector_input``); box_scale float [4]: factors
        (sx, sy, sx, sy) taking detector-input boxes to the segmenter input; input_size, score_thr, nms_iou,
        max_det as :class:`IntegratedGraph`.
    Outputs: as :class:`IntegratedGraph`. Two backbones run per frame, which is what the baseline measures.
    """

    def __init__(self, model: nn.Module, upsample_mode: str | None = None) -> None:
        if not hasattr(model, "detector"):
            raise TypeError(f"DecoupledGraph needs a decoupled model (a separate detector), got {type(model).__name__}")
        if getattr(model.mask_decoder, "use_high_res_features", False):
            raise TypeError("DecoupledGraph: SAM 2 segmenters are exported as interactive pairs only")
        super().__init__(model, model.detector.bbox_head)
        self.encoder = inference_encoder(model.image_encoder, upsample_mode)
        self.detector = copy.deepcopy(model.detector).eval()

    def forward(
        self,
        image: torch.Tensor,
        det_image: torch.Tensor,
        box_scale: torch.Tensor,
        input_size: torch.Tensor,
        score_thr: torch.Tensor,
        nms_iou: torch.Tensor,
        max_det: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        embedding = self.encoder(image)
        boxes, scores, labels = self.detect(self.detector.bbox_head, self.detector(det_image), score_thr, nms_iou,
                                            max_det)
        boxes, mask_logits = self.segment(boxes * box_scale, input_size, embedding)
        return boxes, scores, labels, mask_logits, embedding
