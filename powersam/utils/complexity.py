"""Parameter and multiply-accumulate (MAC) counting for any ``nn.Module``.

Three MAC conventions, because the paper's numbers and a complete count differ (spec §9.7):

* ``"paper"`` — thop-style forward hooks on ``nn.Linear`` and convolution modules (plain and transposed,
  1–3 d) only. Attention matmuls, einsums and functional ops are free. The formulas are thop's
  (``count_convNd`` / ``count_linear``), bias ignored:

  - Linear: ``output.numel() × in_features``
  - Conv and ConvTranspose: ``output.numel() × (in_channels / groups) × prod(kernel_size)``

  For a transposed convolution thop applies the forward-conv formula to the (larger) *output*, which is
  ``stride^d`` times the true work when kernel == stride (SAM's 2×2/s2 upscaling: 4×). The true count,
  ``input.numel() × (out_channels / groups) × prod(kernel_size)``, is what ``"full"`` uses.
* ``"thop"`` — ``"paper"`` plus thop's rules for the other layer modules it knows: Batch/Layer/InstanceNorm
  ``2·numel`` (``4·numel`` when affine), ``nn.Upsample`` ``numel × (1 nearest, 5 linear, 11 bilinear,
  259 bicubic, 31 trilinear)``, AvgPool ``numel(out)``, AdaptiveAvgPool ``(in/out area + 1) · numel(out)``,
  ``nn.Softmax`` ``(3n − 1)`` per row, PReLU ``numel``. These are operations, not strictly MACs, but
  it is what thop reports, and it reproduces the paper's Table 2 (ViT-B + decoder + YOLOX-S = 406.27 G).
* ``"full"`` — ``torch.utils.flop_counter.FlopCounterMode`` FLOPs ÷ 2: every matmul (``mm``/``addmm``/``bmm``,
  so einsum and ``@`` too), convolution and scaled-dot-product attention, wherever it happens.

All modes work on the ``meta`` device (shapes only), so full-size models are counted in well under a second.

``count_params(..., leaf_only=True)`` mirrors thop's parameter count, which only sees parameters owned
directly by leaf modules and so drops e.g. SAM's ``pos_embed`` and ``rel_pos_h/w``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.utils.flop_counter import FlopCounterMode

MacMode = Literal["paper", "thop", "full"]
ROOT_NAME = "(self)"  # breakdown entry for work the root module does outside any child

_SCALES = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_UPSAMPLE_OPS = {"nearest": 1, "linear": 5, "bilinear": 11, "bicubic": 224 + 35, "trilinear": 13 * 2 + 5}
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def count_params(module: nn.Module, leaf_only: bool = False) -> int:
    """Number of parameter elements in ``module`` (shared parameters counted once).

    ``leaf_only=True`` counts only parameters owned directly by modules without children, as thop does.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"count_params expects an nn.Module, got {type(module).__name__}")
    if not leaf_only:
        return sum(p.numel() for p in module.parameters())
    seen: set[int] = set()
    total = 0
    for sub in module.modules():
        if next(sub.children(), None) is not None:
            continue
        for p in sub.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


@dataclass(frozen=True)
class MacReport:
    """MACs of one forward pass: ``total`` and ``by_child`` (top-level child name → MACs).

    ``by_child`` lists the top-level children that did counted work, plus ``"(self)"`` for work the root
    did itself; its values sum to ``total`` unless a child calls a sibling (then the sibling counts twice).
    """

    total: int
    by_child: dict[str, int] = field(default_factory=dict)
    mode: str = "paper"

    def __str__(self) -> str:
        total = format_count(self.total)
        text = f"{total}{'MACs' if total[-1].isalpha() else ' MACs'} ({self.mode} mode)"
        parts = ", ".join(f"{name} {format_count(macs)}" for name, macs in self.by_child.items())
        return f"{text}: {parts}" if parts else text


