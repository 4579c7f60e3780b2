"""Checks that an exported graph is what was written, before ONNX Runtime runs it.

* :func:`weights_digest`: a SHA-256 over every initializer (name, type, shape, bytes), which the exporter stores in
  the graph's metadata (``powersam.weights_sha256``) and :func:`verify_weights` recomputes at load time. Bytes
  damaged inside a weight tensor do not stop ONNX Runtime from loading a graph; they change its detections
  silently. The check needs the ``onnx`` package; a torch-free edge box without it skips the check (logged).
* :func:`cpu_has_vnni`: whether this x86 CPU has VNNI. Without it ONNX Runtime's uint8×int8 kernels multiply through
  a saturating 16-bit instruction, and a graph quantised with full 8-bit weights loses its accuracy there.

Torch-free.
"""
from __future__ import annotations

import hashlib
import logging
import platform
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger(__name__)

WEIGHTS_DIGEST_KEY = "powersam.weights_sha256"


class GraphIntegrityError(ValueError):
    """An exported graph is unreadable, or its weights are not the ones its exporter recorded."""


def weights_digest(model: Any) -> str:
    """SHA-256 (hex) over an ``onnx.ModelProto``'s initializers in name order, weights loaded in memory."""
    from onnx import numpy_helper

    digest = hashlib.sha256()
    for tensor in sorted(model.graph.initializer, key=lambda t: t.name):
        array = numpy_helper.to_array(tensor)
        digest.update(f"{tensor.name}|{array.dtype}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def verify_weights(path: Path, props: dict[str, str]) -> None:
    """GraphIntegrityError when ``path``'s weights differ from the digest its metadata records."""
    expected = props.get(WEIGHTS_DIGEST_KEY)
    if not expected:
        return  # exported before the digest existed, or by another tool
    try:
        import onnx
    except ImportError:
        logger.info("onnx is not installed: the weights of %s are not verified against their digest", path)
        return
    try:
        model = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - any parse failure of a damaged file
        raise GraphIntegrityError(f"{path}: not a readable ONNX graph ({str(err).splitlines()[0]})") from None
    if weights_digest(model) != expected:
        raise GraphIntegrityError(
            f"{path}: its weights do not match the digest recorded when it was exported ({WEIGHTS_DIGEST_KEY}); the "
            "file is damaged (or was edited): export it again")


def cpu_has_vnni() -> Optional[bool]:
    """True / False on x86 Linux (AVX-512 VNNI or AVX-VNNI in /proc/cpuinfo), None where it cannot tell."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags
