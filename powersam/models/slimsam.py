"""SlimSAM: structurally pruned SAM ViT-B encoders (uniform and per-block widths) in SAM's standard key layout.

Two kinds of published SlimSAM checkpoints exist (spec §8, [SL]):

* **Uniform (local pruning)** — plain state dicts with SAM's key layout (fused ``attn.qkv``). They load strictly
  into the ``vit_p50`` / ``vit_p77`` rows of :data:`~powersam.models.sam.build.SAM_VIT_CONFIGS`; SlimSAM's
  builder constructs its attention from ``dim // num_heads``, so those models run with 12 heads of 32 (p50) or
  14 (p77) dims and the matching scale ``head_dim^-0.5``. ``build_slimsam("slimsam_50" | "slimsam_77")``.
* **Global pruning** — whole pickled ``nn.Module`` objects whose attention is split into ``attn.q/k/v`` and whose
  widths differ per block. SlimSAM prunes q/k/v with ``channel_groups = num_heads``: the same per-head channels
  are removed in every head, so every block keeps its **12 heads** and the per-head dim shrinks
  (``head_dim = q.out_features / 12``). The embedding dim is pruned uniformly (step 1); q/k/v and the MLP
  hidden width per block (step 2). After pruning, SlimSAM's ``get_pos_init`` re-creates ``rel_pos_h/w`` with the
  pruned head dim and **resets** ``attn.scale`` to ``pruned_head_dim^-0.5`` (SL:prune_funcs.py), which is what
  a step-2 file carries; the spec's "keeps 1/8" (§8) does not match that code. Since the scale is not in a state
  dict, :func:`~powersam.models.slimsam_files.read_slimsam_pickle` reads each block's pickled ``scale`` and
  ``num_heads`` attributes, and without them the pruned-head-dim scale is assumed. ``powersam convert`` turns such a
  file into a ``slimsam_custom`` checkpoint that carries them.

A per-block model is described by a plain dict ("widths", JSON/YAML friendly)::

    {"embed_dim": 384, "qk_dims": [...], "v_dims": [...], "mlp_dims": [...], "num_heads": 12 | [...],
     "attn_scales": [...] | None, "global_attn_indexes": [2, 5, 8, 11], "window_size": 14,
     "patch_size": 16, "use_rel_pos": True, "qkv_bias": True}

``qk_dims[i]`` / ``v_dims[i]`` are the total q (= k) and v widths of block i (heads × per-head dim). The encoder
is :class:`~powersam.models.sam.image_encoder.ImageEncoderViT` with each block's ``attn`` replaced by a
:class:`PrunedAttention` and its ``mlp`` resized, so the keys are SAM's (``attn.qkv`` holds the q, k and v rows
stacked, ``attn.proj`` maps v_dim → embed_dim).
"""
from __future__ import annotations

import logging
import math
import re
from functools import partial
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from .common import MLPBlock
from .sam.build import build_mask_decoder, build_prompt_encoder, build_sam_vit
from .sam.image_encoder import ImageEncoderViT, add_decomposed_rel_pos
from .sam.sam import Sam

logger = logging.getLogger(__name__)

__all__ = [
    "SLIMSAM_UNIFORM_VARIANTS",
    "PrunedAttention",
    "build_pruned_image_encoder",
    "build_slimsam",
    "build_slimsam_from_state_dict",
    "fuse_split_qkv",
    "infer_widths",
    "resolve_widths",
    "widths_of",
]

# Zoo name → uniform config row of SAM_VIT_CONFIGS (SL:segment_anything/build_sam.py build_sam_vit_p50/_p77).
SLIMSAM_UNIFORM_VARIANTS = {"slimsam_50": "vit_p50", "slimsam_77": "vit_p77"}
SLIMSAM_NUM_HEADS = 12  # SlimSAM never changes the head count of ViT-B
_DEFAULT_GLOBAL_INDEXES = {12: (2, 5, 8, 11)}
_WIDTH_LISTS = ("qk_dims", "v_dims", "mlp_dims")


