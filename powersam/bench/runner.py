"""Timing harness: pipelines of named stages, run interleaved round-robin, summarised as median and p90.

A :class:`Pipeline` is one model × runtime, as an ordered list of named :class:`Stage` s (``preprocess``,
``encoder``, …). It is timed in one of two ways:

* **by the harness** (hand-written stages that pass a per-frame ``state`` dict along): one frame = every stage once,
  in order; the harness reads the clock at each stage boundary (after calling the pipeline's ``sync``, e.g.
  ``torch.cuda.synchronize``), so a stage's time is the wall time between its two boundaries and the frame time is
  the sum of its stages;
* **by the pipeline itself** (:meth:`Pipeline.reporting`): one ``frame(state)`` call runs the whole frame through
  the library's shared inference pipeline and returns the milliseconds per stage that pipeline measured
  (``Results.speed``, :class:`powersam.inference.timing.StageTimer`); the stages only name the parts. The frame time
  is the wall time of the call, so it also holds the glue between stages (argument checks, building the result);
  a stage a frame did not run (no boxes to decode) counts 0 ms.

The median frame time is *not* the sum of the per-stage medians; both are reported.

Interleaving: warm-up rounds, then ``repeats`` timed rounds; each round runs one frame of every pipeline, starting at
a rotating offset (round r starts at pipeline ``r mod n``). Drift of a noisy machine (other jobs, thermal state)
therefore hits every pipeline alike, which keeps their *ratios* trustworthy even when absolute numbers wander.

Settling: before every frame the harness sleeps ``settle`` seconds, outside the timed region. ONNX Runtime's worker
threads busy-wait after a run (its default "spinning"), so without the pause the frame that follows an ONNX frame
shares the cores with them: measured on 2 threads, a dense matmul right after an ORT run read 101-136 GFLOP/s
against 180 after a 50 ms pause or with spinning off (session 14). The frame after an ONNX one was charged for it.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

DEFAULT_SETTLE_S = 0.05
"""Untimed pause before every frame: longer than ONNX Runtime's spin-wait after a run (see the module doc)."""

Timer = Callable[[], float]
"""Returns seconds from an arbitrary origin (``time.perf_counter`` by default; tests inject a fake clock)."""


@dataclass
class Stage:
    """One timed part of a frame: ``fn(state)`` reads its inputs from ``state`` and stores its outputs there."""

    name: str
    fn: Callable[[dict[str, Any]], None]


FrameFn = Callable[[dict[str, Any]], Mapping[str, float]]
"""Runs one whole frame on its ``state`` and returns milliseconds per stage, as the shared pipeline timed them."""


def _timed_by_frame(state: dict[str, Any]) -> None:
    raise RuntimeError("this stage is timed by its pipeline's frame(), not called on its own")


@dataclass
class Pipeline:
    """One model × runtime as an ordered list of stages.

    Attributes:
        model, runtime: what is being timed (the record's keys).
        stages: run in order for every frame; names must be unique.
        new_state: returns a fresh per-frame state (usually ``{"image": …}``); called outside the timed region.
        sync: called before every clock read (waits for asynchronous devices); ``None`` for synchronous runtimes.
        info: extra fields copied into the record (structure, boxes, notes, …).
        frame: set by :meth:`reporting`: runs the whole frame and reports its own stage timings.
    """

    model: str
    runtime: str
    stages: list[Stage]
    new_state: Callable[[], dict[str, Any]] = dict
    sync: Optional[Callable[[], None]] = None
    info: dict[str, Any] = field(default_factory=dict)
    frame: Optional[FrameFn] = None

    @classmethod
    def reporting(cls, model: str, runtime: str, parts: Sequence[str], frame: FrameFn,
                  new_state: Callable[[], dict[str, Any]] = dict, sync: Optional[Callable[[], None]] = None,
                  info: Optional[dict[str, Any]] = None) -> "Pipeline":
        """A pipeline timed by itself: ``frame(state)`` runs one frame and returns ``{stage: ms}`` for stages among
        ``parts`` (the record's parts, in this order)."""
        return cls(model=model, runtime=runtime, stages=[Stage(name, _timed_by_frame) for name in parts],
                   new_state=new_state, sync=sync, info={} if info is None else info, frame=frame)

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        if not names:
            raise ValueError(f"pipeline {self.model}/{self.runtime} has no stages")
        if len(set(names)) != len(names):
            raise ValueError(f"pipeline {self.model}/{self.runtime}: stage names must be unique, got {names}")

    @property
    def key(self) -> str:
        return f"{self.model}/{self.runtime}"


@dataclass
class FrameTimes:
    """Seconds per timed frame: ``total[i]`` and ``parts[name][i]`` for the i-th timed frame."""

    total: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)
    probe: list[float] = field(default_factory=list)  # the probe's reading right before each timed frame, if any


def run_frame(pipeline: Pipeline, timer: Timer = time.perf_counter) -> tuple[float, dict[str, float]]:
    """Run every stage once → (frame seconds, {stage: seconds}). For harness-timed stages the stage times add up to
    the frame time; a self-timed pipeline (:meth:`Pipeline.reporting`) reports its own (see the module doc)."""
    state = pipeline.new_state()
    sync = pipeline.sync or (lambda: None)
    if pipeline.frame is not None:
        return _run_reporting_frame(pipeline, state, sync, timer)
    sync()
    start = previous = timer()
    parts: dict[str, float] = {}
    for stage in pipeline.stages:
        stage.fn(state)
        sync()
        now = timer()
        parts[stage.name] = now - previous
        previous = now
    return previous - start, parts


