"""Guess the model family of a state dict from its key names and shapes.

:func:`identify_checkpoint` lets tools name a file before building anything, and
:func:`powersam.checkpoint.load_state_dict_strict` uses :func:`_identify` to say what a mismatching file
probably is ("This looks like a sam_vit_h checkpoint; the model is powersam_s"), which turns most
wrong-file errors into a one-line diagnosis.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["identify_checkpoint"]

_SAM_VITS = {(768, 12): "sam_vit_b", (1024, 24): "sam_vit_l", (1280, 32): "sam_vit_h"}
_HIERA_BY_DIM = {112: "sam2_hiera_b+", 144: "sam2_hiera_l"}
_HIERA_SMALL_BY_DEPTH = {12: "sam2_hiera_t", 16: "sam2_hiera_s"}
_REPVIT_BY_STEM = {20: ("powersam_s", "m0"), 24: ("edgesam/powersam_b", "m1")}
_YOLOX_BY_STEM = {16: "yolox_nano", 24: "yolox_tiny", 32: "yolox_s", 48: "yolox_m", 64: "yolox_l", 80: "yolox_x"}


def _key_ending(state: Mapping[str, Any], suffix: str) -> str | None:
    return next((k for k in state if k == suffix or k.endswith("." + suffix)), None)


def _shape_of(state: Mapping[str, Any], key: str | None) -> tuple[int, ...] | None:
    shape = getattr(state.get(key), "shape", None) if key is not None else None
    return tuple(int(s) for s in shape) if shape is not None else None


def _count_indices(state: Mapping[str, Any], pattern: str) -> int:
    found = re.compile(pattern)
    return len({m.group(1) for k in state if (m := found.search(k))})


def _identify(state: Mapping[str, Any]) -> tuple[str, str] | None:
    """(family name, details) guessed from key names and shapes, or None."""
    if not state:
        return None
    hiera_patch = _shape_of(state, _key_ending(state, "trunk.patch_embed.proj.weight"))
    if hiera_patch is not None:
        dim, depth = hiera_patch[0], _count_indices(state, r"trunk\.blocks\.(\d+)\.")
        name = _HIERA_BY_DIM.get(dim) or (_HIERA_SMALL_BY_DEPTH.get(depth) if dim == 96 else None)
        return name or "sam2_hiera", f"embed dim {dim}, {depth} blocks"

    head_cls = _shape_of(state, _key_ending(state, "bbox_head.multi_level_conv_cls.0.weight"))
    if any(k.startswith("backbone.features.") for k in state) and head_cls is not None \
            and any(k.startswith("neck.reduce_layers.") for k in state):
        stem = _shape_of(state, "backbone.features.0.0.c.weight")
        arch = _REPVIT_BY_STEM.get(stem[0], (None, None))[1] if stem else None
        backbone = f"{arch} backbone" if arch else f"RepViT backbone, stem {stem[0] if stem else '?'} ch"
        return f"bbpg ({backbone}, {head_cls[0]} classes)", ""
    yolox_stem = _shape_of(state, "backbone.stem.conv.conv.weight")
    if yolox_stem is not None and any(k.startswith("bbox_head.") for k in state):
        name = _YOLOX_BY_STEM.get(yolox_stem[0], "yolox")
        classes = f", {head_cls[0]} classes" if head_cls else ""
        return f"{name} (stem {yolox_stem[0]} ch{classes})", ""

    has_decoder = any(k.startswith("mask_decoder.") for k in state)
    repvit_stem = _shape_of(state, _key_ending(state, "features.0.0.c.weight"))
    if repvit_stem is not None:
        name, arch = _REPVIT_BY_STEM.get(repvit_stem[0], ("repvit_sam", None))
        details = [f"RepViT {arch}" if arch else f"RepViT, stem {repvit_stem[0]} ch"]
        if any(k.startswith(("fpn.", "rpn_head.")) for k in state):
            details.append("with EdgeSAM RPN keys fpn./rpn_head.")
        if not has_decoder:
            details.append("image encoder only")
        return name, ", ".join(details)

    vit_patch = _shape_of(state, _key_ending(state, "patch_embed.proj.weight"))
    if vit_patch is not None and any(".attn." in k for k in state):
        dim, depth = vit_patch[0], _count_indices(state, r"(?:^|\.)blocks\.(\d+)\.")
        split_qkv = _key_ending(state, "attn.q.weight") is not None
        standard = all(
            shape == (4 * dim, dim)
            for k in state if k.endswith("mlp.lin1.weight") and (shape := _shape_of(state, k)) is not None
        ) and all(
            shape == (3 * dim, dim)
            for k in state if k.endswith("attn.qkv.weight") and (shape := _shape_of(state, k)) is not None
        )
        details = f"embed dim {dim}, {depth} blocks"
        if not split_qkv and standard and (dim, depth) in _SAM_VITS:
            return _SAM_VITS[(dim, depth)], details
        if split_qkv or dim < 768 or not standard:
            notes = [details] + ["split q/k/v"] * split_qkv + ["pruned widths"] * (not standard)
            return "slimsam", ", ".join(notes)
        return "sam_vit", details
    if has_decoder:
        return "sam_decoder", "prompt encoder and mask decoder only, no image encoder"
    return None


def identify_checkpoint(state_dict: Mapping[str, Any]) -> str | None:
    """Guess which model family a state dict belongs to from its key names and shapes.

    Returns a short name such as ``"sam_vit_h"``, ``"slimsam"``, ``"powersam_s"``, ``"edgesam/powersam_b"``,
    ``"sam2_hiera_l"``, ``"bbpg (m0 backbone, 12 classes)"`` or ``"yolox_s (stem 32 ch, 12 classes)"``;
    None when nothing matches. Works on any mapping whose values have ``.shape`` (meta tensors too).
    """
    found = _identify(state_dict)
    return found[0] if found else None
