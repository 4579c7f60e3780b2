"""Safe conversion of training checkpoints that pickle foreign objects.

mmengine/mmdet checkpoints (message hubs), EdgeSAM/PowerSAM training checkpoints (yacs configs) and whole
pickled ``nn.Module``s cannot be read with ``torch.load(weights_only=True)``, and loading them unrestricted would
run their code. A restricted unpickler reads the ``torch.save`` zip archive itself, rebuilds only tensors and
a few builtin containers, and replaces every other global by an inert placeholder;
:func:`convert_mmengine_checkpoint` then keeps the tensors and writes a plain state dict.
"""
from __future__ import annotations

import logging
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from .io import _WRAPPER_KEYS, CheckpointError, _first_line, _plain_tensor, _strip_prefix_if_everywhere, atomic_write

__all__ = ["convert_mmengine_checkpoint"]

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- safe unpickling
#
# torch.save writes a zip archive: ``<root>/data.pkl`` (the pickled object graph, protocol 2) and one record
# ``<root>/data/<key>`` of raw bytes per storage. Tensors are pickled as calls of torch._utils rebuild
# functions whose first argument is a storage fetched through ``persistent_load(('storage', kind, key,
# location, numel))``. The reader below resolves only those rebuild functions, storage kinds, dtypes and a
# few builtin containers; every other global becomes an inert placeholder class, so no foreign code is
# imported or run.

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}
_DTYPES_BY_NAME = {str(v).removeprefix("torch."): v for v in vars(torch).values() if isinstance(v, torch.dtype)}
_DATA_PARALLEL_CLASSES = ("DataParallel", "DistributedDataParallel")


