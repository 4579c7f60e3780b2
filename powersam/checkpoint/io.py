"""Checkpoint files: the errors, PowerSAM's own format, safe reading and atomic writing.

* :func:`read_checkpoint` loads ``.pth/.pt/.bin`` with ``torch.load(weights_only=True)`` (no pickled code runs)
  or ``.safetensors``, unwraps ``{'model': sd}`` / ``{'state_dict': sd}`` / our own format, and strips a
  DataParallel ``module.`` prefix.
* :func:`save_checkpoint` / :func:`read_powersam_checkpoint` write and read PowerSAM's own format, a plain dict
  that ``weights_only`` loading accepts; :func:`check_plain` says which value would break that.
* :func:`atomic_write` makes every writer (checkpoints, training state, embedding caches) leave either the old
  file or the complete new one, never a partial file.
"""
from __future__ import annotations

import os
import pickle
import re
import secrets
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "read_checkpoint",
    "read_powersam_checkpoint",
    "save_checkpoint",
    "atomic_write",
    "check_plain",
]

FORMAT_NAME = "powersam"
FORMAT_VERSION = 1
_FORMAT_KEYS = ("format", "format_version", "model_name", "model_config", "state_dict", "class_names", "meta")
_WRAPPER_KEYS = ("state_dict", "model")  # mmengine/mmdet use 'state_dict'; SAM2, EdgeSAM training use 'model'


class CheckpointError(ValueError, RuntimeError):
    """A checkpoint file cannot be read or used. Both a ``ValueError`` and a ``RuntimeError`` so callers
    catching either (torch raises RuntimeError for load problems) see it."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes do not match the model; the message holds the full diff."""

    def __init__(
        self,
        message: str,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        wrong_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.wrong_shape = wrong_shape or []


# ---------------------------------------------------------------------------------------------- reading


def _load_payload(path: str | os.PathLike) -> Any:
    """Whatever object the file holds, loaded without running pickled code; a shipped name (``synth``, …) gives
    the hash-checked weights inside the package as a PowerSAM payload (:mod:`powersam.weights`)."""
    from ..weights import is_shipped_name, shipped_payload

    if is_shipped_name(path):
        return shipped_payload(os.fspath(path))
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); the download or save did not finish")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError for a bad header or size
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(err)})") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            raise _needs_globals_error(path, err) from err
        raise _corrupt_error(path, err) from err
    except (OSError, MemoryError):
        raise
    except Exception as err:  # torch reports corrupt files as RuntimeError/EOFError/KeyError/ValueError
        raise _corrupt_error(path, err) from err


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length and then the JSON header."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else "no details"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _corrupt_error(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path}: not a readable PyTorch checkpoint; the file is corrupt, truncated or in another format "
        f"({type(err).__name__}: {_first_line(err)})"
    )


def _needs_globals_error(path: Path, err: BaseException) -> CheckpointError:
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy format or unreadable pickle: fall back to what torch's message names
        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(err))))
    if not names:  # no pickled global to blame (e.g. 'Unsupported operand'): the bytes are not a checkpoint
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        return CheckpointError(
            f"{path}: not a readable PyTorch checkpoint; the file is corrupt, truncated or in another format "
            f"({detail.group(1).strip() if detail else _first_line(err)})"
        )
    needs = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return CheckpointError(
        f"{path}: the checkpoint pickles Python objects that a safe load refuses (it needs the global(s) "
        f"{needs}). It is probably a training checkpoint (mmengine/mmdet, yacs config) or a whole pickled "
        f"model. Convert it once to a plain state dict with `powersam convert {shlex.quote(str(path))} "
        f"<output.pth>`; "
        f"the conversion reads the tensors without running any pickled code."
    )


def _is_powersam_payload(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("format") == FORMAT_NAME


def _extract_state_dict(payload: Any, path: str | os.PathLike) -> dict[str, Tensor]:
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{path}: expected a dict of tensors (a state dict), got a {type(payload).__name__}"
        )
    state = payload
    for _ in range(2):  # at most two wrapper levels, e.g. {'model': {'state_dict': ...}}
        if _is_powersam_payload(state):
            state = state.get("state_dict")
            continue
        if state and all(isinstance(v, Tensor) for v in state.values()):
            break
        inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: its 'state_dict' entry is a {type(state).__name__}, not a dict")
    bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        shown = ", ".join(repr(k) for k in bad[:10])
        raise CheckpointError(
            f"{path}: found no state dict: expected string keys with tensor values (possibly under "
            f"'state_dict' or 'model'), but {len(bad)} entries are not (e.g. {shown}); "
            f"top-level keys: {sorted(map(str, payload))[:20]}"
        )
    return _strip_prefix_if_everywhere(state, "module.")


