"""RepViT image encoders of EdgeSAM / PowerSAM, with the SAM fuse neck.

The trunk is the *old* RepViT block format (THU-MIG/RepViT first release): the stride-1 token mixer is
``3x3 DW conv+BN + 1x1 DW conv+BN + identity`` with no BatchNorm after the sum. The parameter and
buffer names match the official ``edge_sam.pth`` (arch ``m1``) and ``powersam_{s,b}.pth`` (``m0``/``m1``)
checkpoints under the ``image_encoder.`` prefix, so those load with ``strict=True``.

Shapes for an input ``B x 3 x H x W`` (each stride-2 conv maps a side ``n`` to ``ceil(n / 2)``)::

    stem      B x C0 x H/4  x W/4
    stage1    B x C1 x H/8  x W/8
    stage2    B x C2 x H/16 x W/16
    stage3    B x C3 x H/32 x W/32
    embedding B x 256 x H/16 x W/16   (stage2 + upsampled stage3, then SAM's neck)

For sides not divisible by 32 every "/k" above is ``ceil(side / k)``; the stage3 map is resized to exactly
the stage2 size, so any input size of at least 1x1 works.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from powersam.models.common import LayerNorm2d

# A variant is one row: per stage (width, SE flags), one flag per block ("1" = squeeze-excite after the
# token mixer). Stages 1-3 open with a stride-2 downsample block; stage 0 follows the stride-4 stem.
# Rows are transcribed from THU-MIG/RepViT model/repvit.py (m1 = its repvit_m0_9). Each row's parameter
# count plus the distilled ImageNet head reproduces the ``n_parameters`` of that repo's training logs exactly
# (m1_0..m2_3 as old-format blocks, m0_9 as new-format blocks); tests/models/test_repvit.py checks this.
REPVIT_CONFIGS: dict[str, tuple[tuple[int, str], ...]] = {
    # PowerSAM-S; the paper's "RepViT-M0" / RepViT-M0.6
    "m0": ((40, "10"), (80, "010"), (160, "0101010100"), (320, "01")),
    # EdgeSAM and PowerSAM-B "m1"; this is RepViT-M0.9 (not M1.0)
    "m1": ((48, "100"), (96, "0100"), (192, "0101010101010100"), (384, "010")),
    "m1_0": ((56, "100"), (112, "0100"), (224, "0101010101010100"), (448, "010")),
    "m1_1": ((64, "100"), (128, "0100"), (256, "01010101010100"), (512, "010")),
    "m1_5": ((64, "10100"), (128, "010100"), (256, "0" + "10" * 12 + "0"), (512, "01010")),
    "m2_3": ((80, "1010100"), (160, "01010100"), (320, "0" + "10" * 17 + "0"), (640, "010")),
}

UPSAMPLE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic")


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``); bump up if that loses
    more than ``1 - round_limit`` of it. RepViT widths use round_limit 0.9, timm's SE reduction uses 0."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class BlockSpec:
    """One RepViT block: ``features[i + 1]`` for the i-th spec."""

    in_channels: int
    out_channels: int
    stride: int
    use_se: bool


def repvit_block_specs(arch: str) -> list[BlockSpec]:
    """Expand a ``REPVIT_CONFIGS`` row into per-block specs (stem excluded)."""
    if arch not in REPVIT_CONFIGS:
        raise ValueError(f"unknown RepViT arch {arch!r}; expected one of {sorted(REPVIT_CONFIGS)}")
    specs: list[BlockSpec] = []
    channels = make_divisible(REPVIT_CONFIGS[arch][0][0])
    for stage, (width, se_flags) in enumerate(REPVIT_CONFIGS[arch]):
        width = make_divisible(width)
        for i, flag in enumerate(se_flags):
            stride = 2 if stage > 0 and i == 0 else 1
            specs.append(BlockSpec(channels, width, stride, flag == "1"))
            channels = width
    return specs


class ConvBN(nn.Module):
    """Conv2d without bias (``c``) followed by BatchNorm2d (``bn``); RepViT's ``Conv2d_BN``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        """A single biased Conv2d equal to this module in eval mode (BN running stats folded in)."""
        c, bn = self.c, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                         c.groups, bias=True, device=c.weight.device, dtype=c.weight.dtype)
        conv.weight.copy_(c.weight * scale[:, None, None, None])
        conv.bias.copy_(bn.bias - bn.running_mean * scale)
        return conv


