"""Writing ONNX files of any size: one self-contained file, or, past protobuf's 2 GiB limit (SAM ViT-H's encoder),
the graph plus one ``<file>.data`` weight file beside it (ONNX's external-data format, which ONNX Runtime and
TensorRT's parser read from the same folder)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import onnx

from ..runtime.integrity import WEIGHTS_DIGEST_KEY, weights_digest

__all__ = ["EXTERNAL_DATA_BYTES", "external_data_path", "is_large_graph", "save_onnx"]

# Below protobuf's hard 2 GiB limit, with room for the graph itself.
EXTERNAL_DATA_BYTES = 1792 * 2**20


def external_data_path(path: Union[str, Path]) -> Path:
    """Where :func:`save_onnx` puts the weights of a large graph: ``X.onnx`` → ``X.onnx.data``."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def is_large_graph(path: Union[str, Path]) -> bool:
    """Whether the graph at ``path`` (with its ``.data`` file, if any) is past :data:`EXTERNAL_DATA_BYTES`, where
    tools must read and write its weights as external data."""
    path = Path(path)
    data = external_data_path(path)
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0) > EXTERNAL_DATA_BYTES


def _tensor_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor.ByteSize() for tensor in model.graph.initializer)


def save_onnx(model: onnx.ModelProto, path: Union[str, Path], check: bool = True) -> Path:
    """Write ``model`` to ``path`` (atomically for the graph file) and return ``path``.

    The model must hold its weights in memory (``onnx.load`` does that by default). A stale ``X.onnx.data`` from
    an earlier save is removed first: ONNX appends to an existing data file. ``check`` runs the full ONNX checker
    on the written file (by path, which works past 2 GiB).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = external_data_path(path)
    if data.exists():
        data.unlink()
    tmp = path.with_name(path.name + ".tmp")
    # the weights' digest, which powersam.runtime checks before it runs the graph (a damaged file loads otherwise)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != WEIGHTS_DIGEST_KEY]
    del model.metadata_props[:]
    for key, value in [*kept, (WEIGHTS_DIGEST_KEY, weights_digest(model))]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    if _tensor_bytes(model) > EXTERNAL_DATA_BYTES:
        # the data file name is relative to the graph file's folder: write it under its final name
        onnx.save(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                  size_threshold=1024)
    else:
        onnx.save(model, str(tmp))
    os.replace(tmp, path)
    if data.exists():  # ONNX creates it private (0600); give it the graph file's permissions
        os.chmod(data, path.stat().st_mode & 0o777)
    if check:
        onnx.checker.check_model(str(path), full_check=True)
    return path
