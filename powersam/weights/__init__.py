"""Weights that ship inside the package, so a fresh machine without any SAM checkpoint still has a teacher.

``synth`` is a SAM-architecture teacher (SAM prompt encoder + mask decoder on EdgeSAM's RepViT-M1 encoder)
pretrained on procedural substation scenes by ``powersam train synth-teacher`` (see
``configs/pretrain/synth_teacher.yaml``). It lives here as float16 safetensors next to a JSON record: the
command, steps, wall time, machine, git commit, its sha256 and its measured held-out numbers.

Anywhere a checkpoint path is accepted, the name ``synth`` loads it::

    build_model(checkpoint="synth", img_size=512)          # an edgesam-architecture SAM
    powersam demo --set teacher.checkpoint=synth            # the demo's default

The file's sha256 is checked against the record before its tensors are used; a mismatch is an error (a
damaged install, or a file replaced without its record).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Union

_FOLDER = Path(__file__).resolve().parent
# name → file stem: the teacher, and student encoders pre-distilled from it (`powersam train synth-student`)
_FILES = {"synth": "synth_teacher", "synth_powersam_s": "synth_powersam_s", "synth_powersam_b": "synth_powersam_b"}
SHIPPED_NAMES = tuple(_FILES)
_VERIFIED: dict[Path, str] = {}


class ShippedWeightsError(RuntimeError):
    """The shipped weights are missing, or their bytes do not match their recorded sha256."""


def is_shipped_name(value: Any) -> bool:
    """Whether ``value`` names shipped weights (a plain name such as ``synth``, not a path such as ``./synth``)."""
    return isinstance(value, (str, os.PathLike)) and os.fspath(value) in SHIPPED_NAMES


def shipped_paths(name: str = "synth") -> tuple[Path, Path]:
    """(weights ``.safetensors``, record ``.json``) of shipped weights ``name``."""
    if name not in _FILES:
        raise ValueError(f"no shipped weights named {name!r}; shipped: {', '.join(SHIPPED_NAMES)}")
    stem = _FOLDER / _FILES[name]
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def sha256_file(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_teacher_record(name: str = "synth") -> dict[str, Any]:
    """The JSON record beside shipped weights ``name`` (recipe, steps, hash, held-out numbers)."""
    weights, record = shipped_paths(name)
    if not record.is_file() or not weights.is_file():
        raise ShippedWeightsError(f"the shipped {name!r} weights are missing from this install ({weights}); "
                                  "reinstall powersam, or pass a checkpoint file instead")
    return json.loads(record.read_text(encoding="utf-8"))


def verified_shipped_path(name: str = "synth") -> Path:
    """The weights file of ``name`` after checking its sha256 against the record (once per process)."""
    weights, _ = shipped_paths(name)
    record = shipped_teacher_record(name)
    expected = record.get("sha256")
    if _VERIFIED.get(weights) != expected:
        actual = sha256_file(weights)
        if actual != expected:
            raise ShippedWeightsError(f"{weights}: sha256 {actual} does not match the recorded {expected}; the "
                                      "file is damaged or was replaced without its record — reinstall powersam")
        _VERIFIED[weights] = expected
    return weights


def shipped_payload(name: str = "synth") -> dict[str, Any]:
    """Shipped weights as a PowerSAM checkpoint payload (what :func:`read_powersam_checkpoint` returns).

    ``model_config`` records the size it was trained at, the default of ``build_model``: the convolutional models
    also run at any other ``img_size`` the caller asks for (256, 512, 1024), but a model trained at 256 silently
    built at the generic default of 1024 loses most of its quality (the shipped PowerSAM-S: box AP50 0.63 → 0.14)."""
    from safetensors.torch import load_file

    path = verified_shipped_path(name)
    record = shipped_teacher_record(name)
    return {"format": "powersam", "format_version": 1, "model_name": record["model"],
            "model_config": {"img_size": int(record["img_size"])} if record.get("img_size") else {},
            "state_dict": load_file(str(path), device="cpu"), "class_names": record.get("class_names"),
            "meta": {"stage": record.get("stage", "teacher"), "shipped": name, "from_scratch": False, **record}}


def resolve_teacher_checkpoint(value: Union[str, Path]) -> Union[str, Path]:
    """``value`` unchanged: a shipped name stays a name (the checkpoint reader resolves it), a path a path."""
    return os.fspath(value) if is_shipped_name(value) else Path(value)


def ship_weights(checkpoint: Union[str, Path], record: dict[str, Any], name: str = "synth") -> tuple[Path, Path]:
    """Write ``checkpoint`` (a PowerSAM SAM checkpoint) as the package's float16 safetensors ``name`` and
    ``record`` as its JSON.

    The record gets ``model`` and ``sha256`` filled in; returns (weights, record) paths."""
    import torch
    from safetensors.torch import save_file

    from ..checkpoint import read_powersam_checkpoint

    payload = read_powersam_checkpoint(checkpoint)
    if payload.get("model_name") is None:
        raise ValueError(f"{checkpoint} is not a PowerSAM checkpoint (it records no model)")
    state = {key: value.detach().to(torch.float16).contiguous() for key, value in payload["state_dict"].items()}
    weights, record_path = shipped_paths(name)
    temporary = weights.with_suffix(".tmp")
    save_file(state, str(temporary), metadata={"model": payload["model_name"], "format": "powersam-shipped"})
    os.chmod(temporary, 0o644)
    os.replace(temporary, weights)
    full = {**record, "model": payload["model_name"], "class_names": payload.get("class_names"),
            "file": weights.name, "dtype": "float16",
            "bytes": weights.stat().st_size, "sha256": sha256_file(weights)}
    record_path.write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    _VERIFIED.pop(weights, None)
    return weights, record_path


__all__ = ["SHIPPED_NAMES", "ShippedWeightsError", "is_shipped_name", "resolve_teacher_checkpoint",
           "ship_weights", "shipped_payload", "shipped_paths", "shipped_teacher_record", "verified_shipped_path"]