class RepVGGDW(nn.Module):
    """Stride-1 token mixer (old format): ``conv`` (3x3 DW) + ``conv1`` (1x1 DW) + identity, no post-BN."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = ConvBN(channels, channels, 3, 1, 1, groups=channels)
        self.conv1 = ConvBN(channels, channels, 1, 1, 0, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv1(x) + x

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        """One 3x3 depthwise Conv2d: the 1x1 branch and the identity become centre taps of the 3x3 kernel."""
        conv3, conv1 = self.conv.fused(), self.conv1.fused()
        identity = torch.zeros_like(conv3.weight)
        identity[:, :, 1, 1] = 1.0
        conv3.weight.add_(F.pad(conv1.weight, [1, 1, 1, 1]) + identity)
        conv3.bias.add_(conv1.bias)
        return conv3


class SqueezeExcite(nn.Module):
    """timm 0.4.12 ``SEModule``: global mean -> ``fc1`` -> ReLU -> ``fc2`` -> sigmoid gate on the input."""

    def __init__(self, channels: int, rd_ratio: float = 0.25) -> None:
        super().__init__()
        reduced = make_divisible(channels * rd_ratio, 8, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * gate.sigmoid()


class Residual(nn.Module):
    """``x + m(x)``; the reference never uses stochastic depth, so there is none."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


def build_ffn(channels: int, hidden: int) -> Residual:
    """Channel mixer: residual 1x1 expand -> GELU -> 1x1 project (last BN starts at 0, so the block starts as identity)."""
    return Residual(nn.Sequential(ConvBN(channels, hidden), nn.GELU(), ConvBN(hidden, channels, bn_weight_init=0.0)))


class RepViTBlock(nn.Module):
    """``channel_mixer(token_mixer(x))``. Identity slots keep the Sequential indices of the checkpoints:
    stride 1: token_mixer = [RepVGGDW, SE | Identity]; stride 2: [DW 3x3 s2 ConvBN, SE | Identity, 1x1 ConvBN]."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        cin, cout = spec.in_channels, spec.out_channels
        se: nn.Module = SqueezeExcite(cin) if spec.use_se else nn.Identity()
        if spec.stride == 1:
            if cin != cout:
                raise ValueError(f"a stride-1 RepViT block needs in == out channels, got {cin} -> {cout}")
            self.token_mixer = nn.Sequential(RepVGGDW(cin), se)
        elif spec.stride == 2:
            self.token_mixer = nn.Sequential(ConvBN(cin, cin, 3, 2, 1, groups=cin), se, ConvBN(cin, cout))
        else:
            raise ValueError(f"RepViT block stride must be 1 or 2, got {spec.stride}")
        self.channel_mixer = build_ffn(cout, make_divisible(2 * cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixer(self.token_mixer(x))


def build_stem(out_channels: int) -> nn.Sequential:
    """Stride-4 stem: 3x3 s2 ConvBN (3 -> C/2), GELU, 3x3 s2 ConvBN (C/2 -> C)."""
    half = out_channels // 2
    return nn.Sequential(ConvBN(3, half, 3, 2, 1), nn.GELU(), ConvBN(half, out_channels, 3, 2, 1))


class ResizeTo(nn.Module):
    """Parameter-free resize to a size given at call time (the "x2 upsample" of the fuse neck)."""

    def __init__(self, mode: str = "bicubic") -> None:
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
        self.mode = mode

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        align_corners = False if self.mode in ("bilinear", "bicubic") else None
        return F.interpolate(x, size=size, mode=self.mode, align_corners=align_corners)


class ProjectUpsample(nn.Module):
    """``fuse_stage3``: ``op_list`` = [1x1 Conv2d (no bias), ResizeTo]. At the usual sizes the resize is an
    exact x2; passing stage2's size keeps odd input sizes aligned (x2 would overshoot by one pixel)."""

    def __init__(self, in_channels: int, out_channels: int, mode: str) -> None:
        super().__init__()
        self.op_list = nn.ModuleList([nn.Conv2d(in_channels, out_channels, 1, bias=False), ResizeTo(mode)])

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.op_list[1](self.op_list[0](x), size)


