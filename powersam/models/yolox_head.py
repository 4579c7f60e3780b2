"""YOLOX decoupled detection head (mmdet 3.x ``YOLOXHead`` names), box decoding and test-time post-processing."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..ops.boxes import batched_nms
from .cspdarknet import ConvModule

__all__ = ["YOLOXHead", "decode_yolox_boxes", "yolox_grid_priors"]

# Prior probability 0.01 for every class/objectness logit at init, so early training is not swamped by
# confident negatives (focal-loss style bias init).
PRIOR_PROBABILITY = 0.01


def yolox_grid_priors(
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Anchor points of all levels, P×4 rows (x, y, stride_x, stride_y) with x = col·s, y = row·s (no 0.5 offset).

    Points run level by level, row-major inside a level, matching ``feature.flatten(2)``. P = Σ h_l·w_l.
    """
    priors = []
    for (height, width), stride in zip(featmap_sizes, strides):
        xs = torch.arange(width, dtype=dtype, device=device) * stride
        ys = torch.arange(height, dtype=dtype, device=device) * stride
        xs = xs.view(1, -1).expand(height, width).reshape(-1)
        ys = ys.view(-1, 1).expand(height, width).reshape(-1)
        strides_column = torch.full_like(xs, float(stride))
        priors.append(torch.stack((xs, ys, strides_column, strides_column), dim=-1))
    return torch.cat(priors, dim=0)


# A box side of 10⁴ strides is far beyond any image; the clamp only stops exp() overflowing to inf (float32 at 88.7,
# float16 at 11.1), which would turn the IoU loss's gradient into NaN and poison every weight in one update.
MAX_LOG_SIZE = math.log(1e4)


def decode_yolox_boxes(priors: torch.Tensor, bbox_preds: torch.Tensor) -> torch.Tensor:
    """Raw regression → xyxy boxes in input pixels.

    Args:
        priors: P×4 (x, y, stride_x, stride_y) from :func:`yolox_grid_priors`.
        bbox_preds: B×P×4 raw outputs (dx, dy, log_w, log_h) in stride units.

    Returns:
        B×P×4 boxes: centre = (dx, dy)·s + prior, size = exp(min(log_wh, MAX_LOG_SIZE))·s.
    """
    centres = bbox_preds[..., :2] * priors[:, 2:] + priors[:, :2]
    half_sizes = 0.5 * bbox_preds[..., 2:].clamp(max=MAX_LOG_SIZE).exp() * priors[:, 2:]
    return torch.cat((centres - half_sizes, centres + half_sizes), dim=-1)


