"""Atomic save / load of the *training* state (optimizer, schedule, EMA, RNG, counters).

Model-only checkpoints for inference go through :mod:`powersam.checkpoint`; this module is for the
``last.pt`` file a run resumes from. The file is written with :func:`torch.save` and read back with
``weights_only=True``, so everything in it must be "plain": tensors, dicts, lists, tuples, strings, numbers,
booleans and ``None``. :func:`save_training_state` checks that *before* writing, so a stray object (a NumPy
array, a dataclass) is reported at save time, naming its key, rather than as an unpickling error at resume.

Writes are atomic: the bytes go to a temporary file in the same folder, which is flushed and fsync'ed and
then moved over the target with :func:`os.replace`; the folder itself is fsync'ed afterwards. A crash at any
point leaves either the old file or the new one, never a truncated mix.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Union

import numpy as np
import torch

from ..checkpoint import atomic_write, check_plain

__all__ = [
    "capture_rng_state",
    "check_plain",
    "load_training_state",
    "restore_rng_state",
    "save_training_state",
    "seed_everything",
]

PathLike = Union[str, "os.PathLike[str]"]

def save_training_state(path: PathLike, state: dict) -> Path:
    """Atomically write ``state`` (a plain dict, see the module docstring) to ``path``; returns the path.

    Raises:
        TypeError: ``state`` is not a dict or holds something a ``weights_only`` load cannot read.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    check_plain(state)
    # Also on KeyboardInterrupt the previous file stays untouched: only the temporary file goes.
    return atomic_write(path, lambda handle: torch.save(state, handle))


def load_training_state(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict:
    """Read a file written by :func:`save_training_state` (``weights_only=True``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a dict (e.g. a model-only checkpoint saved by something else).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training state {path} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a training-state dict")
    return state


# --------------------------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict:
    """The Python, NumPy, torch-CPU and (if initialised) CUDA generator states, as plain tensors and lists."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [str(np_name), torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`. CUDA states are restored only when the device count matches."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((int(py_version), tuple(int(v) for v in py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    keys = np.asarray(torch.as_tensor(np_keys).numpy(), dtype=np.uint32)
    np.random.set_state((np_name, keys, int(np_pos), int(np_has_gauss), float(np_gauss)))
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8) for s in cuda_states])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). NumPy only takes 32-bit seeds, so it gets ``seed mod 2**32``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
