"""The reference flow for ``powersam bench --compare-reference``: SAM's interactive predictor, as published, in eager
PyTorch, on any network with SAM's module names.

Written from the SAM paper and the public description of Meta's ``SamPredictor`` (no code copied), so that the
bench can time the flow users of the original code get, next to PowerSAM's own paths, on the *same* weights:

1. ``set_image``: resize the long side to S with Pillow's bilinear filter (sizes rounded half-up), to a 1×3×h×w
   float tensor, normalise by the pixel mean / std, zero-pad bottom/right to S×S, run the image encoder once;
2. ``predict_boxes`` (``predict_torch`` with B boxes): boxes scaled per axis into the input frame; the prompt encoder
   (random Fourier features of the two corners plus the corner embeddings; the no-mask embedding broadcast to the
   grid; the grid's positional encoding recomputed on every call); the mask decoder as published, which **copies**
   the image embedding and its positional encoding once per prompt (``repeat_interleave``) and runs the two-way
   transformer, the transposed-convolution upscaling and the hypernetwork heads on every copy;
3. post-processing of every output: bilinear to the padded S×S square, crop to h×w, bilinear to H×W, then
   ``> threshold``.

Only the image encoder is called as a module (it *is* the network being compared; for the reference row it is the
official, not re-parameterised, RepViT). The prompt encoder and the mask decoder are re-stated here as functions of
the modules' weights, so that optimisations of PowerSAM's own decoder never leak into the reference row.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..inference.timing import StageTimer

__all__ = ["ReferenceSamPredictor"]


def _linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


def _attention(attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SAM's attention: q B×Nq×C, k / v B×Nk×C → B×Nq×C (heads split after the projections)."""
    heads = attn.num_heads

    def split(x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, heads, c // heads).transpose(1, 2)

    q, k, v = split(_linear(attn.q_proj, q)), split(_linear(attn.k_proj, k)), split(_linear(attn.v_proj, v))
    weights = torch.softmax(q @ k.permute(0, 1, 3, 2) / math.sqrt(q.shape[-1]), dim=-1)
    out = weights @ v
    b, h, n, c = out.shape
    return _linear(attn.out_proj, out.transpose(1, 2).reshape(b, n, h * c))


def _layer_norm(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _layer_norm_2d(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels of B×C×H×W, as SAM's LayerNorm2d."""
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + norm.eps)
    return norm.weight[:, None, None] * x + norm.bias[:, None, None]


def _two_way_transformer(tf: Any, image: torch.Tensor, image_pe: torch.Tensor,
                         tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """image / image_pe B×C×h×w, tokens B×Nt×C → (tokens B×Nt×C, image tokens B×hw×C)."""
    keys = image.flatten(2).permute(0, 2, 1)
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries = tokens
    for i, layer in enumerate(tf.layers):
        if i == 0:  # the first layer's self-attention replaces the tokens (its queries are their own PE)
            queries = _attention(layer.self_attn, queries, queries, queries)
        else:
            q = queries + tokens
            queries = queries + _attention(layer.self_attn, q, q, queries)
        queries = _layer_norm(layer.norm1, queries)
        q, k = queries + tokens, keys + key_pe
        queries = _layer_norm(layer.norm2, queries + _attention(layer.cross_attn_token_to_image, q, k, keys))
        mlp = layer.mlp
        queries = _layer_norm(layer.norm3, queries + _linear(mlp.lin2, torch.relu(_linear(mlp.lin1, queries))))
        q, k = queries + tokens, keys + key_pe
        keys = _layer_norm(layer.norm4, keys + _attention(layer.cross_attn_image_to_token, k, q, queries))
    q, k = queries + tokens, keys + key_pe
    queries = _layer_norm(tf.norm_final_attn, queries + _attention(tf.final_attn_token_to_image, q, k, keys))
    return queries, keys


class ReferenceSamPredictor:
    """SAM's predictor flow (see the module doc) on ``model`` (``image_encoder``, ``prompt_encoder``,
    ``mask_decoder`` with SAM's names, ``pixel_mean`` / ``pixel_std``, ``img_size``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.img_size = int(getattr(model, "img_size", None) or model.image_encoder.img_size)
        self.threshold = float(getattr(model, "mask_threshold", 0.0))
        self.features = None
        self.original_size = self.input_size = (0, 0)

    # ------------------------------------------------------------------ image
    @torch.no_grad()
    def set_image(self, rgb: np.ndarray, timer: Optional[StageTimer] = None) -> None:
        """H×W×3 uint8 RGB → the cached 1×C×e×e embedding (``preprocess`` and ``encoder`` timed on ``timer``)."""
        timer = timer if timer is not None else StageTimer()
        old_h, old_w = rgb.shape[:2]
        with timer("preprocess"):
            scale = self.img_size / max(old_h, old_w)
            new_h, new_w = int(old_h * scale + 0.5), int(old_w * scale + 0.5)
            resized = np.array(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
            x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None]
            x = (x - self.model.pixel_mean.reshape(-1, 1, 1)) / self.model.pixel_std.reshape(-1, 1, 1)
            x = F.pad(x, (0, self.img_size - new_w, 0, self.img_size - new_h))
        with timer("encoder"):
            self.features = self.model.image_encoder(x)
        self.original_size, self.input_size = (old_h, old_w), (new_h, new_w)

    # ------------------------------------------------------------------ prompts
    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """B×4 input-frame boxes → B×2×C corner tokens."""
        pe = self.model.prompt_encoder
        gaussian = pe.pe_layer.positional_encoding_gaussian_matrix
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        corners = corners / torch.tensor([self.img_size, self.img_size], dtype=corners.dtype)
        projected = 2 * math.pi * ((2 * corners - 1) @ gaussian)
        tokens = torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)
        tokens[:, 0, :] += pe.point_embeddings[2].weight[0]
        tokens[:, 1, :] += pe.point_embeddings[3].weight[0]
        return tokens

    def _dense_pe(self) -> torch.Tensor:
        """Positional encoding of the embedding grid, 1×C×e×e (recomputed per call, as published)."""
        pe = self.model.prompt_encoder
        h, w = pe.image_embedding_size
        gaussian = pe.pe_layer.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        projected = 2 * math.pi * ((2 * grid - 1) @ gaussian)
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1).permute(2, 0, 1)[None]

    def _decode(self, sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's mask decoder on B prompts → (low-res logits B×4×4e×4e, IoU B×4), every mask token."""
        dec = self.model.mask_decoder
        b = sparse.shape[0]
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens[None].expand(b, -1, -1), sparse), dim=1)
        src = torch.repeat_interleave(self.features, b, dim=0) + dense
        pos_src = torch.repeat_interleave(self._dense_pe(), b, dim=0)
        _, c, h, w = src.shape
        hs, src = _two_way_transformer(dec.transformer, src, pos_src, tokens)
        src = src.transpose(1, 2).reshape(b, c, h, w)
        up1, norm, act1, up2, act2 = dec.output_upscaling
        upscaled = act2(up2(act1(_layer_norm_2d(norm, up1(src)))))
        hyper = []
        for i, mlp in enumerate(dec.output_hypernetworks_mlps):
            x = hs[:, 1 + i, :]
            for j, layer in enumerate(mlp.layers):
                x = _linear(layer, x) if j == len(mlp.layers) - 1 else torch.relu(_linear(layer, x))
            hyper.append(x)
        _, cu, hu, wu = upscaled.shape
        masks = (torch.stack(hyper, dim=1) @ upscaled.reshape(b, cu, hu * wu)).reshape(b, -1, hu, wu)
        iou = hs[:, 0, :]
        for j, layer in enumerate(dec.iou_prediction_head.layers):
            iou = _linear(layer, iou) if j == len(dec.iou_prediction_head.layers) - 1 else torch.relu(_linear(layer, iou))
        return masks, iou

    @torch.no_grad()
    def predict_boxes(self, boxes: np.ndarray, timer: Optional[StageTimer] = None) -> tuple[np.ndarray, np.ndarray]:
        """N×4 xyxy boxes in original pixels → (bool masks N×1×H×W, IoU N×1): single-mask output, one batched call
        (``decoder`` and ``postprocess`` timed on ``timer``)."""
        if self.features is None:
            raise RuntimeError("call set_image first")
        timer = timer if timer is not None else StageTimer()
        (old_h, old_w), (new_h, new_w) = self.original_size, self.input_size
        with timer("decoder"):
            scaled = np.asarray(boxes, dtype=np.float64).reshape(-1, 2, 2) * np.array([new_w / old_w, new_h / old_h])
            box_t = torch.as_tensor(scaled.reshape(-1, 4), dtype=torch.float32)
            sparse = self._embed_boxes(box_t)
            no_mask = self.model.prompt_encoder.no_mask_embed.weight
            grid = self.model.prompt_encoder.image_embedding_size
            dense = no_mask.reshape(1, -1, 1, 1).expand(sparse.shape[0], -1, *grid)
            low_res, iou = self._decode(sparse, dense)
            low_res, iou = low_res[:, :1], iou[:, :1]
        with timer("postprocess"):
            masks = F.interpolate(low_res, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
            masks = masks[..., :new_h, :new_w]
            masks = F.interpolate(masks, (old_h, old_w), mode="bilinear", align_corners=False)
            masks = (masks > self.threshold).numpy()
        return masks, iou.numpy()
