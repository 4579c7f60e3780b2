"""``powersam bench``: latency per frame and per stage of zoo models on several runtimes, with params/GMACs.

Python API: :func:`benchmark` returns the ``bench.json`` payload; :func:`write_bench_outputs` writes ``bench.json``,
``bench.md`` and the figure. :func:`add_bench_arguments` / :func:`run_bench` are the command line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .runner import Timer, machine_info, run_interleaved, timing_record

DEFAULT_MODELS = "powersam_s,powersam_b,powersam_s_decoupled,powersam_b_decoupled"


def _split(text: str) -> list[str]:
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
) -> dict[str, Any]:
    """Build every model × runtime, time them interleaved, and return the ``bench.json`` payload.

    Args:
        models: zoo names and/or group names (``"table1"``, …, see :data:`~powersam.models.zoo.MODEL_GROUPS`),
            or one comma-separated string of them; expanded and validated before anything is built.
        runtimes: ``"torch"``, ``"onnx"``, ``"onnx-int8"``. A runtime that cannot run here gets a record with
            ``"available": false`` and the reason in ``"error"``.
        settings: a :class:`~powersam.bench.pipelines.BenchSettings`.
        repeats, warmup: timed and untimed frames per pipeline.
        complexity: add params/GMACs from :func:`powersam.utils.model_info.model_info` (paper and full conventions).
        timer: clock override (tests).
        progress: ``progress(done, total)`` after each frame.

    Returns:
        ``{"machine": {...}, "settings": {...}, "records": [one per model × runtime, model-major]}``.
    """
    from ..models.zoo import expand_model_names
    from .pipelines import RUNTIMES, RuntimeUnavailable, build_bench_model, build_pipeline, pinned_threads

    if not models or not runtimes:
        raise ValueError("give at least one model and one runtime")
    models = expand_model_names(models)  # raises ValueError naming the unknown entries, the groups and models
    for runtime in runtimes:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; known runtimes: {', '.join(RUNTIMES)}")

    slots: list[Any] = []  # a Pipeline, or the record of an unavailable runtime
    with pinned_threads(settings.threads):
        for name in models:
            model = build_bench_model(name, settings)  # shared by this model's runtimes (exports start from it)
            for runtime in runtimes:
                try:
                    slots.append(build_pipeline(name, runtime, settings, model=model))
                except RuntimeUnavailable as err:
                    slots.append({"model": name, "runtime": runtime, "available": False, "error": str(err)})
        pipelines = [s for s in slots if not isinstance(s, dict)]
        times = run_interleaved(pipelines, repeats=repeats, warmup=warmup, progress=progress,
                                **({"timer": timer} if timer is not None else {}))
    measured = {id(p): timing_record(p, t) for p, t in zip(pipelines, times)}
    info = {name: _complexity(name, settings.img_size, settings.det_size) for name in models} if complexity else {}
    records = []
    for slot in slots:
        record = slot if isinstance(slot, dict) else measured[id(slot)]
        records.append({**record, **info.get(record["model"], {})})
    return {
        "machine": machine_info(settings.threads, settings.device),
        "settings": {
            "img_size": settings.img_size, "frame": list(settings.frame), "boxes": settings.boxes,
            "device": settings.device, "threads": settings.threads, "det_size": settings.det_size,
            "repeats": repeats, "warmup": warmup, "seed": settings.seed,
            "order": "round-robin over all model × runtime pipelines, rotating start; warm-up rounds first",
            "complexity": "params/GMACs: paper (thop) convention; *_full: every parameter and matmul",
        },
        "records": records,
    }


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


def _frame(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 1080x1920, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"frame sides must be positive, got {text!r}")
    return h, w


def _boxes(text: str) -> int | str:
    if text == "detected":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of boxes or 'detected', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"the number of boxes must be >= 0, got {value}")
    return value


def add_bench_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``powersam bench``."""
    parser.description = (
        "Time whole frames (preprocess, encoder + box-prompt generator or separate detector, decoder for K boxes, "
        "mask upsampling) and each stage, for every model x runtime, interleaved round-robin in one process. "
        "All selected models stay built at once (interleaving needs them): SAM ViT-H at 1024 alone takes ~2.5 GB.")
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help="comma-separated zoo names and/or group names (table1: the paper's Table 1 models, "
                             f"table2: integrated vs decoupled; see 'powersam models'; default {DEFAULT_MODELS})")
    parser.add_argument("--runtime", default="torch",
                        help="comma-separated: torch, onnx, onnx-int8 (default torch); a runtime that cannot run "
                             "here is recorded as 'not available' with the reason")
    parser.add_argument("--size", type=int, default=1024, help="network input size S (default 1024)")
    parser.add_argument("--frame", type=_frame, default=(1080, 1920), metavar="HxW",
                        help="size of the synthetic original image; masks are upsampled to it (default 1080x1920)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch / ONNX Runtime intra-op threads (default 1: stable numbers on shared machines)")
    parser.add_argument("--boxes", type=_boxes, default=5, metavar="K|detected",
                        help="boxes decoded per frame: K fixed synthetic boxes (default 5; random weights detect "
                             "nothing) or 'detected' (the detector's boxes; needs trained weights)")
    parser.add_argument("--repeats", type=int, default=20, help="timed frames per pipeline (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames per pipeline first (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--det-size", type=int, default=640, help="decoupled models' detector input (default 640)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="weights for a model (repeatable); others get random weights")
    parser.add_argument("--miou-json", nargs="+", default=[], metavar="[NAME=]FILE",
                        help="'powersam eval miou' results to put next to the latencies: its --json file (one "
                             "model, or several: all are taken) or the per-model files of its --out DIR")
    parser.add_argument("--out", type=Path, default=Path("bench"),
                        help="output folder for bench.json, bench.md and the figure; ONNX runtimes export their "
                             "graphs to OUT/graphs (default ./bench)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write bench.json here")
    parser.add_argument("--no-complexity", action="store_true", help="skip the params/GMACs count")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic image (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _settings(args: argparse.Namespace) -> Any:
    from .pipelines import BenchSettings

    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"need --repeats >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available to this torch build")
    elif args.device != "cpu":
        raise ValueError(f"--device must be cpu or cuda[:N], got {args.device!r}")
    checkpoints = {}
    for item in args.checkpoint:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--checkpoint expects NAME=PATH, got {item!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--checkpoint {name}: {path} does not exist")
        checkpoints[name] = Path(path)
    return BenchSettings(img_size=args.size, frame=args.frame, boxes=args.boxes, device=args.device,
                         threads=args.threads, det_size=args.det_size, checkpoints=checkpoints,
                         work_dir=args.out / "graphs", seed=args.seed)


def run_bench(args: argparse.Namespace) -> int:
    """``powersam bench``: exit 0 after writing the outputs, 1 with a one-line message on a reported failure."""
    try:
        settings = _settings(args)
        miou = load_miou_results(args.miou_json)
        bar = None
        if not args.no_progress:
            from tqdm.auto import tqdm

            bar = tqdm(desc="bench", unit="frame", leave=False)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(1)

        bench = benchmark(_split(args.models), _split(args.runtime), settings, repeats=args.repeats,
                          warmup=args.warmup, complexity=not args.no_complexity,
                          progress=progress if bar is not None else None)
        if bar is not None:
            bar.close()
        written = write_bench_outputs(bench, args.out, miou or None)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(written["json"].read_text(encoding="utf-8"), encoding="utf-8")
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for r in bench["records"]:
        if r.get("available", True):
            print(f"{r['model']:24s} {r['runtime']:10s} median {r['latency_ms_median']:9.2f} ms  "
                  f"p90 {r['latency_ms_p90']:9.2f} ms  {r['fps']:7.2f} FPS")
        else:
            print(f"{r['model']:24s} {r['runtime']:10s} {r['error']}")
    print(f"wrote {', '.join(str(p) for p in written.values())}")
    return 0
