"""``powersam bench``: options → :func:`powersam.bench.benchmark` and its outputs (``bench.json``, ``bench.md``,
the figure). Torch loads only when the command runs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..bench.suite import DEFAULT_MODELS
from .options import ort_spinning_list


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
    parser.add_argument("--ort-spinning", type=ort_spinning_list, default=(None,), metavar="on,off,default",
                        help="ONNX runtimes: time each listed ONNX Runtime spinning setting as its own row, "
                             "interleaved (on: worker threads busy-wait after a run, off: they sleep); rows "
                             "'onnx[spin=on]', 'onnx[spin=off]', plain 'onnx' for 'default'. Matters with "
                             "--threads > 1 (default: ORT's default only); also with --compare-reference")
    parser.add_argument("--boxes", type=_boxes, default=5, metavar="K|detected",
                        help="boxes decoded per frame: K fixed synthetic boxes (default 5; random weights detect "
                             "nothing) or 'detected' (the detector's boxes; needs trained weights)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed frames per pipeline (default 20; --compare-reference: 7, --quick: 2)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed frames per pipeline first (default 3; --compare-reference: 2, --quick: 1)")
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
    parser.add_argument("--no-complexity", action="store_true", help="skip the params/GMACs count (and the roofline)")
    parser.add_argument("--no-probe", action="store_true",
                        help="CPU: skip the dense-matmul probe timed in the same rounds (each frame's multiple of "
                             "its roofline)")
    parser.add_argument("--probe-size", type=int, default=1024,
                        help="n of the n x n matmul probe (default 1024; also with --compare-reference)")
    parser.add_argument("--settle-ms", type=float, default=50.0,
                        help="untimed pause before every frame, so the previous frame's ONNX Runtime threads have "
                             "stopped spinning (default 50; 0: none, frames after an ONNX frame then pay for its "
                             "spinning threads)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic image (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    compare = parser.add_argument_group(
        "segmentation paths vs the reference flow (--compare-reference)",
        "PowerSAM-S with K box prompts on one image, masks at full resolution: SAM's predictor flow in eager PyTorch "
        "(re-stated from the paper, official RepViT), powersam.SamPredictor, the ONNX Runtime pair FP32 and INT8, "
        "and a dense-matmul roofline, round-robin in one process; writes OUT/reference.json and OUT/reference.md "
        "(--models, --runtime, --checkpoint and --miou-json do not apply)")
    compare.add_argument("--compare-reference", action="store_true", help="run this comparison instead")
    compare.add_argument("--quick", action="store_true",
                         help="few repeats and calibration scenes (a check that it runs; under 2 min on 2 cores)")
    compare.add_argument("--image", type=Path, default=None,
                         help="a photo, resized to --frame (default: the synthetic image)")
    compare.add_argument("--num-calib", type=int, default=None,
                         help="synthetic calibration scenes of the INT8 encoder (default 8; --quick: 2)")
    return parser


def _defaults(args: argparse.Namespace) -> None:
    """Fill the run-length options left unset: plain bench, comparison, or its quick form."""
    quick = args.compare_reference and args.quick
    if args.repeats is None:
        args.repeats = 2 if quick else 7 if args.compare_reference else 20
    if args.warmup is None:
        args.warmup = 1 if quick else 2 if args.compare_reference else 3
    if args.num_calib is None:
        args.num_calib = 2 if quick else 8


def _settings(args: argparse.Namespace) -> Any:
    from ..bench.pipelines import BenchSettings

    if args.probe_size < 16:
        raise ValueError(f"--probe-size must be >= 16, got {args.probe_size}")
    if not args.settle_ms >= 0:
        raise ValueError(f"--settle-ms must be >= 0, got {args.settle_ms}")
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
                         work_dir=args.out / "graphs", seed=args.seed, ort_spinning=args.ort_spinning)


def run_compare(args: argparse.Namespace) -> int:
    """``powersam bench --compare-reference``: OUT/reference.json and OUT/reference.md (see powersam.bench.compare)."""
    import json
    import shlex

    from ..bench.compare import CompareSettings, compare_markdown, compare_reference

    if args.device != "cpu":
        print("error: --compare-reference runs on the CPU only", file=sys.stderr)
        return 1
    command = "powersam " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    try:
        if args.image is not None and not args.image.is_file():
            raise FileNotFoundError(f"--image {args.image} does not exist")
        settings = CompareSettings(img_size=args.size, frame=args.frame, boxes=int(args.boxes), threads=args.threads,
                                   repeats=args.repeats, warmup=args.warmup, image=args.image,
                                   num_calib=args.num_calib, probe_size=args.probe_size, seed=args.seed,
                                   work_dir=args.out / "graphs", ort_spinning=args.ort_spinning,
                                   settle=args.settle_ms / 1e3)
        payload = compare_reference(settings)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    payload["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reference.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    markdown = compare_markdown(payload, command)
    (args.out / "reference.md").write_text("# PowerSAM segmentation paths vs the reference flow\n\n" + markdown,
                                           encoding="utf-8")
    print(markdown)
    print(f"wrote {args.out / 'reference.json'}, {args.out / 'reference.md'}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """``powersam bench``: exit 0 after writing the outputs, 1 with a one-line message on a reported failure."""
    from ..bench.suite import benchmark, load_miou_results, split_names, write_bench_outputs

    _defaults(args)
    if args.compare_reference:
        if args.boxes == "detected":
            print("error: --compare-reference decodes K given boxes, not 'detected'", file=sys.stderr)
            return 1
        return run_compare(args)
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

        bench = benchmark(split_names(args.models), split_names(args.runtime), settings, repeats=args.repeats,
                          warmup=args.warmup, complexity=not args.no_complexity,
                          progress=progress if bar is not None else None,
                          probe_size=None if args.no_probe else args.probe_size, settle=args.settle_ms / 1e3)
        if bar is not None:
            bar.close()
        written = write_bench_outputs(bench, args.out, miou or None)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(written["json"].read_text(encoding="utf-8"), encoding="utf-8")
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for line in console_lines(bench["records"]):
        print(line)
    print(f"wrote {', '.join(str(p) for p in written.values())}")
    return 0


def register(sub: Any) -> None:
    """Add ``bench`` to the ``powersam`` sub-command parsers ``sub``."""
    p = sub.add_parser("bench", help="latency per frame and per stage, with params/GMACs, across models and runtimes")
    add_bench_arguments(p)
    p.set_defaults(func=run_bench)


def console_lines(records: list[dict]) -> list[str]:
    """One aligned line per bench record: columns as wide as the longest name (labels such as
    ``onnx-int8[spin=off]`` outgrew a fixed width)."""
    model_width = max([24, *(len(str(r["model"])) for r in records)])
    runtime_width = max([10, *(len(str(r["runtime"])) for r in records)])
    lines = []
    for r in records:
        head = f"{r['model']:{model_width}s} {r['runtime']:{runtime_width}s}"
        if r.get("available", True):
            roof = f"  {r['vs_roofline']:5.2f}x roofline" if r.get("vs_roofline") is not None else ""
            lines.append(f"{head} median {r['latency_ms_median']:9.2f} ms  p90 {r['latency_ms_p90']:9.2f} ms  "
                         f"{r['fps']:7.2f} FPS{roof}")
        else:
            lines.append(f"{head} {r['error']}")
    return lines