class RepViT(nn.Module):
    """RepViT trunk + FPN-style fusion of stages 2 and 3 + SAM's neck: a SAM-compatible image encoder.

    Args:
        arch: a key of ``REPVIT_CONFIGS`` (``"m0"`` PowerSAM-S, ``"m1"`` PowerSAM-B / EdgeSAM).
        img_size: side of the square input SAM feeds (used by the SAM wrapper for preprocessing;
            the network itself accepts any size).
        upsample_mode: interpolation for stage3 -> stage2 size (``"bilinear"`` for CoreML/ONNX exports).
        out_chans: embedding channels (256 for SAM's prompt encoder / mask decoder).
    """

    def __init__(self, arch: str = "m0", img_size: int = 1024, upsample_mode: str = "bicubic",
                 out_chans: int = 256) -> None:
        super().__init__()
        specs = repvit_block_specs(arch)
        if not isinstance(img_size, int) or img_size <= 0:
            raise ValueError(f"img_size must be a positive int, got {img_size!r}")
        if not isinstance(out_chans, int) or out_chans <= 0:
            raise ValueError(f"out_chans must be a positive int, got {out_chans!r}")
        self.arch = arch
        self.img_size = img_size
        self.embed_dim = out_chans
        self.is_reparameterized = False
        self.channels_last = True  # eval-mode CPU inference in channels-last memory (see _inference_layout)

        depths = [len(se_flags) for _, se_flags in REPVIT_CONFIGS[arch]]
        # index into the block list (features[i + 1]) of each stage's last block, as the reference records it
        self.stage_idx: tuple[int, ...] = tuple(sum(depths[: s + 1]) - 1 for s in range(len(depths)))
        widths = [specs[i].out_channels for i in self.stage_idx]
        self.stage_channels: tuple[int, int, int] = (widths[1], widths[2], widths[3])

        self.features = nn.ModuleList([build_stem(specs[0].in_channels)] + [RepViTBlock(s) for s in specs])
        self.fuse_stage2 = nn.Conv2d(widths[2], out_chans, 1, bias=False)
        self.fuse_stage3 = ProjectUpsample(widths[3], out_chans, upsample_mode)
        self.neck = nn.Sequential(
            nn.Conv2d(out_chans, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor image batch, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"expected an image batch of shape B x 3 x H x W, got {tuple(x.shape)}")

    def _inference_layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in channels-last memory in eval mode on the CPU (oneDNN's convolutions and the elementwise ops then
        skip layout reorders: ≈15 % off the re-parameterised encoder, one thread; values change by float rounding
        only); as it is when training, tracing, exporting, off the CPU, or with ``channels_last = False``."""
        if (not getattr(self, "channels_last", True) or self.training or x.device.type != "cpu" or torch.jit.is_tracing()
                or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()):
            return x
        return x.contiguous(memory_format=torch.channels_last)

    def _trunk(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All four stage outputs ``[stage0, stage1, stage2, stage3]``."""
        self._check_input(x)
        x = self.features[0](self._inference_layout(x))
        stages = []
        for i, block in enumerate(self.features[1:]):
            x = block(x)
            if i in self.stage_idx:
                stages.append(x)
        return stages

    def _embed(self, stage2: torch.Tensor, stage3: torch.Tensor) -> torch.Tensor:
        fused = self.fuse_stage2(stage2) + self.fuse_stage3(stage3, tuple(stage2.shape[-2:]))
        return self.neck(fused)

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(stage1 B x C1 x H/8 x W/8, stage2 B x C2 x H/16 x W/16, stage3 B x C3 x H/32 x W/32)``; no fuse/neck."""
        _, s1, s2, s3 = self._trunk(x)
        return s1.contiguous(), s2.contiguous(), s3.contiguous()

    def forward_multiscale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(stage1, stage2, stage3, embedding B x 256 x H/16 x W/16)``: detector features and SAM embedding in one pass."""
        _, s1, s2, s3 = self._trunk(x)
        return s1.contiguous(), s2.contiguous(), s3.contiguous(), self._embed(s2, s3).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """SAM image embedding ``B x 256 x H/16 x W/16`` (64 x 64 for a 1024 x 1024 input)."""
        _, _, s2, s3 = self._trunk(x)
        return self._embed(s2, s3).contiguous()

    @torch.no_grad()
    def reparameterize(self) -> "RepViT":
        """Fold every ConvBN into a biased Conv2d and every RepVGGDW into one 3x3 depthwise conv, in place.

        Eval-mode outputs are unchanged (up to float rounding). The resulting state dict no longer matches
        the official checkpoints, so this form is for inference and export only: load weights first.
        Calling it again is a no-op.
        """
        if self.is_reparameterized:
            return self
        if self.training:
            raise RuntimeError("reparameterize() folds BatchNorm running statistics and is only exact in eval "
                               "mode; call model.eval() first")
        _fuse_children(self.features)
        self.is_reparameterized = True
        return self


def _fuse_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, (ConvBN, RepVGGDW)):
            setattr(module, name, child.fused())
        else:
            _fuse_children(child)