def _strip_prefix_if_everywhere(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict (name → tensor on CPU) from ``.pth/.pt/.bin`` or ``.safetensors``.

    Unwraps ``{'state_dict': sd}``, ``{'model': sd}`` and PowerSAM's own format, and strips a ``module.``
    prefix carried by every key (DataParallel/DDP). Raises ``FileNotFoundError`` for a missing file and
    :class:`CheckpointError` for a corrupt file, a non-dict payload, or a pickle that needs foreign code
    (then the message points at ``powersam convert``).
    """
    return _extract_state_dict(_load_payload(path), path)


def read_powersam_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The whole dict of a PowerSAM-format file (keys as written by :func:`save_checkpoint`).

    Foreign files come back in the same shape with ``format``/``model_name`` None, so callers can always
    index ``ckpt["state_dict"]``, ``ckpt["model_name"]``, ``ckpt["model_config"]``, ``ckpt["class_names"]``.
    """
    payload = _load_payload(path)
    if not _is_powersam_payload(payload):
        return {
            "format": None, "format_version": None, "model_name": None, "model_config": {},
            "state_dict": _extract_state_dict(payload, path), "class_names": None, "meta": {},
        }
    version = payload.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: PowerSAM checkpoint with invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer PowerSAM (format_version {version}; this one reads up to "
            f"{FORMAT_VERSION}); upgrade powersam"
        )
    if not isinstance(payload.get("model_name"), str):
        raise CheckpointError(f"{path}: PowerSAM checkpoint without a 'model_name' string")
    result = dict(payload)
    result["state_dict"] = _extract_state_dict(payload, path)
    result["model_config"] = payload.get("model_config") or {}
    result["meta"] = payload.get("meta") or {}
    result.setdefault("class_names", None)
    return result


# ---------------------------------------------------------------------------------------------- writing


def _fsync_directory(directory: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file so that readers see either the old file or the complete new one, never a partial one.

    ``write`` gets a binary file object for a temporary file in the same directory; it is flushed and
    fsynced, renamed over ``path`` with ``os.replace``, and the directory is fsynced. On any error the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    while True:  # O_EXCL: never clobber another writer's temp file; 0o666 lets the umask decide the mode
        tmp = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    _remove_orphaned_temporaries(path)
    return path


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but is not ours, or cannot tell: leave its file alone
    return True


def _remove_orphaned_temporaries(path: Path) -> None:
    """Delete temp files for ``path`` left by writers that died mid-write (``kill -9``): their PID is gone."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]+\.tmp$")
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        match = pattern.match(candidate.name)
        if match and int(match.group(1)) != os.getpid() and not _process_alive(int(match.group(1))):
            candidate.unlink(missing_ok=True)


def _plain_tensor(tensor: Tensor) -> Tensor:
    """Detached CPU ``torch.Tensor`` that owns exactly its data (so saving a view does not save its base)."""
    tensor = tensor.detach().to("cpu")
    if type(tensor) is not Tensor:
        tensor = tensor.as_subclass(Tensor)
    if not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    return tensor


_PLAIN_SCALARS = (str, int, float, bool, type(None), Tensor, torch.Size, torch.dtype, torch.device)


def check_plain(value: Any, where: str = "state") -> None:
    """Raise TypeError naming the first entry of ``value`` that ``torch.load(weights_only=True)`` would reject."""
    if isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key of type {type(key).__name__} ({key!r}); use str or int keys")
            check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which a weights_only load cannot read "
        "back; store only None, bool, int, float, str, tensors, and lists/tuples/dicts of those (e.g. str(path))"
    )


def save_checkpoint(
    path: str | os.PathLike,
    state_dict: Mapping[str, Tensor],
    model_name: str,
    model_config: Mapping[str, Any] | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
    meta: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write a PowerSAM checkpoint that ``torch.load(weights_only=True)`` can read.

    The file holds ``{"format": "powersam", "format_version": 1, "model_name", "model_config",
    "state_dict", "class_names", "meta", **extra}``. Every value must be a plain type (see :func:`check_plain`).
    """
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of name → tensor, got {type(state_dict).__name__}")
    tensors: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise TypeError(f"state_dict entry {key!r} must map a str to a tensor, got {type(value).__name__}")
        tensors[key] = _plain_tensor(value)
    if class_names is not None and not all(isinstance(c, str) for c in class_names):
        raise TypeError(f"class_names must be strings, got {class_names!r}")
    payload: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "model_config": dict(model_config or {}),
        "state_dict": tensors,
        "class_names": list(class_names) if class_names is not None else None,
        "meta": dict(meta or {}),
    }
    clashes = sorted(set(extra or {}) & set(_FORMAT_KEYS))
    if clashes:
        raise ValueError(f"extra must not redefine the format keys {clashes}")
    payload.update(extra or {})
    for key, value in payload.items():
        if key != "state_dict":
            check_plain(value, key)
    return atomic_write(path, lambda handle: torch.save(payload, handle))
