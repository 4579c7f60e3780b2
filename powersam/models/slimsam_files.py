"""SlimSAM files: widths JSON, and pickled whole SlimSAM models read and converted without SlimSAM's code.

A globally pruned SlimSAM is published as a pickled ``nn.Module`` whose per-block widths and attention scales are
attributes of its modules (see :mod:`powersam.models.slimsam`); these helpers recover them, and write either a
PowerSAM checkpoint that carries them or a widths JSON beside a plain state dict.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Union

from torch import Tensor, nn

from .slimsam import (
    build_slimsam_from_state_dict,
    fuse_split_qkv,
    infer_widths,
    is_per_block_widths,
    resolve_widths,
    widths_of,
)

logger = logging.getLogger(__name__)

__all__ = ["convert_slimsam_checkpoint", "read_slimsam_pickle", "read_widths_json", "write_widths_json"]


def _plain_widths(source: Any) -> dict[str, Any]:
    if isinstance(source, nn.Module):
        return widths_of(source)
    if is_per_block_widths(source):
        return resolve_widths(source)
    if isinstance(source, Mapping):
        return infer_widths(source)
    raise TypeError(f"expected a state dict, a widths dict or a module, got {type(source).__name__}")


def write_widths_json(source: Any, path: Union[str, os.PathLike]) -> Path:
    """Write the widths of ``source`` (a state dict, a widths dict or a SAM ViT module) as JSON, atomically."""
    from ..checkpoint import atomic_write

    text = json.dumps(_plain_widths(source), indent=1) + "\n"
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def read_widths_json(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """Read and validate a widths JSON written by :func:`write_widths_json` (``img_size`` is kept if present)."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    img_size = data.pop("img_size", None) if isinstance(data, dict) else None
    widths = resolve_widths(data)
    if img_size is not None:
        widths["img_size"] = int(img_size)
    return widths


def _pickled_attrs(node: Any) -> dict:
    state = getattr(node, "pickled_state", None)
    return state if isinstance(state, dict) else {}


def _pickled_child(node: Any, name: str) -> Any:
    child = (_pickled_attrs(node).get("_modules") or {}).get(name)
    if child is not None and type(child).__name__ in ("DataParallel", "DistributedDataParallel"):
        child = (_pickled_attrs(child).get("_modules") or {}).get("module")
    return child


def read_slimsam_pickle(path: Union[str, os.PathLike]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a pickled whole SlimSAM model (``torch.save(model)``) **without SlimSAM's code**.

    The restricted unpickler of :mod:`powersam.checkpoint.convert` turns every foreign class into an inert
    placeholder, so nothing from the file is imported or run. Returns ``(state_dict, widths)``: SAM-layout tensors
    (q/k/v fused, DataParallel level removed) and the widths incl. each block's pickled ``scale`` and
    ``num_heads``. Works for a pickled ``Sam`` and for a pickled image encoder alone (then the keys have no
    ``image_encoder.`` prefix).
    """
    from ..checkpoint import CheckpointError
    from ..checkpoint.convert import _safe_load_zip_checkpoint, _state_dict_from_payload

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    payload, _refused = _safe_load_zip_checkpoint(path)
    try:
        tensors, _dropped = _state_dict_from_payload(payload)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    state = fuse_split_qkv(tensors)
    widths = infer_widths(state)
    is_sam = "image_encoder" in (_pickled_attrs(payload).get("_modules") or {})
    encoder = _pickled_child(payload, "image_encoder") if is_sam else payload
    blocks = _pickled_child(encoder, "blocks")
    scales, heads = [], []
    for i in range(len(widths["qk_dims"])):
        attn = _pickled_child(_pickled_child(blocks, str(i)), "attn")
        attrs = _pickled_attrs(attn)
        scales.append(attrs.get("scale"))
        heads.append(attrs.get("num_heads"))
    if all(isinstance(s, (int, float)) for s in scales):
        widths["attn_scales"] = [float(s) for s in scales]
    else:
        logger.warning("%s: no pickled attention scales found; assuming head_dim^-0.5", path)
    if all(isinstance(h, int) for h in heads):
        widths["num_heads"] = heads
    global_indexes = _pickled_attrs(encoder).get("global_attn_indexes")
    if isinstance(global_indexes, (list, tuple)) and all(isinstance(i, int) for i in global_indexes):
        widths["global_attn_indexes"] = sorted(global_indexes)
    img_size = widths.pop("img_size")
    widths = resolve_widths(widths)
    widths["img_size"] = img_size
    return state, widths


def convert_slimsam_checkpoint(src: Union[str, os.PathLike], dst: Union[str, os.PathLike],
                               model_name: str = "slimsam_custom") -> Path:
    """Pickled SlimSAM model → PowerSAM checkpoint (``model_config = {"img_size", "widths"}``), loadable with
    ``build_slimsam_from_state_dict`` or, through the zoo, ``build_model(checkpoint=dst)``."""
    from ..checkpoint import save_checkpoint

    state, widths = read_slimsam_pickle(src)
    img_size = widths.pop("img_size")
    model = build_slimsam_from_state_dict(state, widths, source=str(src))  # proves the result loads strictly
    return save_checkpoint(dst, model.state_dict(), model_name=model_name,
                           model_config={"img_size": img_size, "widths": widths}, meta={"converted_from": str(src)})
