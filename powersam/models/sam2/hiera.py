"""Hiera trunk of SAM 2 (the "hieradet" variant): a four-stage hierarchical ViT with windowed attention.

Layout (names match Meta's ``sam2`` trunk except the block MLP, see below):

* ``patch_embed.proj``: Conv2d 3→C, kernel 7, stride 4, padding 3 → B×H/4×W/4×C tokens (channels last).
* ``pos_embed`` (1×C×bh×bw, bicubically resized to the token grid) + ``pos_embed_window`` (1×C×w0×w0, tiled),
  the "windowed" absolute position embedding of Bolya et al. 2023.
* ``blocks.{i}``: pre-norm transformer blocks. The first block of stages 2–4 doubles the width and the heads and
  max-pools its queries 2×2 (``q_stride``), so stage s runs at stride 4·2^(s−1). Blocks attend inside
  non-overlapping windows (``window_spec`` per stage) except the ``global_att_blocks``.
* The block MLP is the shared :class:`~powersam.models.common.MLPBlock` (``mlp.lin1``/``mlp.lin2``); Meta's
  checkpoints call these ``mlp.layers.0``/``mlp.layers.1``, and
  :func:`powersam.models.sam2.build.convert_sam2_state_dict` renames them.

``forward`` returns the last feature map of every stage, high resolution first: for a 1024² input and
hiera_t, 96×256², 192×128², 384×64², 768×32².
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..common import MLPBlock


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """B×H×W×C → (B·nW)×window×window×C, zero-padding H and W up to multiples of ``window``.

    Returns the windows and the padded size (Hp, Wp).
    """
    batch, height, width, channels = x.shape
    pad_h, pad_w = -height % window, -width % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.view(batch, padded_h // window, window, padded_w // window, window, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels)
    return windows, (padded_h, padded_w)


def window_unpartition(
    windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B·nW)×window×window×C → B×H×W×C with the padding cropped."""
    padded_h, padded_w = padded_hw
    height, width = hw
    grid_h, grid_w = padded_h // window, padded_w // window
    batch = windows.shape[0] // (grid_h * grid_w)
    x = windows.reshape(batch, grid_h, grid_w, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    return x[:, :height, :width, :]


def _pool_channels_last(x: torch.Tensor, stride: Optional[tuple[int, int]]) -> torch.Tensor:
    """Max-pool a B×H×W×C map with kernel = stride (no-op for stride None)."""
    if stride is None:
        return x
    return F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride).permute(0, 2, 3, 1)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability ``rate`` (training only)."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: Conv2d(3→C, k7, s4, p3); B×3×H×W → B×H/4×W/4×C (channels last)."""

    def __init__(
        self, embed_dim: int, in_chans: int = 3, kernel_size: int = 7, stride: int = 4, padding: int = 3
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention on a B×H×W×dim map that can pool its queries (and so its output) by ``q_stride``.

    Children: ``qkv`` Linear(dim → 3·dim_out), ``proj`` Linear(dim_out → dim_out). Scale: head_dim^−½.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: Optional[tuple[int, int]] = None) -> None:
        super().__init__()
        if dim_out % num_heads != 0:
            raise ValueError(f"MultiScaleAttention: dim_out={dim_out} is not divisible by num_heads={num_heads}")
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×H×W×dim → B×H'×W'×dim_out (H' = H / q_stride when pooling)."""
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)  # each B×HW×heads×head_dim
        if self.q_stride is not None:
            q = _pool_channels_last(q.reshape(batch, height, width, -1), self.q_stride)
            height, width = q.shape[1:3]
            q = q.reshape(batch, height * width, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).reshape(batch, height, width, -1)
        return self.proj(out)


