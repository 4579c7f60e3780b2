"""The hardware limit next to every timing: a dense-matmul probe run in the same rounds, and the work of a frame.

A frame's roofline is ``2 × MACs / probe FLOP/s``: the time it would take if every multiply-add ran at the best rate
this machine reaches on a large dense ``torch.mm`` during the run (timed in the same round-robin as the pipelines, so
the machine's drift hits both alike; :func:`probe_summary` says why the best frame and not the median). MACs are the
true ones (``*_full`` of :func:`powersam.utils.model_info.model_info`: every matmul, attention included): the image
encoder, the box-prompt generator or separate detector, and ``boxes`` × (prompt encoder + mask decoder for one box). A multiple near 1 means the code leaves little on the
table on this CPU; what is left above that is memory traffic, small kernels and Python.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

PER_BOX = ("prompt_encoder", "mask_decoder")  # components run once per decoded box; the rest once per frame


def matmul_probe(size: int, outputs: dict[str, Any]) -> Callable[[dict], dict]:
    """A frame of three float32 ``size``×``size`` matmuls; appends its GFLOP/s to ``outputs["gflops"]``."""
    import torch  # here, not at the top: the CLI imports this package before it decides to run anything

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)

    def frame(_state: dict) -> dict:
        torch.mm(a, b, out=out)  # untimed: after a pipeline's frame the operands are out of cache, threads asleep
        start = time.perf_counter()
        for _ in range(3):
            torch.mm(a, b, out=out)
        seconds = time.perf_counter() - start
        outputs.setdefault("gflops", []).append(3 * 2 * size**3 / seconds / 1e9)
        return {"matmul": seconds * 1e3}

    return frame


def probe_summary(gflops: Sequence[float], repeats: int, size: int) -> dict[str, float]:
    """Median / min / max GFLOP/s of the last ``repeats`` (timed) probe frames, and the rate a roofline uses.

    The roofline uses the **best** frame (``probe_gflops_roofline`` = max): on a shared VM the probe swings by 2×
    within a run (65–157 GFLOP/s measured), and the slow frames are the machine being busy, not its limit. With the
    median a frame could be "faster than the hardware" (multiples below 1, as in runs before session 13).
    """
    timed = np.asarray(list(gflops)[-repeats:], dtype=np.float64)
    if timed.size == 0:
        raise ValueError("the matmul probe has no timed frame")
    return {"probe_size": size, "probe_gflops_median": float(np.median(timed)),
            "probe_gflops_min": float(timed.min()), "probe_gflops_max": float(timed.max()),
            "probe_gflops_roofline": float(timed.max())}


def frame_gmacs(components: dict[str, dict[str, float]], boxes: int) -> Optional[float]:
    """True GMACs of one frame decoding ``boxes`` boxes, from ``model_info(...)["components"]`` (None if uncounted)."""
    total = 0.0
    for name, counts in components.items():
        gmacs = counts.get("gmacs_full")
        if gmacs is None:
            return None
        total += gmacs * (boxes if name in PER_BOX else 1)
    return total


def roofline_ms(gmacs: float, gflops: float) -> float:
    """Milliseconds ``gmacs`` multiply-adds take at ``gflops`` (2 FLOPs per MAC)."""
    return 2e3 * gmacs / gflops