def _run_reporting_frame(pipeline: Pipeline, state: dict[str, Any], sync: Callable[[], None],
                         timer: Timer) -> tuple[float, dict[str, float]]:
    names = [stage.name for stage in pipeline.stages]
    sync()
    start = timer()
    reported = pipeline.frame(state)
    sync()
    total = timer() - start
    unknown = sorted(set(reported) - set(names))
    if unknown:
        raise ValueError(f"pipeline {pipeline.key} reported stages {unknown} it does not declare ({names})")
    return total, {name: float(reported.get(name, 0.0)) / 1e3 for name in names}


def round_robin_order(num_pipelines: int, round_index: int) -> list[int]:
    """Pipeline indices of one round: all of them, starting at ``round_index mod n`` (rotating start)."""
    if num_pipelines < 0 or round_index < 0:
        raise ValueError(f"num_pipelines and round_index must be >= 0, got {num_pipelines}, {round_index}")
    if num_pipelines == 0:
        return []
    first = round_index % num_pipelines
    return [(first + i) % num_pipelines for i in range(num_pipelines)]


def interleaved_schedule(num_pipelines: int, warmup: int, repeats: int) -> list[tuple[bool, int]]:
    """The whole run as ``(timed, pipeline index)`` pairs: ``warmup`` untimed rounds, then ``repeats`` timed ones.

    Round numbering continues across warm-up and timed rounds, so the rotation goes on seamlessly."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    schedule = []
    for r in range(warmup + repeats):
        schedule += [(r >= warmup, i) for i in round_robin_order(num_pipelines, r)]
    return schedule


def run_interleaved(
    pipelines: Sequence[Pipeline],
    repeats: int,
    warmup: int = 1,
    timer: Timer = time.perf_counter,
    progress: Optional[Callable[[int, int], None]] = None,
    settle: float = DEFAULT_SETTLE_S,
    sleep: Callable[[float], None] = time.sleep,
    probe: Optional[Callable[[], float]] = None,
) -> list[FrameTimes]:
    """Time every pipeline ``repeats`` times, interleaved (see the module docstring).

    Args:
        pipelines: the model × runtime pipelines, all built beforehand.
        repeats: timed frames per pipeline (≥ 1).
        warmup: untimed frames per pipeline before timing (lazy initialisation, allocator and cache warm-up).
        timer: clock in seconds.
        progress: called as ``progress(done, total)`` after every frame.
        settle: seconds slept before every frame, untimed, so the previous frame's spinning thread pools are asleep
            (module doc); 0 disables it.
        sleep: the pause (tests inject a fake).
        probe: called right before every frame, after the pause and untimed; what it returns for a timed frame
            goes to that frame's ``FrameTimes.probe`` (e.g. :class:`~powersam.bench.roofline.MatmulProbe`).

    Returns:
        One :class:`FrameTimes` per pipeline, in the order given.
    """
    if not settle >= 0:  # also rejects NaN
        raise ValueError(f"settle must be >= 0 seconds, got {settle}")
    schedule = interleaved_schedule(len(pipelines), warmup, repeats)
    results = [FrameTimes(parts={s.name: [] for s in p.stages}) for p in pipelines]
    for done, (timed, index) in enumerate(schedule, start=1):
        if settle:
            sleep(settle)
        reading = probe() if probe is not None else None
        total, parts = run_frame(pipelines[index], timer)
        if timed:
            results[index].total.append(total)
            if reading is not None:
                results[index].probe.append(reading)
            for name, seconds in parts.items():
                results[index].parts[name].append(seconds)
        if progress is not None:
            progress(done, len(schedule))
    return results


def summarize_ms(seconds: Sequence[float]) -> dict[str, float]:
    """``{median, p90, mean, min, max}`` in milliseconds; percentiles interpolate linearly (numpy's default)."""
    if len(seconds) == 0:
        raise ValueError("cannot summarise an empty list of timings")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "median": float(np.median(ms)),
        "p90": float(np.percentile(ms, 90)),
        "mean": float(ms.mean()),
        "min": float(ms.min()),
        "max": float(ms.max()),
    }


def timing_record(pipeline: Pipeline, times: FrameTimes) -> dict[str, Any]:
    """The JSON record of one pipeline: frame latency (median/p90 ms), FPS = 1000 / median, and every part."""
    total = summarize_ms(times.total)
    return {
        "model": pipeline.model,
        "runtime": pipeline.runtime,
        "available": True,
        "latency_ms_median": total["median"],
        "latency_ms_p90": total["p90"],
        "latency_ms_mean": total["mean"],
        "latency_ms_min": total["min"],
        "fps": 1000.0 / total["median"] if total["median"] > 0 else None,
        "parts": {name: {k: v for k, v in summarize_ms(values).items() if k in ("median", "p90")}
                  for name, values in times.parts.items()},
        "num_frames": len(times.total),
        **pipeline.info,
    }


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or broken: the record just says so
        return None


def machine_info(threads: Optional[int], device: str = "cpu") -> dict[str, Any]:
    """Where the numbers were taken: CPU model, cores, threads used, library versions, OS, GPU (for cuda)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "threads": threads,
        "device": device,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "numpy": np.__version__,
    }
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
            info["cuda"] = torch.version.cuda
    return info