class MultiScaleBlock(nn.Module):
    """Pre-norm Hiera block: (windowed) attention with optional query pooling, then an MLP.

    When the width changes (first block of a stage) the shortcut is ``proj(norm1(x))`` pooled like the queries.
    ``window_size`` 0 means global attention.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        q_stride: Optional[tuple[int, int]] = None,
        window_size: int = 0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if q_stride is not None and window_size > 0 and window_size % q_stride[0] != 0:
            raise ValueError(f"MultiScaleBlock: window_size {window_size} is not divisible by q_stride {q_stride}")
        self.dim = dim
        self.dim_out = dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.drop_path_rate = drop_path_rate
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads=num_heads, q_stride=q_stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLPBlock(dim_out, int(dim_out * mlp_ratio), act=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×H×W×dim → B×H'×W'×dim_out."""
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = _pool_channels_last(self.proj(x), self.q_stride)

        window = self.window_size
        if window > 0:
            x, _ = window_partition(x, window)
        x = self.attn(x)
        if window > 0:
            # Pooling shrank every window; the output grid is the shortcut's.
            if self.q_stride is not None:
                window //= self.q_stride[0]
            out_h, out_w = shortcut.shape[1:3]
            x = window_unpartition(x, window, (out_h + -out_h % window, out_w + -out_w % window), (out_h, out_w))

        x = shortcut + drop_path(x, self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class Hiera(nn.Module):
    """SAM 2's Hiera image trunk.

    Args:
        embed_dim: width of stage 1 (96 for t/s, 112 for b+, 144 for l).
        num_heads: heads of stage 1.
        stages: blocks per stage, e.g. (1, 2, 7, 2) for hiera_t.
        global_att_blocks: indices of blocks with global attention.
        window_spec: attention window per stage (a stage's first block still uses the previous stage's window,
            as in the reference).
        window_pos_embed_bkg_spatial_size: (bh, bw) of the background position embedding.
        q_pool: how many stage transitions pool the queries (3 → every one).
        q_stride: the pooling stride.
        dim_mul / head_mul: width / head multiplier per stage transition.
        mlp_ratio: MLP hidden width / block width.
        drop_path_rate: maximum stochastic-depth rate (linearly increasing over the blocks).
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: Sequence[int] = (2, 3, 16, 3),
        global_att_blocks: Sequence[int] = (12, 16, 20),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        window_pos_embed_bkg_spatial_size: Sequence[int] = (14, 14),
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        stages = tuple(int(s) for s in stages)
        if len(stages) != len(window_spec) or any(s < 1 for s in stages):
            raise ValueError(
                f"Hiera: stages {stages} must be positive and match window_spec {tuple(window_spec)} in length"
            )
        if not 0 <= q_pool <= len(stages) - 1:
            raise ValueError(f"Hiera: q_pool must be in [0, {len(stages) - 1}], got {q_pool}")
        depth = sum(stages)
        self.window_spec = tuple(int(w) for w in window_spec)
        self.global_att_blocks = tuple(int(b) for b in global_att_blocks)
        self.stage_ends = tuple(sum(stages[: i + 1]) - 1 for i in range(len(stages)))
        pooling_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.q_stride = tuple(q_stride)

        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, self.window_spec[0], self.window_spec[0]))

        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList()
        dim, stage = embed_dim, 0
        for i in range(depth):
            window = 0 if i in self.global_att_blocks else self.window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:  # first block of a new stage
                dim_out = int(dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim, dim_out, num_heads, mlp_ratio=mlp_ratio, window_size=window, drop_path_rate=rates[i],
                    q_stride=self.q_stride if i in pooling_blocks else None,
                )
            )
            dim = dim_out
        # Neck order (as Meta's ``channel_list``): lowest resolution first.
        self.channel_list = [self.blocks[end].dim_out for end in reversed(self.stage_ends)]
        self.stride = 4 * self.q_stride[0] ** len(pooling_blocks)  # of the last stage

    def _pos_embed(self, height: int, width: int) -> torch.Tensor:
        """1×H×W×C: the background embedding resized to the token grid plus the tiled window embedding."""
        window = self.pos_embed_window.shape[-1]
        if height % window or width % window:
            raise ValueError(
                f"Hiera: the {height}×{width} token grid must be a multiple of the {window}×{window} window "
                f"position embedding (input side a multiple of {4 * window})"
            )
        background = F.interpolate(self.pos_embed, size=(height, width), mode="bicubic")
        embed = background + self.pos_embed_window.repeat(1, 1, height // window, width // window)
        return embed.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """B×3×H×W → one B×C_s×H_s×W_s map per stage (strides 4, 8, 16, 32; highest resolution first)."""
        if x.ndim != 4 or x.shape[1] != self.patch_embed.proj.in_channels:
            raise ValueError(f"Hiera: expected a B×3×H×W image batch, got shape {tuple(x.shape)}")
        x = self.patch_embed(x)
        x = x + self._pos_embed(x.shape[1], x.shape[2])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
