"""The torch device a model runs on, checked before anything is moved there."""
from __future__ import annotations

from typing import Any, Optional


def torch_device(device: Optional[str] = None) -> Any:
    """``device`` as a ``torch.device`` (default: cuda when available, else cpu), or ValueError explaining why it
    cannot be used here (instead of torch's "AssertionError: Torch not compiled with CUDA enabled")."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1): {err}") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only PyTorch build" if torch.version.cuda is None else "no visible CUDA GPU"
            raise ValueError(f"device {device!r} requested, but this machine has {build} (torch {torch.__version__});"
                             " use --device cpu")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested, but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif chosen.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"device {device!r} is not supported here; use cpu or cuda")
    return chosen
