"""SAM's prompt encoder: points and boxes → sparse tokens, a low-res mask → a dense embedding.

Module and buffer names (``pe_layer.positional_encoding_gaussian_matrix``, ``point_embeddings.{0..3}``,
``not_a_point_embed``, ``mask_downscaling.{0,1,3,4,6}``, ``no_mask_embed``) match Meta's ``PromptEncoder``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from ..common import LayerNorm2d
from .transformer import eager_inference

# Point labels understood by the encoder. 0..3 select ``point_embeddings[label]``: 0 negative click, 1 positive click,
# 2/3 the top-left / bottom-right corner of a box given as two points (SAM's ONNX export feeds boxes this way).
PADDING_LABEL = -1  # not a point: the position is dropped and ``not_a_point_embed`` is used
IGNORED_LABEL = -2  # EdgeSAM/PowerSAM extension: an ignored click whose token is all zeros


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of 2-D positions: u = (2p−1)·G, embedding = [sin 2πu, cos 2πu].

    ``positional_encoding_gaussian_matrix`` (2×num_pos_feats) is a persistent buffer: it is part of SAM checkpoints.
    """

    def __init__(self, num_pos_feats: int = 64, scale: Optional[float] = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def encode_unit_coords(self, coords: torch.Tensor) -> torch.Tensor:
        """coords: ...×2 as (x, y) in [0, 1] → ...×(2·num_pos_feats)."""
        projected = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        projected = 2 * math.pi * projected
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    # Name used by segment-anything (its ONNX wrapper calls it directly).
    _pe_encoding = encode_unit_coords

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an h×w grid → C×h×w."""
        height, width = size
        matrix = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(height, device=matrix.device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=matrix.device, dtype=torch.float32) + 0.5) / width
        grid = torch.stack(
            [xs[None, :].expand(height, width), ys[:, None].expand(height, width)], dim=-1
        )  # h×w×2 in (x, y) order
        return self.encode_unit_coords(grid.to(matrix.dtype)).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """coords_input: B×N×2 pixel coordinates (x, y) in an image of size (H, W) → B×N×C."""
        height, width = image_size
        coords = coords_input.to(self.positional_encoding_gaussian_matrix.dtype)
        coords = torch.stack([coords[..., 0] / width, coords[..., 1] / height], dim=-1)
        return self.encode_unit_coords(coords)


class PromptEncoder(nn.Module):
    """Encodes prompts for SAM's mask decoder.

    Args:
        embed_dim: token width (256 in SAM).
        image_embedding_size: (h, w) of the image embedding (64×64 for a 1024 input).
        input_image_size: (H, W) of the padded encoder input, the frame point/box coordinates live in.
        mask_in_chans: hidden channels of the mask branch (16 in SAM).
        activation: activation of the mask branch.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        if embed_dim % 2 != 0:
            raise ValueError(f"PromptEncoder: embed_dim must be even (sin/cos halves), got {embed_dim}")
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        self.num_point_embeddings = 4  # negative point, positive point, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, 1×embed_dim×h×w (the key PE of the decoder).

        It depends only on the Gaussian matrix and the grid, so inference reuses it (~10 ms a decoder call at a 64×64
        grid on one CPU thread) until the matrix changes: a new tensor (``.to()``, ``.half()``) or new values
        (``load_state_dict``, any in-place write bumps its version). Read-only: callers must not write into it.
        """
        if not eager_inference():
            return self.pe_layer(self.image_embedding_size).unsqueeze(0)
        matrix = self.pe_layer.positional_encoding_gaussian_matrix
        key = (matrix._version, tuple(self.image_embedding_size))
        cached = getattr(self, "_dense_pe_cache", None)  # (the matrix object itself, key, encoding)
        if cached is None or cached[0] is not matrix or cached[1] != key:
            cached = (matrix, key, self.pe_layer(self.image_embedding_size).unsqueeze(0))
            self._dense_pe_cache = cached
        return cached[2]

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """points B×N×2 (pixels), labels B×N → B×(N+pad)×embed_dim."""
        points = points + 0.5  # pixel centre
        if pad:
            # A trailing not-a-point token; SAM was trained with it whenever no box is given.
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), PADDING_LABEL)], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        has_no_position = (labels == PADDING_LABEL) | (labels == IGNORED_LABEL)
        embedding = torch.where(has_no_position, torch.zeros_like(embedding), embedding)
        embedding = embedding + (labels == PADDING_LABEL) * self.not_a_point_embed.weight
        for label, label_embedding in enumerate(self.point_embeddings):
            embedding = embedding + (labels == label) * label_embedding.weight
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes B×4 (x0, y0, x1, y1 pixels) → B×2×embed_dim (one token per corner)."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_types = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return embedding + corner_types[None]

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """masks B×1×4h×4w (logits) → B×embed_dim×h×w."""
        return self.mask_downscaling(masks)

    def _check_inputs(
        self,
        points: Optional[Sequence[torch.Tensor]],
        boxes: Optional[torch.Tensor],
        masks: Optional[torch.Tensor],
    ) -> int:
        """Validate prompt shapes and return the prompt batch size B."""
        batch_sizes: dict[str, int] = {}
        if points is not None:
            if not isinstance(points, (tuple, list)) or len(points) != 2:
                raise ValueError("PromptEncoder: points must be a (coords, labels) pair or None")
            coords, labels = points
            if coords.ndim != 3 or coords.shape[-1] != 2:
                raise ValueError(f"PromptEncoder: point coords must be B×N×2, got shape {tuple(coords.shape)}")
            if labels.ndim != 2 or tuple(labels.shape) != tuple(coords.shape[:2]):
                raise ValueError(
                    f"PromptEncoder: point labels must be B×N = {tuple(coords.shape[:2])} to match coords "
                    f"{tuple(coords.shape)}, got shape {tuple(labels.shape)}"
                )
            batch_sizes["points"] = coords.shape[0]
        if boxes is not None:
            if not (boxes.ndim == 2 and boxes.shape[1] == 4) and not (boxes.ndim == 3 and boxes.shape[1:] == (1, 4)):
                raise ValueError(f"PromptEncoder: boxes must be B×4 (or B×1×4), got shape {tuple(boxes.shape)}")
            batch_sizes["boxes"] = boxes.shape[0]
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(f"PromptEncoder: points and boxes disagree on the prompt batch size: {batch_sizes}")
        batch = next(iter(batch_sizes.values()), None)
        if masks is not None:
            expected = (1, *self.mask_input_size)
            if masks.ndim != 4 or tuple(masks.shape[1:]) != expected:
                raise ValueError(
                    f"PromptEncoder: masks must be B×{expected[0]}×{expected[1]}×{expected[2]}, "
                    f"got shape {tuple(masks.shape)}"
                )
            if batch is None:
                batch = masks.shape[0]
            elif masks.shape[0] not in (batch, 1):
                raise ValueError(
                    f"PromptEncoder: masks batch {masks.shape[0]} must be 1 or the prompt batch size {batch}"
                )
        return 1 if batch is None else batch

    def forward(
        self,
        points: Optional[tuple[torch.Tensor, torch.Tensor]],
        boxes: Optional[torch.Tensor],
        masks: Optional[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the prompts of B objects (B from whichever prompt is given; 1 if none is).

        Args:
            points: (coords B×N×2 in input-image pixels (x, y), labels B×N) or None. Labels: 1 positive, 0 negative,
                −1 padding (not a point), −2 ignored (zero token), 2/3 box corners given as points.
                When ``boxes`` is None one padding point is appended, as in SAM.
            boxes: B×4 (x0, y0, x1, y1) in input-image pixels, or None. Each box gives 2 corner tokens.
            masks: B×1×4h×4w low-res mask logits, or None (then ``no_mask_embed`` is broadcast). A batch of 1 is
                allowed with B prompts; the decoder broadcasts it.
        Returns:
            sparse: B×K×embed_dim with K = N (+1 padding if no boxes) + 2·(boxes given).
            dense: B×embed_dim×h×w.
        """
        batch = self._check_inputs(points, boxes, masks)
        weight = self.no_mask_embed.weight
        sparse_parts = []
        if points is not None:
            coords, labels = points
            sparse_parts.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            sparse_parts.append(self._embed_boxes(boxes))
        if sparse_parts:
            sparse = torch.cat(sparse_parts, dim=1)
        else:
            sparse = weight.new_empty((batch, 0, self.embed_dim))

        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            dense = weight.reshape(1, -1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse, dense