class _StorageKind:
    """What a pickled ``torch.FloatStorage``-style global resolves to: just its dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Placeholder:
    """Inert stand-in for a refused global. Calling it, building it or filling it only records data."""

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Placeholder:
        obj = object.__new__(cls)
        obj.__dict__["pickled_state"] = None
        obj.__dict__["pickled_items"] = {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Placeholder:
        return _Placeholder()

    def __setstate__(self, state: Any) -> None:
        self.__dict__["pickled_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["pickled_items"][key] = value

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<placeholder for {self.qualified_name}>"


def _placeholder_class(qualified_name: str) -> type[_Placeholder]:
    return type(qualified_name.rsplit(".", 1)[-1], (_Placeholder,), {"qualified_name": qualified_name})


def _tensor_on(storage: Any, storage_offset: int, size: Any, stride: Any, dtype: torch.dtype | None = None) -> Tensor:
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    tensor = torch.empty((0,), dtype=dtype or storage.dtype)
    return tensor.set_(storage._untyped_storage, storage_offset, size, stride)  # set_ checks the bounds


def _rebuild_tensor(storage, storage_offset, size, stride) -> Tensor:
    return _tensor_on(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> Tensor:
    return _tensor_on(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None) -> Tensor:
    return _tensor_on(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None) -> Any:
    return data  # plain tensors are all a state dict needs


def _rebuild_from_type_v2(func, new_type, args, state) -> Any:
    # Tensor subclasses and tensors with attributes: rebuild the plain tensor, drop type and attributes.
    return func(*args) if func in _SAFE_REBUILDERS else _Placeholder()


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):  # protocol-2 bytes only; no codec lookups by name
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_SAFE_REBUILDERS = {_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter}
_SAFE_GLOBALS: dict[str, Any] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.nn.parameter.Parameter": torch.nn.Parameter,
    "torch.Tensor": Tensor,
    "torch._tensor.Tensor": Tensor,
    "torch.Size": torch.Size,
    "torch.device": torch.device,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.bytearray": bytearray,
    "builtins.complex": complex,
    "_codecs.encode": _encode_latin1,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, load_storage: Callable[[torch.dtype, str, int], Any]) -> None:
        super().__init__(file, encoding="utf-8")
        self._load_storage = load_storage
        self.refused_globals: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        # Overriding find_class skips pickle's own Python-2 name mapping; protocol-2 files need it.
        import _compat_pickle

        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualified = f"{module}.{name}"
        if qualified in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[qualified]
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageKind(_STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPES_BY_NAME:
            return _DTYPES_BY_NAME[name]
        self.refused_globals.add(qualified)
        return _placeholder_class(qualified)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid  # location is ignored: everything is read to the CPU
        if not isinstance(kind, _StorageKind) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"unsupported storage record {pid!r:.80}")
        return self._load_storage(kind.dtype, str(key), numel)


def _safe_load_zip_checkpoint(path: Path) -> tuple[Any, set[str]]:
    """The object in a ``torch.save`` zip archive, with every non-tensor global replaced by a placeholder."""
    import io
    import sys
    import zipfile

    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a torch zip archive; the legacy (torch < 1.6) format and other files cannot be "
            f"converted safely. Re-save it with torch.save on a machine that has the code it pickles.")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1 or any(n.endswith("/constants.pkl") for n in names):
            raise CheckpointError(f"{path}: a zip file, but not a torch.save archive (TorchScript?)")
        root = pickles[0][: -len("data.pkl")]
        byteorder = archive.read(root + "byteorder").decode() if root + "byteorder" in names else "little"
        storages: dict[str, torch.storage.TypedStorage] = {}

        def load_storage(dtype: torch.dtype, key: str, numel: int) -> torch.storage.TypedStorage:
            if key not in storages:
                record = f"{root}data/{key}"
                if record not in names:
                    raise CheckpointError(f"{path}: storage record {record} is missing")
                raw = archive.read(record)
                nbytes = numel * torch.empty((), dtype=dtype).element_size()
                if len(raw) < nbytes:
                    raise CheckpointError(f"{path}: storage {record} is truncated ({len(raw)} < {nbytes} bytes)")
                if nbytes == 0:
                    untyped = torch.UntypedStorage(0)
                else:  # from_buffer copies, so the archive's bytes can be released
                    untyped = torch.UntypedStorage.from_buffer(raw[:nbytes], dtype=torch.uint8)
                if byteorder != sys.byteorder and dtype.itemsize > 1:
                    untyped.byteswap(dtype)
                storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
            return storages[key]

        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), load_storage)
        try:
            payload = unpickler.load()
        except CheckpointError:
            raise
        except Exception as err:  # malformed pickle stream or tensor records
            raise CheckpointError(f"{path}: the pickled data is malformed ({_first_line(err)})") from err
    return payload, unpickler.refused_globals


def _module_tensors(module: _Placeholder, prefix: str, out: dict[str, Tensor]) -> None:
    """Parameters and persistent buffers of a pickled ``nn.Module``, keyed as ``state_dict()`` would.

    DataParallel/DDP wrappers are flattened (their ``module.`` level is skipped).
    """
    state = module.pickled_state if isinstance(module.pickled_state, dict) else {}
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_parameters") or {}).items():
        if isinstance(value, Tensor):
            out[prefix + name] = value
    for name, value in (state.get("_buffers") or {}).items():
        if isinstance(value, Tensor) and name not in non_persistent:
            out[prefix + name] = value
    is_wrapper = module.qualified_name.rsplit(".", 1)[-1] in _DATA_PARALLEL_CLASSES
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, _Placeholder):
            _module_tensors(child, prefix if is_wrapper and name == "module" else f"{prefix}{name}.", out)


def _is_pickled_module(obj: Any) -> bool:
    return isinstance(obj, _Placeholder) and isinstance(obj.pickled_state, dict) and (
        "_parameters" in obj.pickled_state or "_modules" in obj.pickled_state)


def _state_dict_from_payload(payload: Any) -> tuple[dict[str, Tensor], list[str]]:
    """The tensors to keep and the names of the entries that were dropped."""
    candidate = payload
    if isinstance(payload, dict):
        candidate = next((payload[k] for k in _WRAPPER_KEYS if k in payload), payload)
    if _is_pickled_module(candidate):
        tensors: dict[str, Tensor] = {}
        _module_tensors(candidate, "", tensors)
        return tensors, []
    if not isinstance(candidate, dict):
        raise CheckpointError(f"found no state dict: the checkpoint holds a {type(candidate).__name__}")
    tensors = {k: v for k, v in candidate.items() if isinstance(k, str) and isinstance(v, Tensor)}
    dropped = [str(k) for k in candidate if str(k) not in tensors]
    if not tensors:
        raise CheckpointError(
            f"found no tensors under 'state_dict', 'model' or at the top level; top-level keys: "
            f"{sorted(map(str, payload))[:20] if isinstance(payload, dict) else type(payload).__name__}")
    return tensors, dropped


# ---------------------------------------------------------------------------------------------- conversion


def convert_mmengine_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Tensor]:
    """Rewrite a training checkpoint (mmengine/mmdet, EdgeSAM/PowerSAM yacs, whole pickled model) as a plain
    state dict at ``dst`` (``torch.save``; ``.safetensors`` if ``dst`` ends so), without running pickled code.

    Foreign objects become inert placeholders and are dropped; the tensors of ``state_dict`` (mmengine's
    EMAHook has already swapped the EMA weights in there), else ``model``, else the top-level dict, else the
    parameters and persistent buffers of a pickled ``nn.Module`` are kept. Returns the saved state dict.
    """
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise FileNotFoundError(f"checkpoint file not found: {src}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"refusing to overwrite the source checkpoint {src}; choose another output path")
    refused: set[str] = set()
    try:
        payload = torch.load(src, map_location="cpu", weights_only=True)
    except Exception:  # needs foreign globals (or is corrupt): read it with the restricted unpickler
        payload, refused = _safe_load_zip_checkpoint(src)
    try:
        state, dropped = _state_dict_from_payload(payload)
    except CheckpointError as err:
        raise CheckpointError(f"{src}: {err}") from err
    if refused:
        _log.info("%s: replaced %d pickled globals by placeholders: %s", src, len(refused), ", ".join(sorted(refused)))
    if dropped:
        _log.info("%s: dropped %d non-tensor entries: %s", src, len(dropped), ", ".join(dropped[:20]))
    state = _strip_prefix_if_everywhere(state, "module.")
    state = {k: _plain_tensor(v) for k, v in state.items()}
    if dst.suffix == ".safetensors":
        from safetensors.torch import save

        seen: set[int] = set()
        for key, value in state.items():  # safetensors refuses tensors that share memory (tied weights)
            if value.numel() and value.data_ptr() in seen:
                state[key] = value.clone()
            seen.add(value.data_ptr())
        atomic_write(dst, lambda handle: handle.write(save(state)))
    else:
        atomic_write(dst, lambda handle: torch.save(state, handle))
    return state
