"""Checkpoint I/O: safe reading, strict loading with readable diffs, family detection, safe conversion.

* :func:`read_checkpoint` loads ``.pth/.pt/.bin`` with ``torch.load(weights_only=True)`` (no pickled code runs)
  or ``.safetensors``, unwraps ``{'model': sd}`` / ``{'state_dict': sd}`` / our own format, and strips a
  DataParallel ``module.`` prefix.
* :func:`save_checkpoint` / :func:`read_powersam_checkpoint` write and read PowerSAM's own format, a plain dict
  that ``weights_only`` loading accepts.
* :func:`load_state_dict_strict` compares keys and shapes before copying and explains any mismatch
  (grouped key lists, both shapes, a guess of what the file is via :func:`identify_checkpoint`).
* :func:`convert_mmengine_checkpoint` turns training checkpoints that pickle foreign objects (mmengine
  message hubs, yacs configs, whole ``nn.Module``s) into plain state dicts without importing or running any
  of that code (a restricted unpickler reads the zip archive itself).

The parts live in submodules: :mod:`.io` (errors, the format, reading, atomic writing, saving),
:mod:`.identify` (guessing the model family of a state dict), :mod:`.strict` (strict loading and mismatch
messages) and :mod:`.convert` (the restricted unpickler and checkpoint conversion). Import the public names
from here; private helpers from the submodule that defines them.
"""
from __future__ import annotations

from .convert import convert_mmengine_checkpoint
from .identify import identify_checkpoint
from .io import (
    FORMAT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMismatchError,
    atomic_write,
    check_plain,
    read_checkpoint,
    read_powersam_checkpoint,
    save_checkpoint,
)
from .strict import LoadReport, load_state_dict_strict

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "LoadReport",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "read_checkpoint",
    "read_powersam_checkpoint",
    "save_checkpoint",
    "load_state_dict_strict",
    "identify_checkpoint",
    "convert_mmengine_checkpoint",
    "atomic_write",
    "check_plain",
]
