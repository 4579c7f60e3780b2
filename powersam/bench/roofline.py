"""The hardware limit next to every timing: a dense-matmul probe timed before every frame, and the work of a frame.

A frame's roofline is ``2 × MACs / probe FLOP/s``: the time it would take if every multiply-add ran at the rate this
machine reaches on a large dense ``torch.mm``. The probe runs right before every timed frame, so two figures come
out of one run: ``vs_roofline``, the median over frames of each frame against the probe reading taken just before
it (this VM's speed drifts 2× within minutes, and a pair a fraction of a second apart sees the same machine), and
``vs_roofline_best``, the median frame against the run's best probe reading (the stricter bound). MACs are the
true ones (``*_full`` of :func:`powersam.utils.model_info.model_info`: every matmul, attention included): the image
encoder, the box-prompt generator or separate detector, and ``boxes`` × (prompt encoder + mask decoder for one
box). A multiple near 1 means the code leaves little on the table on this CPU; what is left above that is memory
traffic, small kernels and Python.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np

PER_BOX = ("prompt_encoder", "mask_decoder")  # components run once per decoded box; the rest once per frame


class MatmulProbe:
    """A dense float32 ``size``×``size`` matmul; calling it returns this moment's GFLOP/s (three timed products).

    The harness calls it right before every frame (:func:`~powersam.bench.runner.run_interleaved`), so each frame
    has a probe reading taken under the same machine conditions, a fraction of a second apart.
    """

    def __init__(self, size: int) -> None:
        import torch  # here, not at the top: the CLI imports this package before it decides to run anything

        if size < 16:
            raise ValueError(f"the probe's matmul side must be >= 16, got {size}")
        generator = torch.Generator().manual_seed(0)
        self.size = size
        self._mm = torch.mm
        self._a = torch.randn(size, size, generator=generator)
        self._b = torch.randn(size, size, generator=generator)
        self._out = torch.empty(size, size)

    def __call__(self) -> float:
        self._mm(self._a, self._b, out=self._out)  # untimed: after a frame the operands are out of cache
        start = time.perf_counter()
        for _ in range(3):
            self._mm(self._a, self._b, out=self._out)
        return 3 * 2 * self.size**3 / (time.perf_counter() - start) / 1e9


def probe_summary(gflops: Sequence[float], size: int) -> dict[str, float]:
    """Median / min / max GFLOP/s of the timed probe readings, and the rate the whole-run roofline uses (the best).

    On a shared VM the probe swings by 2× within minutes (65-185 GFLOP/s measured); the best reading is the
    machine's limit in that run, so a frame is never "faster than the hardware" against it. The per-frame pairing
    (:func:`paired_multiple`) is the fairer figure when the machine drifts during the run.
    """
    timed = np.asarray(list(gflops), dtype=np.float64)
    if timed.size == 0:
        raise ValueError("the matmul probe has no timed reading")
    return {"probe_size": size, "probe_gflops_median": float(np.median(timed)),
            "probe_gflops_min": float(timed.min()), "probe_gflops_max": float(timed.max()),
            "probe_gflops_roofline": float(timed.max())}


def paired_multiple(frame_seconds: Sequence[float], probe_gflops: Sequence[float], gmacs: float) -> float:
    """Median over frames of (frame time / the roofline at the probe reading taken just before that frame)."""
    seconds = np.asarray(list(frame_seconds), dtype=np.float64)
    gflops = np.asarray(list(probe_gflops), dtype=np.float64)
    if seconds.size == 0 or seconds.shape != gflops.shape:
        raise ValueError(f"need one probe reading per timed frame, got {gflops.size} for {seconds.size} frames")
    return float(np.median(seconds * 1e3 / (2e3 * gmacs / gflops)))


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
