"""ONNX Runtime sessions for exported PowerSAM graphs: execution providers and metadata.

Torch-free: this module and everything it imports use only NumPy, ONNX Runtime, Pillow/OpenCV. The models built on
sessions import this module, never the reverse (:func:`powersam.runtime.load` lives in :mod:`.loader`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .integrity import GraphIntegrityError, cpu_has_vnni, verify_weights
from .metadata import GraphMetadata

logger = logging.getLogger(__name__)

__all__ = ["GraphSession", "SPINNING_KEYS", "check_spinning", "device_provider", "resolve_providers"]

PathLike = Union[str, Path]
ProviderSpec = Union[str, tuple[str, dict[str, Any]]]

# Short names users may give for the common execution providers.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "directml": "DmlExecutionProvider",
}
_INSTALL_HINTS = {
    "CUDAExecutionProvider": "install onnxruntime-gpu (instead of onnxruntime) with a matching CUDA/cuDNN",
    "TensorrtExecutionProvider": "install onnxruntime-gpu built with TensorRT and the TensorRT libraries",
    "OpenVINOExecutionProvider": "install onnxruntime-openvino",
    "DmlExecutionProvider": "install onnxruntime-directml (Windows)",
}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("powersam.runtime needs onnxruntime (pip install onnxruntime)") from None
    return onnxruntime


def device_provider(device: str) -> ProviderSpec:
    """A torch-style device string as a provider request: ``"cpu"`` → ``"cpu"``, ``"cuda"`` → ``"cuda"``,
    ``"cuda:3"`` → ``("cuda", {"device_id": 3})`` (the index goes to the provider instead of being dropped, which
    would silently run on GPU 0). ValueError for an index that is not a non-negative integer."""
    name, _, index = str(device).partition(":")
    if not index:
        return name
    if not index.isdigit():
        raise ValueError(f"device {device!r}: the part after ':' must be a GPU index (e.g. cuda:0)")
    if name.lower() == "cpu":
        raise ValueError(f"device {device!r}: the CPU has no index; use 'cpu'")
    return (name, {"device_id": int(index)})


def resolve_providers(providers: Optional[Sequence[ProviderSpec] | ProviderSpec] = None) -> list[ProviderSpec]:
    """Turn a provider request into ONNX Runtime's list, CPU last as the fallback for unsupported nodes (and CUDA
    after TensorRT when available).

    ``providers``: None (CPU), a name or alias (``"cuda"``, ``"tensorrt"``, ``"CUDAExecutionProvider"``) or a list
    of them, each optionally ``(name, options)``. Raises ValueError naming what is missing and how to get it when
    a requested provider is not available in this ONNX Runtime build, rather than silently running on the CPU.
    """
    if providers is None:
        providers = ["cpu"]
    elif isinstance(providers, (str, tuple)):
        providers = [providers]
    available = _ort().get_available_providers()
    resolved: list[ProviderSpec] = []
    for spec in providers:
        name, options = (spec if isinstance(spec, tuple) else (spec, None))
        if not isinstance(name, str):
            raise TypeError(f"a provider must be a name or (name, options), got {spec!r}")
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            hint = _INSTALL_HINTS.get(full, "use a build of onnxruntime that includes it")
            raise ValueError(
                f"execution provider {name!r} ({full}) is not available in this onnxruntime build "
                f"(available: {', '.join(available)}); {hint}"
            )
        resolved.append((full, options) if options else full)
    names = [p[0] if isinstance(p, tuple) else p for p in resolved]
    # TensorRT hands the nodes it cannot build to the next provider; CUDA keeps those on the GPU.
    cuda = "CUDAExecutionProvider"
    if "TensorrtExecutionProvider" in names and cuda not in names and cuda in available:
        resolved.append(cuda)
    if "CPUExecutionProvider" not in names:
        resolved.append("CPUExecutionProvider")
    return resolved


# The session config entries ``spinning`` sets. Intra-op: the pool that runs one operator on several threads (the
# one that matters; PowerSAM runs graphs sequentially). Inter-op: the pool of the parallel execution mode, set too so
# that ``spinning=False`` means no ORT worker of this session spins, whatever mode a later change picks.
SPINNING_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def check_spinning(spinning: Any, option: str = "spinning") -> Optional[bool]:
    """``spinning`` if it is True, False or None, else ValueError naming ``option`` (the caller's name for it)."""
    if spinning is None or isinstance(spinning, bool):
        return spinning
    raise ValueError(f"{option} must be True (spin), False (sleep) or None (ONNX Runtime's default), "
                     f"got {spinning!r}")


def _warn_if_saturating(path: Path, props: dict[str, str]) -> None:
    """Warn when a uint8-activation INT8 graph with full 8-bit weights runs on an x86 CPU without VNNI (its
    products saturate in 16 bits there; measured: embedding cosine 0.75 against FP32 on an AVX2 EPYC)."""
    record = props.get("powersam.quantization", "")
    if "activations uint8" in record and "7-bit" not in record and cpu_has_vnni() is False:
        logger.warning("%s was quantised with 8-bit weights and uint8 activations, which saturate on this CPU "
                       "(no VNNI): expect degraded outputs; quantise again on this machine (7-bit weights are then "
                       "chosen) or pass reduce_range=True", path)


class GraphSession:
    """One ONNX Runtime session and the PowerSAM metadata of its graph.

    Args:
        path: the exported ``.onnx`` file.
        providers: execution providers (default CPU); see :func:`resolve_providers`.
        threads: intra-op threads (default: ONNX Runtime's choice, all cores).
        spinning: whether ORT's worker threads busy-wait for work after a run (``True``) or sleep (``False``);
            ``None`` leaves ONNX Runtime's default (spinning on). Spinning saves the wake-up latency between
            operators, but the spinning threads keep their cores busy after ``run`` returns, which can slow the
            NumPy/OpenCV work that follows (mask post-processing) or other processes on a shared machine
            (docs/speed_profile.md, rounds two and four). No effect with one thread (no pool to spin).
    """

    def __init__(
        self,
        path: PathLike,
        providers: Optional[Sequence[ProviderSpec] | ProviderSpec] = None,
        threads: Optional[int] = None,
        spinning: Optional[bool] = None,
    ) -> None:
        ort = _ort()
        self.path = Path(path)
        self.spinning = check_spinning(spinning)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX file at {self.path}")
        options = ort.SessionOptions()
        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"threads must be a positive integer, got {threads}")
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        if spinning is not None:  # None: no entry at all, so ORT's own default (and any future change of it) holds
            for key in SPINNING_KEYS:
                options.add_session_config_entry(key, "1" if spinning else "0")
        resolved = resolve_providers(providers)  # a missing provider is not a damaged file: its own error
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=resolved)
        except Exception as err:  # noqa: BLE001 - ORT raises its own types for truncated / corrupt protobufs
            if self.path.stat().st_size == 0:
                raise GraphIntegrityError(f"{self.path}: the file is empty (0 bytes)") from None
            raise GraphIntegrityError(f"{self.path}: ONNX Runtime cannot load it ({str(err).splitlines()[0][:300]}); "
                                      "the file is truncated, damaged or not an ONNX graph") from None
        props = self.session.get_modelmeta().custom_metadata_map
        verify_weights(self.path, props)
        _warn_if_saturating(self.path, props)
        self.metadata = GraphMetadata.from_props(props, source=str(self.path))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses, in priority order."""
        return self.session.get_providers()

    def run(self, feeds: dict[str, Any], outputs: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """Run the graph → ``{output name: array}`` (NumPy scalars in ``feeds`` are accepted as 0-d arrays)."""
        names = list(outputs) if outputs is not None else self.output_names
        arrays = {name: np.asarray(value) for name, value in feeds.items()}
        return dict(zip(names, self.session.run(names, arrays)))