_NEW_FORMAT_CONV1 = re.compile(r"^(?P<mixer>.*token_mixer\.0\.)conv1\.bias$")


def convert_new_format_repvit(state_dict: dict[str, torch.Tensor], bn_eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """Map a new-format RepViT state dict (HEAD of THU-MIG/RepViT, e.g. ``repvit_m0_6_distill_300e.pth``'s
    ``model``) onto this module's old-format keys.

    Each stride-1 ``conv1`` (plain 1x1 DW conv with bias) becomes ``conv1.c`` + a ``conv1.bn`` that is an exact
    identity plus the old bias. The post-sum ``token_mixer.0.bn`` has no old-format counterpart and is dropped,
    as are ``classifier.*`` keys, so the converted trunk is an initialisation, not the same function.
    Load the result with ``strict=False`` (the fuse/neck keys are absent). Other keys pass through unchanged.
    """
    converted = dict(state_dict)
    for key in list(state_dict):
        match = _NEW_FORMAT_CONV1.match(key)
        if match is None:
            continue
        mixer = match.group("mixer")
        bias = state_dict[key]
        converted[f"{mixer}conv1.c.weight"] = converted.pop(f"{mixer}conv1.weight")
        del converted[key]
        converted[f"{mixer}conv1.bn.weight"] = torch.ones_like(bias)
        converted[f"{mixer}conv1.bn.bias"] = bias.clone()
        converted[f"{mixer}conv1.bn.running_mean"] = torch.zeros_like(bias)
        # running_var + eps == 1, so the BN divides by exactly 1
        converted[f"{mixer}conv1.bn.running_var"] = torch.full_like(bias, 1.0 - bn_eps)
        converted[f"{mixer}conv1.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        for post_bn_key in [k for k in converted if k.startswith(f"{mixer}bn.")]:
            del converted[post_bn_key]
    for key in [k for k in converted if k.startswith("classifier.")]:
        del converted[key]
    return converted
