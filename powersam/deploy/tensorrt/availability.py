"""Is TensorRT usable here: the package, the CUDA runtime bindings, a CUDA device, a new enough version."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

__all__ = ["ENGINE_SUFFIX", "MIN_TENSORRT_MAJOR", "TensorRTUnavailable", "engine_metadata_path", "require_tensorrt"]

ENGINE_SUFFIX = ".engine"
# Strongly typed networks, 64-bit shape tensors and data-dependent TopK: the integrated graph needs all three.
MIN_TENSORRT_MAJOR = 10


class TensorRTUnavailable(RuntimeError):
    """TensorRT, its CUDA bindings or a CUDA device is missing (the CLI reports it and exits 1)."""


def require_tensorrt():
    """Import TensorRT and the CUDA runtime bindings and check for a CUDA device; return ``(tensorrt, cudart)``.

    Raises TensorRTUnavailable with what is missing and how to get it.
    """
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable(
            "TensorRT is not installed (pip install tensorrt on a machine with an NVIDIA GPU); "
            "the ONNX export (--format onnx) and ONNX Runtime work without it"
        ) from None
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is too old: PowerSAM engines need TensorRT "
                                  f">= {MIN_TENSORRT_MAJOR} (strongly typed networks); pip install -U tensorrt")
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise TensorRTUnavailable("TensorRT needs the CUDA runtime bindings: pip install cuda-python") from None
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        raise TensorRTUnavailable(f"no CUDA device: TensorRT needs an NVIDIA GPU with a working driver ({err})")
    return trt, cudart


def check_cuda(cudart, result: Any) -> Any:
    """Unpack a cuda-python call's ``(error, *values)`` tuple, raising on an error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else values


def engine_metadata_path(engine_path: Union[str, Path]) -> Path:
    """The JSON sidecar of an engine: ``X.engine`` → ``X.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")