class PrunedAttention(nn.Module):
    """Multi-head attention whose q/k and v widths are free (pruned), in SAM's key layout.

    ``qkv`` is Linear(dim → 2·qk_dim + v_dim) holding the q, k and v rows in that order, each head-major
    (head h owns rows h·d … (h+1)·d − 1 of its part); ``proj`` is Linear(v_dim → dim); ``rel_pos_h/w`` are
    (2·size − 1)×(qk_dim / num_heads). ``scale`` multiplies q before q·kᵀ; default ``(qk_dim/num_heads)^-0.5``.
    Input/output: B×H×W×dim.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_dim: int,
        v_dim: int,
        scale: Optional[float] = None,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_heads", num_heads), ("qk_dim", qk_dim), ("v_dim", v_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PrunedAttention: {name} must be a positive int, got {value!r}")
        if qk_dim % num_heads or v_dim % num_heads:
            raise ValueError(
                f"PrunedAttention: qk_dim={qk_dim} and v_dim={v_dim} must be multiples of num_heads={num_heads}")
        self.num_heads = num_heads
        self.qk_dim = qk_dim
        self.v_dim = v_dim
        head_dim = qk_dim // num_heads
        self.scale = float(scale) if scale is not None else head_dim**-0.5
        self.qkv = nn.Linear(dim, 2 * qk_dim + v_dim, bias=qkv_bias)
        self.proj = nn.Linear(v_dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("PrunedAttention: input_size (H, W) is required when use_rel_pos=True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def _split_heads(self, t: Tensor, batch: int, tokens: int) -> Tensor:
        """B×N×(heads·d) → (B·heads)×N×d."""
        t = t.reshape(batch, tokens, self.num_heads, -1).permute(0, 2, 1, 3)
        return t.reshape(batch * self.num_heads, tokens, -1)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, _ = x.shape
        tokens = height * width
        q, k, v = self.qkv(x).reshape(batch, tokens, -1).split([self.qk_dim, self.qk_dim, self.v_dim], dim=-1)
        q, k, v = (self._split_heads(t, batch, tokens) for t in (q, k, v))
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            attn = add_decomposed_rel_pos(attn, q, self.rel_pos_h, self.rel_pos_w, (height, width), (height, width))
        attn = attn.softmax(dim=-1)
        out = (attn @ v).view(batch, self.num_heads, height, width, -1)
        return self.proj(out.permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1))


# ---------------------------------------------------------------------------------------------- widths


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"widths: {name} must be a positive int, got {value!r}")
    return int(value)


def resolve_widths(widths: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a per-block widths dict and fill in the defaults; returns a new plain dict.

    Raises ``ValueError`` naming the first bad entry (list lengths, divisibility by the head count, indexes).
    """
    if not isinstance(widths, Mapping):
        raise TypeError(f"widths must be a dict, got {type(widths).__name__}")
    missing = [k for k in ("embed_dim", *_WIDTH_LISTS) if k not in widths]
    if missing:
        raise ValueError(f"widths is missing {missing}; got keys {sorted(widths)}")
    unknown = sorted(set(widths) - {"embed_dim", *_WIDTH_LISTS, "num_heads", "attn_scales", "global_attn_indexes",
                                    "window_size", "patch_size", "use_rel_pos", "qkv_bias"})
    if unknown:
        raise ValueError(f"widths has unknown keys {unknown}")
    depth = len(widths["qk_dims"])
    if depth == 0:
        raise ValueError("widths: qk_dims is empty (a model needs at least one block)")
    out: dict[str, Any] = {"embed_dim": _positive_int(widths["embed_dim"], "embed_dim")}
    for name in _WIDTH_LISTS:
        values = list(widths[name])
        if len(values) != depth:
            raise ValueError(f"widths: {name} has {len(values)} entries but qk_dims has {depth}")
        out[name] = [_positive_int(v, f"{name}[{i}]") for i, v in enumerate(values)]
    heads = widths.get("num_heads", SLIMSAM_NUM_HEADS)
    heads = [heads] * depth if isinstance(heads, int) and not isinstance(heads, bool) else list(heads)
    if len(heads) != depth:
        raise ValueError(f"widths: num_heads has {len(heads)} entries but the model has {depth} blocks")
    out["num_heads"] = [_positive_int(h, f"num_heads[{i}]") for i, h in enumerate(heads)]
    for i, (h, qk, v) in enumerate(zip(out["num_heads"], out["qk_dims"], out["v_dims"])):
        if qk % h or v % h:
            raise ValueError(f"widths: block {i} has qk_dim {qk} / v_dim {v}, not multiples of its {h} heads")
    scales = widths.get("attn_scales")
    if scales is not None:
        scales = [float(s) for s in scales]
        if len(scales) != depth or not all(math.isfinite(s) and s > 0 for s in scales):
            raise ValueError(f"widths: attn_scales must be {depth} positive numbers or null, "
                             f"got {widths['attn_scales']!r}")
    out["attn_scales"] = scales
    indexes = widths.get("global_attn_indexes")
    if indexes is None:
        if depth not in _DEFAULT_GLOBAL_INDEXES:
            raise ValueError(f"widths: global_attn_indexes is required for a {depth}-block model")
        indexes = _DEFAULT_GLOBAL_INDEXES[depth]
    indexes = sorted(int(i) for i in indexes)
    if any(not 0 <= i < depth for i in indexes):
        raise ValueError(f"widths: global_attn_indexes {indexes} must lie in range({depth})")
    out["global_attn_indexes"] = indexes
    window = widths.get("window_size", 14)
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"widths: window_size must be a non-negative int, got {window!r}")
    out["window_size"] = window
    out["patch_size"] = _positive_int(widths.get("patch_size", 16), "patch_size")
    out["use_rel_pos"] = bool(widths.get("use_rel_pos", True))
    out["qkv_bias"] = bool(widths.get("qkv_bias", True))
    return out


