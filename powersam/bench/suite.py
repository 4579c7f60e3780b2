"""A bench run: latency per frame and per stage of zoo models on several runtimes, with params/GMACs.

:func:`benchmark` returns the ``bench.json`` payload; :func:`write_bench_outputs` writes ``bench.json``,
``bench.md`` and the figure; :func:`load_miou_results` reads ``powersam eval miou`` results to put beside the
latencies. The command line around them is :mod:`powersam.cli.bench`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .roofline import MatmulProbe, frame_gmacs, paired_multiple, probe_summary, roofline_ms
from .runner import DEFAULT_SETTLE_S, FrameTimes, Timer, machine_info, run_interleaved, timing_record

DEFAULT_MODELS = "powersam_s,powersam_b,powersam_s_decoupled,powersam_b_decoupled"


def split_names(text: str) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]`` (the comma lists of ``--models`` / ``--runtime``)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _complexity(name: str, img_size: int, det_size: int) -> dict[str, Any]:
    from ..utils.model_info import model_info

    try:
        info = model_info(name, img_size=img_size, det_size=det_size)
    except Exception as err:  # a counting problem must not cost the timings
        return {"params_total": None, "gmacs_total": None, "complexity_error": f"{type(err).__name__}: {err}"}
    keys = ("params_total", "gmacs_total", "params_total_full", "gmacs_total_full", "components")
    return {k: info[k] for k in keys}


def benchmark(
    models: Sequence[str],
    runtimes: Sequence[str],
    settings: Any,
    repeats: int = 20,
    warmup: int = 3,
    complexity: bool = True,
    timer: Optional[Timer] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    probe_size: Optional[int] = 1024,
    settle: float = DEFAULT_SETTLE_S,
) -> dict[str, Any]:
    """Build every model × runtime, time them interleaved, and return the ``bench.json`` payload.

    Args:
        models: zoo names and/or group names (``"table1"``, …, see :data:`~powersam.models.zoo.MODEL_GROUPS`),
            or one comma-separated string of them; expanded and validated before anything is built.
        runtimes: ``"torch"``, ``"onnx"``, ``"onnx-int8"``. A runtime that cannot run here gets a record with
            ``"available": false`` and the reason in ``"error"``. ONNX runtimes get one record per setting of
            ``settings.ort_spinning`` (labelled by :func:`~powersam.bench.pipelines.ort_label`).
        settings: a :class:`~powersam.bench.pipelines.BenchSettings`.
        repeats, warmup: timed and untimed frames per pipeline.
        complexity: add params/GMACs from :func:`powersam.utils.model_info.model_info` (paper and full conventions).
        timer: clock override (tests).
        settle: untimed seconds slept before every frame (:func:`~powersam.bench.runner.run_interleaved`).
        progress: ``progress(done, total)`` after each frame.
        probe_size: on the CPU, time a dense ``probe_size``² matmul right before every frame and give every record
            its ``roofline_ms`` / ``vs_roofline`` / ``vs_roofline_best`` (:mod:`powersam.bench.roofline`; needs
            ``complexity`` and a fixed number of boxes); None skips it.

    Returns:
        ``{"machine": {...}, "settings": {...}, "records": [one per model × runtime, model-major]}``, plus
        ``"roofline"`` (the probe's GFLOP/s) when the probe ran.
    """
    from ..models.zoo import expand_model_names
    from .pipelines import (RUNTIMES, SPIN_NAMES, RuntimeUnavailable, build_bench_model, build_pipeline,
                            ort_label, pinned_threads)

    if not models or not runtimes:
        raise ValueError("give at least one model and one runtime")
    models = expand_model_names(models)  # raises ValueError naming the unknown entries, the groups and models
    for runtime in runtimes:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; known runtimes: {', '.join(RUNTIMES)}")
    spin_settings = tuple(settings.ort_spinning)
    if spin_settings != (None,) and all(r == "torch" for r in runtimes):
        raise ValueError("ort_spinning (--ort-spinning) applies to the ONNX runtimes (onnx, onnx-int8); none was "
                         "selected")

    slots: list[Any] = []  # a Pipeline, or the record of an unavailable runtime
    with pinned_threads(settings.threads):
        for name in models:
            model = build_bench_model(name, settings)  # shared by this model's runtimes (exports start from it)
            for runtime in runtimes:
                # One row per spinning setting of an ONNX runtime (torch has no ORT pool): interleaved in the same
                # rounds, so machine drift hits spinning on and off alike.
                for spinning in (None,) if runtime == "torch" else spin_settings:
                    try:
                        slots.append(build_pipeline(name, runtime, settings, model=model, spinning=spinning))
                    except RuntimeUnavailable as err:
                        slots.append({"model": name, "runtime": ort_label(runtime, spinning), "available": False,
                                      "error": str(err)})
        pipelines = [s for s in slots if not isinstance(s, dict)]
        probe = MatmulProbe(probe_size) if probe_size is not None and settings.device == "cpu" and pipelines else None
        times = run_interleaved(pipelines, repeats=repeats, warmup=warmup, progress=progress, settle=settle,
                                probe=probe, **({"timer": timer} if timer is not None else {}))
    measured = {id(p): (timing_record(p, t), t) for p, t in zip(pipelines, times)}
    info = {name: _complexity(name, settings.img_size, settings.det_size) for name in models} if complexity else {}
    readings = [g for t in times for g in t.probe]
    roofline = probe_summary(readings, probe_size) if readings else None
    records = []
    for slot in slots:
        record, frames = (slot, None) if isinstance(slot, dict) else measured[id(slot)]
        record = {**record, **info.get(record["model"], {})}
        if roofline is not None and frames is not None:
            record.update(_against_roofline(record, frames, settings.boxes, roofline["probe_gflops_roofline"]))
        records.append(record)
    extra = {"roofline": roofline} if roofline is not None else {}
    return {
        "machine": machine_info(settings.threads, settings.device),
        "settings": {
            "img_size": settings.img_size, "frame": list(settings.frame), "boxes": settings.boxes,
            "device": settings.device, "threads": settings.threads, "det_size": settings.det_size,
            "repeats": repeats, "warmup": warmup, "seed": settings.seed, "settle_ms": settle * 1e3,
            "ort_spinning": [SPIN_NAMES[v] for v in spin_settings],
            "order": "round-robin over all model × runtime pipelines, rotating start; warm-up rounds first",
            "complexity": "params/GMACs: paper (thop) convention; *_full: every parameter and matmul",
        },
        "records": records,
        **extra,
    }


def _against_roofline(record: dict[str, Any], frames: FrameTimes, boxes: Any, best_gflops: float) -> dict[str, Any]:
    """One timed record against the hardware limit (:mod:`powersam.bench.roofline`): ``frame_gmacs_full``,
    ``roofline_ms`` at the run's best probe reading, ``vs_roofline_best`` (median frame / that), ``vs_roofline``
    (median of each frame against the probe reading just before it). None where the work is not countable."""
    components = record.get("components")
    gmacs = frame_gmacs(components, boxes) if components and isinstance(boxes, int) else None
    if gmacs is None:
        return {"frame_gmacs_full": None, "roofline_ms": None, "vs_roofline": None, "vs_roofline_best": None}
    limit = roofline_ms(gmacs, best_gflops)
    return {"frame_gmacs_full": gmacs, "roofline_ms": limit,
            "vs_roofline": paired_multiple(frames.total, frames.probe, gmacs),
            "vs_roofline_best": record["latency_ms_median"] / limit}


def write_bench_outputs(bench: dict[str, Any], out_dir: str | Path,
                        miou: Optional[dict[str, dict]] = None) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.md`` and ``latency_vs_miou.png`` (with mIoU) or ``latency.png`` (without)."""
    from ..eval.report import bench_markdown
    from .plot import plot_latency_bars, plot_latency_vs_miou

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**bench, "miou": miou} if miou else bench
    written = {"json": out_dir / "bench.json", "md": out_dir / "bench.md"}
    written["json"].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    figure = None
    try:
        if miou:
            figure = plot_latency_vs_miou(bench["records"], miou, out_dir / "latency_vs_miou.png")
        if figure is None:
            figure = plot_latency_bars(bench["records"], out_dir / "latency.png")
    except RuntimeError as err:  # matplotlib missing: the tables are still written
        print(f"warning: {err}", file=sys.stderr)
    markdown = "# PowerSAM benchmark\n\n" + bench_markdown(bench, miou)
    if figure is not None:
        written["figure"] = figure
        markdown += f"\n![{figure.stem}]({figure.name})\n"
    written["md"].write_text(markdown, encoding="utf-8")
    return written


def load_miou_results(items: Sequence[str]) -> dict[str, dict]:
    """``FILE`` (model name read from the JSON's ``"model"``) or ``NAME=FILE`` → {model: eval miou result}.

    A several-model ``powersam eval miou --json`` file (``{"models": {name: result}}``) gives all its models, or
    with ``NAME=FILE`` only that one."""
    results: dict[str, dict] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = "", item
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if isinstance(data, dict) and isinstance(data.get("models"), dict) and "miou" not in data:
            combined = {k: v for k, v in data["models"].items() if isinstance(v, dict) and isinstance(v.get("miou"), dict)}
            if name and name not in combined:
                raise ValueError(f"{path} has no result for {name!r}; it has: {', '.join(combined) or 'none'}")
            if not combined:
                raise ValueError(f"{path} holds no model's 'powersam eval miou' result")
            results.update({name: combined[name]} if name else combined)
            continue
        if not isinstance(data, dict) or not isinstance(data.get("miou"), dict):
            raise ValueError(f"{path} is not a 'powersam eval miou --json' result (no 'miou' object)")
        name = name or data.get("model")
        if not name:
            raise ValueError(f"{path} does not name its model; pass it as NAME={path}")
        results[name] = data
    return results