class YOLOXHead(nn.Module):
    """Per level: two towers of ``stacked_convs`` 3×3 ConvModules (``multi_level_cls_convs``, ``multi_level_reg_convs``)
    and 1×1 predictors with bias: ``multi_level_conv_cls`` (classes, on the cls tower), ``multi_level_conv_reg`` (4)
    and ``multi_level_conv_obj`` (1), both on the reg tower. Weights are not shared between levels.

    ``forward`` takes L maps B×in_channels×h_l×w_l and returns three lists of L maps: class logits B×C×h×w,
    box regressions B×4×h×w and objectness logits B×1×h×w.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        feat_channels: int = 256,
        stacked_convs: int = 2,
        strides: Sequence[int] = (8, 16, 32),
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.strides = tuple(strides)

        self.multi_level_cls_convs = nn.ModuleList()
        self.multi_level_reg_convs = nn.ModuleList()
        self.multi_level_conv_cls = nn.ModuleList()
        self.multi_level_conv_reg = nn.ModuleList()
        self.multi_level_conv_obj = nn.ModuleList()
        for _ in self.strides:
            self.multi_level_cls_convs.append(self._tower(stacked_convs))
            self.multi_level_reg_convs.append(self._tower(stacked_convs))
            self.multi_level_conv_cls.append(nn.Conv2d(feat_channels, num_classes, 1))
            self.multi_level_conv_reg.append(nn.Conv2d(feat_channels, 4, 1))
            self.multi_level_conv_obj.append(nn.Conv2d(feat_channels, 1, 1))
        self.reset_parameters()

    def _tower(self, depth: int) -> nn.Sequential:
        widths = [self.in_channels] + [self.feat_channels] * (depth - 1)
        return nn.Sequential(*[ConvModule(width, self.feat_channels, 3) for width in widths])

    def reset_parameters(self) -> None:
        """mmdet's init: conv weights Kaiming-uniform(a=√5) (torch's default), conv biases 0, cls/obj at the prior."""
        prior_bias = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
        for conv in self.multi_level_conv_reg:
            nn.init.zeros_(conv.bias)
        for conv_cls, conv_obj in zip(self.multi_level_conv_cls, self.multi_level_conv_obj):
            nn.init.constant_(conv_cls.bias, prior_bias)
            nn.init.constant_(conv_obj.bias, prior_bias)

    def forward(
        self, feats: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        if len(feats) != len(self.strides):
            raise ValueError(f"YOLOXHead expects {len(self.strides)} feature maps (one per stride), got {len(feats)}")
        cls_scores, bbox_preds, objectnesses = [], [], []
        for level, feat in enumerate(feats):
            if feat.dim() != 4 or feat.shape[1] != self.in_channels:
                raise ValueError(
                    f"YOLOXHead input {level} must be B×{self.in_channels}×H×W, got shape {tuple(feat.shape)}"
                )
            cls_feat = self.multi_level_cls_convs[level](feat)
            reg_feat = self.multi_level_reg_convs[level](feat)
            cls_scores.append(self.multi_level_conv_cls[level](cls_feat))
            bbox_preds.append(self.multi_level_conv_reg[level](reg_feat))
            objectnesses.append(self.multi_level_conv_obj[level](reg_feat))
        return cls_scores, bbox_preds, objectnesses

    def decode(
        self,
        cls_scores: Sequence[torch.Tensor],
        bbox_preds: Sequence[torch.Tensor],
        objectnesses: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw head outputs → dense predictions over all P = Σ h_l·w_l points (no thresholding, no NMS).

        Only tensor ops and a loop over the levels, so it traces into a static ONNX graph.

        Returns:
            boxes B×P×4 xyxy in network-input pixels, class_scores B×P×C (sigmoid), objectness B×P (sigmoid).
        """
        check_head_outputs(cls_scores, bbox_preds, objectnesses, self.num_classes, len(self.strides))
        featmap_sizes = [tuple(cls.shape[-2:]) for cls in cls_scores]
        priors = yolox_grid_priors(featmap_sizes, self.strides, cls_scores[0].dtype, cls_scores[0].device)
        flat_cls = torch.cat([cls.flatten(2).transpose(1, 2) for cls in cls_scores], dim=1)
        flat_box = torch.cat([box.flatten(2).transpose(1, 2) for box in bbox_preds], dim=1)
        flat_obj = torch.cat([obj.flatten(1) for obj in objectnesses], dim=1)
        boxes = decode_yolox_boxes(priors, flat_box)
        return boxes, flat_cls.sigmoid(), flat_obj.sigmoid()

    @torch.no_grad()
    def predict(
        self,
        cls_scores: Sequence[torch.Tensor],
        bbox_preds: Sequence[torch.Tensor],
        objectnesses: Sequence[torch.Tensor],
        score_thr: float = 0.5,
        nms_iou: float = 0.65,
        max_det: int | None = 100,
    ) -> list[dict[str, torch.Tensor]]:
        """Decode, threshold and run class-aware NMS, per image.

        score = max_c σ(cls_c) · σ(obj), kept when ≥ ``score_thr``; label = argmax_c. After NMS (IoU > ``nms_iou``
        suppresses) at most ``max_det`` detections are kept, best first. ``max_det=None`` keeps them all, which is
        what the PowerSAM/mmdet test config does.

        Returns:
            one dict per image: ``boxes`` N×4 float xyxy in network-input pixels, ``scores`` N float,
            ``labels`` N int64. N may be 0 (tensors of shape 0×4 / 0 / 0).
        """
        if max_det is not None and max_det < 0:
            raise ValueError(f"max_det must be non-negative or None, got {max_det}")
        boxes, class_scores, objectness = self.decode(cls_scores, bbox_preds, objectnesses)
        best_class_scores, labels = class_scores.max(dim=-1)
        scores = best_class_scores * objectness
        results = []
        for image_boxes, image_scores, image_labels in zip(boxes, scores, labels):
            candidates = torch.nonzero(image_scores >= score_thr, as_tuple=False).flatten()
            kept = candidates[
                batched_nms(image_boxes[candidates], image_scores[candidates], image_labels[candidates], nms_iou)
            ]
            if max_det is not None:
                kept = kept[:max_det]
            labels_kept = image_labels[kept].to(torch.int64)
            results.append({"boxes": image_boxes[kept], "scores": image_scores[kept], "labels": labels_kept})
        return results


def check_head_outputs(
    cls_scores: Sequence[torch.Tensor],
    bbox_preds: Sequence[torch.Tensor],
    objectnesses: Sequence[torch.Tensor],
    num_classes: int,
    num_levels: int,
) -> list[tuple[int, int]]:
    """Validate per-level head outputs (B×C×h×w, B×4×h×w, B×1×h×w); returns the (h, w) of each level."""
    if not len(cls_scores) == len(bbox_preds) == len(objectnesses) == num_levels:
        raise ValueError(
            f"expected {num_levels} levels of head outputs, got {len(cls_scores)} cls, {len(bbox_preds)} bbox, "
            f"{len(objectnesses)} objectness maps"
        )
    sizes = []
    for level, (cls, box, obj) in enumerate(zip(cls_scores, bbox_preds, objectnesses)):
        if cls.dim() != 4:
            raise ValueError(f"level {level} cls output must be B×C×H×W, got shape {tuple(cls.shape)}")
        batch, _, height, width = cls.shape
        expected = {"cls": (batch, num_classes, height, width), "bbox": (batch, 4, height, width),
                    "objectness": (batch, 1, height, width)}
        for name, tensor in (("cls", cls), ("bbox", box), ("objectness", obj)):
            if tuple(tensor.shape) != expected[name]:
                raise ValueError(
                    f"level {level} {name} output must have shape {expected[name]}, got {tuple(tensor.shape)}"
                )
        sizes.append((int(height), int(width)))
    return sizes