def is_per_block_widths(variant: Any) -> bool:
    return isinstance(variant, Mapping) and "qk_dims" in variant


def build_pruned_image_encoder(widths: Mapping[str, Any], img_size: int = 1024) -> ImageEncoderViT:
    """An :class:`ImageEncoderViT` with per-block attention and MLP widths (see the module docstring)."""
    w = resolve_widths(widths)
    if not isinstance(img_size, int) or img_size <= 0 or img_size % w["patch_size"]:
        raise ValueError(f"img_size must be a positive multiple of {w['patch_size']}, got {img_size!r}")
    depth, embed = len(w["qk_dims"]), w["embed_dim"]
    grid = img_size // w["patch_size"]
    # One head and a 1-wide MLP as placeholders: every block's attn and mlp are replaced right below.
    encoder = ImageEncoderViT(
        img_size=img_size, patch_size=w["patch_size"], embed_dim=embed, depth=depth, num_heads=1, out_chans=256,
        qkv_bias=w["qkv_bias"], norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=False,
        window_size=w["window_size"], global_attn_indexes=tuple(w["global_attn_indexes"]), mlp_dim=1,
    )
    for i, block in enumerate(encoder.blocks):
        size = grid if block.window_size == 0 else block.window_size
        scale = w["attn_scales"][i] if w["attn_scales"] is not None else None
        block.attn = PrunedAttention(embed, w["num_heads"][i], w["qk_dims"][i], w["v_dims"][i], scale=scale,
                                     qkv_bias=w["qkv_bias"], use_rel_pos=w["use_rel_pos"], input_size=(size, size))
        block.mlp = MLPBlock(embed, w["mlp_dims"][i])
    return encoder