def count_macs(
    module: nn.Module,
    inputs: tuple[Any, ...] | Mapping[str, Any] | torch.Tensor,
    mode: MacMode = "paper",
) -> MacReport:
    """Run one forward pass of ``module`` under ``torch.inference_mode()`` (and the decoder's reference ops) and count
    its MACs.

    Args:
        module: any module; every submodule is in eval mode for the pass and gets its own training flag back.
        inputs: positional arguments of ``forward`` (tuple, or one tensor) or keyword arguments (mapping).
        mode: ``"paper"``, ``"thop"`` or ``"full"``; see the module docstring.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"count_macs expects an nn.Module, got {type(module).__name__}")
    if mode not in ("paper", "thop", "full"):
        raise ValueError(f"mode must be 'paper', 'thop' or 'full', got {mode!r}")
    if isinstance(inputs, torch.Tensor):
        args, kwargs = (inputs,), {}
    elif isinstance(inputs, tuple):
        args, kwargs = inputs, {}
    elif isinstance(inputs, Mapping):
        args, kwargs = (), dict(inputs)
    else:
        raise TypeError(f"inputs must be a tuple, a mapping or a tensor, got {type(inputs).__name__}")

    # SAM's op sequence, not the decoder's inference shortcuts: the count is of the model as defined (every
    # projection module called, all mask tokens), whatever work an optimised forward skips or folds
    from ..models.sam.transformer import reference_ops

    training_flags = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        with torch.inference_mode(), reference_ops():
            if mode == "full":
                total, by_child = _count_full(module, args, kwargs)
            else:
                total, by_child = _count_with_hooks(module, args, kwargs, with_thop_extras=mode == "thop")
    finally:
        for sub, flag in training_flags:  # per submodule: a frozen (eval) part of a training model stays frozen
            sub.training = flag
    by_child = {name: macs for name, macs in by_child.items() if macs}
    return MacReport(total=total, by_child=by_child, mode=mode)


def _top_level_names(module: nn.Module) -> dict[nn.Module, str]:
    """Submodule → name of the top-level child it lives under (``"(self)"`` for the root)."""
    owners: dict[nn.Module, str] = {}
    for name, sub in module.named_modules():
        owners.setdefault(sub, name.split(".", 1)[0] if name else ROOT_NAME)
    return owners


def _linear_conv_macs(sub: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    if isinstance(sub, nn.Linear):
        return output.numel() * sub.in_features
    # thop's formula for plain and transposed convs alike (see the module docstring).
    return output.numel() * (sub.in_channels // sub.groups) * math.prod(sub.kernel_size)


def _norm_ops(sub: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    affine = getattr(sub, "affine", False) or getattr(sub, "elementwise_affine", False)
    return 2 * inputs[0].numel() * (2 if affine else 1)


def _upsample_ops(sub: nn.Upsample, inputs: tuple, output: torch.Tensor) -> int:
    return output.numel() * _UPSAMPLE_OPS.get(sub.mode, 0)


def _adaptive_avgpool_ops(sub: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    window = math.prod(i / o for i, o in zip(inputs[0].shape[2:], output.shape[2:]))
    return int((window + 1) * output.numel())


def _softmax_ops(sub: nn.Softmax, inputs: tuple, output: torch.Tensor) -> int:
    features = inputs[0].shape[sub.dim] if sub.dim is not None else inputs[0].shape[-1]
    return inputs[0].numel() // features * (3 * features - 1)


def _rule_for(sub: nn.Module, with_thop_extras: bool) -> Callable[[Any, tuple, torch.Tensor], int] | None:
    if isinstance(sub, (nn.Linear, _ConvNd)):
        return _linear_conv_macs
    if not with_thop_extras:
        return None
    if isinstance(sub, _NORMS):
        return _norm_ops
    if isinstance(sub, nn.Upsample):
        return _upsample_ops
    if isinstance(sub, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        return lambda _sub, _inputs, output: output.numel()
    if isinstance(sub, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        return _adaptive_avgpool_ops
    if isinstance(sub, nn.Softmax):
        return _softmax_ops
    if isinstance(sub, nn.PReLU):
        return lambda _sub, inputs, _output: inputs[0].numel()
    return None


def _count_with_hooks(
    module: nn.Module, args: tuple, kwargs: dict, with_thop_extras: bool
) -> tuple[int, dict[str, int]]:
    owners = _top_level_names(module)
    counts: dict[str, int] = {}

    def make_hook(rule: Callable[[Any, tuple, torch.Tensor], int]):
        def hook(sub: nn.Module, inputs: tuple, output: Any) -> None:
            if isinstance(output, torch.Tensor) and inputs and isinstance(inputs[0], torch.Tensor):
                owner = owners[sub]
                counts[owner] = counts.get(owner, 0) + int(rule(sub, inputs, output))

        return hook

    handles = []
    for sub in module.modules():
        rule = _rule_for(sub, with_thop_extras)
        if rule is not None:
            handles.append(sub.register_forward_hook(make_hook(rule)))
    try:
        module(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return sum(counts.values()), counts


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *_args, out_shape=None, **_kwargs) -> int:
    """FLOPs of the CPU flash-attention kernel, which FlopCounterMode does not know: QKᵀ plus attn·V."""
    batch, heads, q_len, qk_dim = query_shape
    k_len = key_shape[-2]
    v_dim = value_shape[-1]
    return 2 * batch * heads * q_len * k_len * (qk_dim + v_dim)


def _extra_flop_formulas() -> dict[Any, Any]:
    aten = torch.ops.aten
    extra = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        extra[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
    return extra


def _count_full(module: nn.Module, args: tuple, kwargs: dict) -> tuple[int, dict[str, int]]:
    counter = FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
    owners = _top_level_names(module)
    flops_by_child: dict[str, int] = {}
    depth: dict[str, int] = {}
    entry: dict[str, int] = {}

    # Read the running total when the outermost call into a top-level child's subtree starts and ends.
    # Every submodule is hooked, so children that are never called themselves (ModuleList) still count.
    def before(sub: nn.Module, _inputs: Any) -> None:
        owner = owners[sub]
        if depth.get(owner, 0) == 0:
            entry[owner] = counter.get_total_flops()
        depth[owner] = depth.get(owner, 0) + 1

    def after(sub: nn.Module, _inputs: Any, _output: Any) -> None:
        owner = owners[sub]
        depth[owner] -= 1
        if depth[owner] == 0:
            flops_by_child[owner] = flops_by_child.get(owner, 0) + counter.get_total_flops() - entry[owner]

    handles = []
    for sub, owner in owners.items():
        if owner != ROOT_NAME:
            handles.append(sub.register_forward_pre_hook(before))
            handles.append(sub.register_forward_hook(after))
    try:
        with counter:
            module(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    total = counter.get_total_flops() // 2
    by_child = {name: flops // 2 for name, flops in flops_by_child.items()}
    by_child[ROOT_NAME] = max(total - sum(by_child.values()), 0)
    return total, by_child


def format_count(n: float, unit: str | None = None, digits: int = 2) -> str:
    """Human-readable count: ``format_count(2_942_916) == "2.94 M"``, ``format_count(10.99e9, "G") == "10.99 G"``.

    ``unit`` forces a scale (``""``, ``"K"``, ``"M"``, ``"G"``, ``"T"``); ``None`` picks the largest one that
    keeps the mantissa ≥ 1. The scale letter follows a space; plain numbers (below 1000) have none.
    """
    if unit is None:
        magnitude = abs(n)
        unit = next((u for u in ("T", "G", "M", "K") if magnitude >= _SCALES[u]), "")
    if unit not in _SCALES:
        raise ValueError(f"unit must be one of {sorted(_SCALES)} or None, got {unit!r}")
    value = n / _SCALES[unit]
    return f"{value:.{digits}f} {unit}" if unit else f"{value:.{digits}f}"