def widths_of(model: nn.Module) -> dict[str, Any]:
    """The widths dict of a SAM ViT encoder (or a ``Sam`` holding one), standard or pruned, incl. attention scales."""
    encoder = getattr(model, "image_encoder", model)
    if not isinstance(encoder, ImageEncoderViT):
        raise TypeError(f"widths_of expects a SAM ViT encoder or a Sam with one, got {type(encoder).__name__}")
    blocks = list(encoder.blocks)
    v_dims = [int(b.attn.proj.in_features) for b in blocks]
    return {
        "embed_dim": int(encoder.patch_embed.proj.out_channels),
        "qk_dims": [(int(b.attn.qkv.out_features) - v) // 2 for b, v in zip(blocks, v_dims)],
        "v_dims": v_dims,
        "mlp_dims": [int(b.mlp.lin1.out_features) for b in blocks],
        "num_heads": [int(b.attn.num_heads) for b in blocks],
        "attn_scales": [float(b.attn.scale) for b in blocks],
        "global_attn_indexes": [i for i, b in enumerate(blocks) if b.window_size == 0],
        "window_size": max((int(b.window_size) for b in blocks), default=0),
        "patch_size": int(encoder.patch_embed.proj.kernel_size[0]),
        "use_rel_pos": bool(blocks[0].attn.use_rel_pos) if blocks else True,
        "qkv_bias": blocks[0].attn.qkv.bias is not None if blocks else True,
    }


def _sam_with_encoder(encoder: nn.Module, img_size: int) -> Sam:
    return Sam(image_encoder=encoder, prompt_encoder=build_prompt_encoder(img_size=img_size),
               mask_decoder=build_mask_decoder()).eval()


def build_slimsam(variant: Union[str, Mapping[str, Any]], img_size: int = 1024) -> Sam:
    """A randomly initialised SlimSAM ``Sam`` (eval mode).

    ``variant``: ``"slimsam_50"`` / ``"slimsam_77"`` (or the rows ``"vit_p50"`` / ``"vit_p77"``) for the uniform
    checkpoints, a per-block widths dict (has ``qk_dims``), or a uniform ViT config dict for ``build_sam_vit``.
    """
    if isinstance(variant, str):
        row = SLIMSAM_UNIFORM_VARIANTS.get(variant, variant)
        if row not in SLIMSAM_UNIFORM_VARIANTS.values():
            raise ValueError(f"unknown SlimSAM variant {variant!r}; known: {sorted(SLIMSAM_UNIFORM_VARIANTS)}")
        return build_sam_vit(row, img_size=img_size)
    if is_per_block_widths(variant):
        return _sam_with_encoder(build_pruned_image_encoder(variant, img_size), img_size)
    if isinstance(variant, Mapping):
        return build_sam_vit(variant, img_size=img_size)
    raise TypeError(f"variant must be a name or a dict, got {type(variant).__name__}")


# ---------------------------------------------------------------------------------------------- state dicts

_SPLIT_QKV = re.compile(r"^(.*\.attn\.)q\.(weight|bias)$")


def fuse_split_qkv(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """SlimSAM's ``attn.q/k/v.{weight,bias}`` → SAM's ``attn.qkv.*`` (q, k, v rows stacked); other keys unchanged.

    Also folds a DataParallel level left inside the encoder (``image_encoder.module.``) away.
    """
    state = {re.sub(r"(^|\.)image_encoder\.module\.", r"\1image_encoder.", k): v for k, v in state_dict.items()}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _SPLIT_QKV.match(key)
        if match is not None:
            prefix, kind = match.groups()
            parts = [state.get(f"{prefix}{name}.{kind}") for name in "qkv"]
            if any(p is None for p in parts):
                raise ValueError(f"{prefix}q.{kind} is present but {prefix}k.{kind} or {prefix}v.{kind} is missing")
            if parts[0].shape != parts[1].shape:
                raise ValueError(f"{prefix}q and {prefix}k have different shapes {tuple(parts[0].shape)} and "
                                 f"{tuple(parts[1].shape)}; q·kᵀ needs equal widths")
            out[f"{prefix}qkv.{kind}"] = torch.cat(parts, dim=0)
        elif re.match(r"^.*\.attn\.[kv]\.(weight|bias)$", key) is None:
            out[key] = value
    return out


def _encoder_prefix(state: Mapping[str, Tensor]) -> str:
    key = next((k for k in state if k == "patch_embed.proj.weight" or k.endswith(".patch_embed.proj.weight")), None)
    if key is None:
        raise ValueError("not a SAM ViT state dict: no patch_embed.proj.weight key")
    return key[: -len("patch_embed.proj.weight")]


def infer_widths(state_dict: Mapping[str, Tensor], num_heads: Optional[int] = None) -> dict[str, Any]:
    """Per-block widths (and ``img_size``) from tensor shapes; split q/k/v or fused qkv both work.

    Heads come from ``q_rows / rel_pos_h.shape[1]`` (the relative tables have the per-head width); without relative
    positions ``num_heads`` (default 12) is used. Global blocks are those whose table spans the whole token grid.
    Attention scales are not in a state dict: ``attn_scales`` is None, meaning ``head_dim^-0.5`` (SlimSAM's value
    after ``get_pos_init``); pass a widths JSON to override. Returns the widths dict plus ``"img_size"``.
    """
    state = fuse_split_qkv(state_dict)
    p = _encoder_prefix(state)
    patch = state[f"{p}patch_embed.proj.weight"]
    embed, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    pos = state.get(f"{p}pos_embed")
    if pos is None:
        raise ValueError(f"no {p}pos_embed: cannot tell the input size of this encoder")
    grid = int(pos.shape[1])
    depth = len({int(m.group(1)) for k in state if (m := re.match(re.escape(p) + r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise ValueError(f"no {p}blocks.* keys in the state dict")
    widths: dict[str, Any] = {"embed_dim": embed, "qk_dims": [], "v_dims": [], "mlp_dims": [], "num_heads": [],
                              "attn_scales": None, "global_attn_indexes": [], "patch_size": patch_size}
    windows: set[int] = set()
    for i in range(depth):
        b = f"{p}blocks.{i}."
        try:
            qkv_rows = int(state[b + "attn.qkv.weight"].shape[0])
            v_dim = int(state[b + "attn.proj.weight"].shape[1])
            mlp = int(state[b + "mlp.lin1.weight"].shape[0])
        except KeyError as err:
            raise ValueError(f"block {i}: missing key {err.args[0]}") from None
        qk_dim = (qkv_rows - v_dim) // 2
        if qk_dim < 1 or 2 * qk_dim + v_dim != qkv_rows:
            raise ValueError(f"block {i}: attn.qkv has {qkv_rows} rows, inconsistent with attn.proj's {v_dim} inputs")
        rel_h = state.get(b + "attn.rel_pos_h")
        if rel_h is not None:
            head_dim, length = int(rel_h.shape[1]), int(rel_h.shape[0])
            if qk_dim % head_dim:
                raise ValueError(f"block {i}: q width {qk_dim} is not a multiple of rel_pos_h's head dim {head_dim}")
            heads = qk_dim // head_dim
            if length == 2 * grid - 1:
                widths["global_attn_indexes"].append(i)
            elif length % 2 == 1:
                windows.add((length + 1) // 2)
            else:
                raise ValueError(f"block {i}: rel_pos_h has {length} rows; expected an odd 2·size−1")
        else:
            heads = num_heads or SLIMSAM_NUM_HEADS
        widths["qk_dims"].append(qk_dim)
        widths["v_dims"].append(v_dim)
        widths["mlp_dims"].append(mlp)
        widths["num_heads"].append(heads)
    widths["use_rel_pos"] = f"{p}blocks.0.attn.rel_pos_h" in state
    widths["qkv_bias"] = f"{p}blocks.0.attn.qkv.bias" in state
    if len(windows) > 1:
        raise ValueError(f"windowed blocks disagree on the window size: {sorted(windows)}")
    widths["window_size"] = windows.pop() if windows else 14
    if not widths["use_rel_pos"]:
        widths["global_attn_indexes"] = None  # not visible without relative tables: use the depth's default
    widths = resolve_widths(widths)
    widths["img_size"] = grid * patch_size
    return widths


def build_slimsam_from_state_dict(
    state_dict: Mapping[str, Tensor], widths: Optional[Mapping[str, Any]] = None, source: str = "state dict"
) -> Sam:
    """A ``Sam`` with per-block widths built from ``state_dict`` (split q/k/v or fused) and loaded strictly.

    ``widths`` (e.g. from :func:`read_widths_json`) overrides what the shapes tell; it matters for the attention
    scales and for encoders without relative positions. The input size is the checkpoint's (``pos_embed``).
    A state dict of the encoder alone (keys without ``image_encoder.``) leaves the prompt encoder and mask decoder
    at initialisation (a warning says so); load SAM-B's into them if needed.
    """
    from ..checkpoint import load_state_dict_strict

    state = fuse_split_qkv(state_dict)
    inferred = infer_widths(state)
    img_size = inferred.pop("img_size")
    chosen = dict(widths) if widths is not None else inferred
    chosen.pop("img_size", None)
    model = _sam_with_encoder(build_pruned_image_encoder(chosen, img_size), img_size)
    prefix = _encoder_prefix(state)
    if prefix == "":
        logger.warning("%s holds the image encoder only; prompt encoder and mask decoder stay at initialisation",
                       source)
        state = {f"image_encoder.{k}": v for k, v in state.items()}
        load_state_dict_strict(model, state, source=source, optional_prefixes=("prompt_encoder.", "mask_decoder."))
    elif prefix == "image_encoder.":
        load_state_dict_strict(model, state, source=source)
    else:
        raise ValueError(f"{source}: unexpected encoder key prefix {prefix!r} (expected 'image_encoder.' or none)")
    return model
