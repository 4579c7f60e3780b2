"""``powersam eval miou`` and ``powersam eval det``: argument parsing and entry points.

Both return a process exit code: 0 on success, 1 on a reported failure (the message goes to stderr).

``eval miou`` also evaluates several models in one run (``--model table1`` or ``--model a,b,c``, weights as
``--checkpoint NAME=PATH`` like ``powersam bench``): the dataset is read once, each model is built, evaluated
and freed in turn, one that fails is reported and the rest still run (exit 1 at the end).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

_SPLITS = ("train", "val", "all")


def _add_common_arguments(parser: argparse.ArgumentParser, several_models: bool = False) -> None:
    if several_models:
        parser.add_argument("--model", default=None,
                            help="zoo model name (optional with a PowerSAM checkpoint), or a comma list of model and "
                                 "group names (table1, table2; see 'powersam models'): evaluated in turn on the same "
                                 "data; or an interactive export (encoder .onnx / .engine, or their folder)")
        parser.add_argument("--checkpoint", action="append", default=[], metavar="FILE|NAME=PATH",
                            help="weights to load (an official file, or one written by powersam); with several models "
                                 "give NAME=PATH, repeatable, as for 'powersam bench' (models without one get random "
                                 "weights)")
    else:
        parser.add_argument("--model", default=None, help="zoo model name (optional with a PowerSAM checkpoint), or "
                            "an integrated .onnx / .engine export (its FP16 / INT8 twins included)")
        parser.add_argument("--checkpoint", type=Path, default=None,
                            help="weights to load (an official file, or one written by powersam)")
    parser.add_argument("--data", type=Path, required=True, help="COCO dataset folder or annotation JSON")
    parser.add_argument("--images-dir", type=Path, default=None, help="folder the JSON's file_name entries are relative to")
    parser.add_argument("--split", choices=_SPLITS, default="all",
                        help="images to evaluate: all (default: everything the dataset holds), or the 'train' / 'val' "
                             "part of the deterministic hash split the training stages use")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--img-size", type=int, default=None, help="network input size (default 1024, or the checkpoint's)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="also write the full result as JSON" + (
                            ' (several models: {"models": {name: result}})' if several_models else ""))
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_miou_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``powersam eval miou``."""
    _add_common_arguments(parser, several_models=True)
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="also write one JSON per model, DIR/NAME_miou.json (as --json writes for one model; "
                             "'powersam bench --miou-json DIR/*_miou.json' takes them)")
    parser.add_argument("--prompts", default="box,point", help="comma-separated prompt kinds: box, point (default both)")
    parser.add_argument("--refine", type=int, default=2, help="corrective clicks after the first prompt (default 2)")
    parser.add_argument("--point-from", choices=("center", "mask-center", "random"), default="center",
                        help="initial point: interior-most mask pixel (default), the mask pixel nearest the mask's "
                             "centroid, or a random mask pixel")
    parser.add_argument("--click-mode", choices=("center", "random"), default="center",
                        help="corrective click: centre of the largest error region (default) or a random error pixel")
    parser.add_argument("--max-instances", type=int, default=None, help="at most N instances per image")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--use-mask-input", action="store_true", help="feed the previous logits back as a mask prompt")
    parser.add_argument("--zoom", type=float, default=None, metavar="CONTEXT",
                        help="decode each box prompt on a crop of CONTEXT box sides around it (e.g. 4: small objects "
                             "on large photos keep their resolution; docs/zoom.md); default: the whole image")
    return parser


def add_det_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``powersam eval det``."""
    _add_common_arguments(parser)
    parser.add_argument("--detector-checkpoint", type=Path, default=None, help="separate detector weights")
    parser.add_argument("--conf", type=float, default=0.001, help="score threshold (default 0.001, as for COCO AP)")
    parser.add_argument("--iou", type=float, default=0.65, help="NMS IoU threshold (default 0.65)")
    parser.add_argument("--max-det", type=int, default=100, help="detections kept per image (default 100)")
    parser.add_argument("--min-side", type=int, default=0, metavar="PX",
                        help="detect only on images at least PX pixels on each side, others fail as in 'predict' "
                             "(default 0: score every image the dataset holds; 'predict' refuses images under 16 px)")
    parser.add_argument("--verbose-coco", action="store_true", help="print pycocotools' own summaries")
    return parser


def _open_dataset(args: argparse.Namespace) -> Any:
    from powersam.data.coco import CocoInstances
    from powersam.data.coco_annotations import resolve_annotation_file

    if args.model is None and args.checkpoint is None:  # checked first: cheaper than reading the dataset
        raise ValueError("give --model NAME, --checkpoint FILE, or both")

    split = None if args.split == "all" else args.split
    dataset = CocoInstances(args.data, images_dir=args.images_dir, split=split, load_masks=True)
    if split is None:
        print(f"evaluating all {len(dataset)} images of {args.data}", flush=True)
    elif resolve_annotation_file(args.data, split)[1]:  # a folder with per-split files: nothing was divided
        print(f"evaluating the '{split}' file {dataset.annotation_file}: {len(dataset)} images", flush=True)
    else:  # say loudly that this is a subset
        total = len(CocoInstances(args.data, images_dir=args.images_dir, split=None, load_masks=False))
        print(f"evaluating the '{split}' split only: {len(dataset)} of the {total} images of {args.data} "
              f"(--split all evaluates every image)", flush=True)
    return dataset


def _check_evaluated(result: dict[str, Any], what: str) -> Optional[str]:
    """Why a finished evaluation must not exit 0 (nothing evaluated, or images that failed), else None."""
    failed = result.get("failed_images") or []
    if result.get(what, 0) == 0:
        first = f"; the first image failed with {failed[0]['error']}" if failed else ""
        return (f"nothing was evaluated: 0 {what.replace('num_', '')} in {result.get('num_images', 0)} images"
                f"{first}")
    if failed:
        return f"{len(failed)} image(s) failed and were left out (listed above)"
    return None


def _build(args: argparse.Namespace, **kwargs: Any) -> Any:
    import torch

    from powersam.models.zoo import build_model
    from powersam.utils.device import torch_device

    device = torch_device(args.device)  # checked before the (possibly slow) build
    if args.img_size is not None:
        kwargs["img_size"] = args.img_size
    if args.checkpoint is None:  # random weights (timing, smoke runs): the same for a model whatever came before
        torch.manual_seed(getattr(args, "seed", 0))
    model = build_model(args.model, checkpoint=args.checkpoint, **kwargs)
    return model.to(device).eval()


def _payload(args: argparse.Namespace, model_name: Optional[str], checkpoint: Optional[Path],
             result: dict[str, Any]) -> dict[str, Any]:
    """The JSON written for one model (``--json`` with one model, each file of ``--out``)."""
    return {
        "model": model_name,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "data": str(args.data),
        "split": args.split,
        **result,
    }


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def _per_model_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}_miou.json"


def _finish(args: argparse.Namespace, result: dict[str, Any], report: str, model: Any, counted: str) -> int:
    print(report)
    problem = _check_evaluated(result, counted)
    out_dir = getattr(args, "out", None)
    if args.json is not None or out_dir is not None:
        payload = _payload(args, getattr(model, "model_name", args.model), args.checkpoint, result)
        if args.json is not None:
            _write_json(args.json, payload)
        if out_dir is not None:
            _write_json(_per_model_path(out_dir, payload["model"] or "model"), payload)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


def _fail(err: BaseException) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 1


def _miou_models(args: argparse.Namespace) -> tuple[list[Optional[str]], dict[Optional[str], Path]]:
    """The models of ``eval miou`` (expanded, deduplicated) and their checkpoints, validated before any reading.

    ``--checkpoint`` items are ``NAME=PATH`` when NAME is a zoo model name, else a plain FILE (only with one
    model). Returns ``([None], {None: FILE})`` for a lone checkpoint that names its own model."""
    from powersam.models.zoo import MODEL_SPECS, expand_model_names

    names: list[Optional[str]] = expand_model_names(args.model) if args.model is not None else []
    items = args.checkpoint if isinstance(args.checkpoint, list) else ([] if args.checkpoint is None else [args.checkpoint])
    named: dict[str, Path] = {}
    plain: list[Path] = []
    for item in items:
        name, sep, path = str(item).partition("=")
        if sep and name in MODEL_SPECS and path:
            if name in named:
                raise ValueError(f"--checkpoint given twice for {name!r}")
            named[name] = Path(path)
        else:
            plain.append(Path(item))
    if len(names) > 1:
        if plain:
            raise ValueError(f"with several models give each checkpoint as NAME=PATH (as 'powersam bench' does); "
                             f"got {str(plain[0])!r}")
        stray = [name for name in named if name not in names]
        if stray:
            raise ValueError(f"--checkpoint for {', '.join(map(repr, stray))}, which is not among the models "
                             f"evaluated: {', '.join(names)}")
        for name, path in named.items():
            if not path.is_file():
                raise FileNotFoundError(f"--checkpoint {name}: {path} does not exist")
        return names, dict(named)
    if len(plain) + len(named) > 1:
        raise ValueError("one model takes one --checkpoint")
    if named:
        (name, path), = named.items()
        if names and names[0] != name:
            raise ValueError(f"--checkpoint {name}=…: the model evaluated is {names[0]!r}")
        return [name], {name: path}
    name = names[0] if names else None
    return [name], ({name: plain[0]} if plain else {})


def _miou_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(prompts=args.prompts, refine_iters=args.refine, point_from=args.point_from,
                click_mode=args.click_mode, max_images=args.max_images, seed=args.seed,
                max_instances_per_image=args.max_instances, progress=not args.no_progress,
                use_mask_input=args.use_mask_input, zoom=args.zoom)


def run_miou(args: argparse.Namespace) -> int:
    """``powersam eval miou``: mIoU with GT box / point prompts and corrective clicks, for one model or several."""
    from powersam.deploy.predict.segment import is_onnx
    from powersam.eval.miou import evaluate_miou, format_miou_report

    try:
        if args.model is not None and is_onnx(args.model):
            dataset = _open_dataset(args)
            model = _exported_predictor(args)
            result = evaluate_miou(model, dataset, **_miou_kwargs(args))
            return _finish(args, result, format_miou_report(result), model, "num_instances")
        names, checkpoints = _miou_models(args)
        if len(names) > 1:
            return _run_miou_several(args, names, checkpoints)
        # One model: exactly the single-model command (report, JSON layout, exit code).
        args = argparse.Namespace(**{**vars(args), "model": names[0], "checkpoint": checkpoints.get(names[0])})
        dataset = _open_dataset(args)
        model = _build(args)
        result = evaluate_miou(model, dataset, **_miou_kwargs(args))
        return _finish(args, result, format_miou_report(result), model, "num_instances")
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as err:
        return _fail(err)


def _run_miou_several(args: argparse.Namespace, names: list[str], checkpoints: dict[str, Path]) -> int:
    """Read the dataset once; build, evaluate and free each model in turn; a failing model does not stop the rest."""
    import gc

    import torch

    from powersam.eval.miou import evaluate_miou, format_miou_comparison

    dataset = _open_dataset(argparse.Namespace(**{**vars(args), "model": names[0]}))
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for index, name in enumerate(names, 1):
        checkpoint = checkpoints.get(name)
        print(f"[{index}/{len(names)}] {name}: " + (str(checkpoint) if checkpoint else "random weights (no --checkpoint)"),
              flush=True)
        model = None
        try:
            model = _build(argparse.Namespace(**{**vars(args), "model": name, "checkpoint": checkpoint}))
            result = evaluate_miou(model, dataset, **_miou_kwargs(args))
        except Exception as err:  # noqa: BLE001 - one model's failure (bad weights, out of memory) must not stop the rest
            failed[name] = f"{type(err).__name__}: {err}"
            print(f"error: {name}: {failed[name]}", file=sys.stderr, flush=True)
        else:
            problem = _check_evaluated(result, "num_instances")
            if problem:
                failed[name] = problem
                print(f"error: {name}: {problem}", file=sys.stderr, flush=True)
            results[name] = _payload(args, getattr(model, "model_name", name), checkpoint, result)
            values = "  ".join(f"{k} {'-' if v is None else f'{v:.1f}'}" for k, v in result["miou"].items())
            print(f"  {values}  ({result['num_instances']} instances, {result['num_images']} images"
                  + (f", {len(result['failed_images'])} failed images)" if result["failed_images"] else ")"))
            if args.out is not None:
                _write_json(_per_model_path(args.out, name), results[name])
        finally:
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    print(format_miou_comparison(results, failed))
    if args.json is not None:
        _write_json(args.json, {"models": results, **({"failed": failed} if failed else {})})
    if failed:
        print(f"error: {len(failed)} of {len(names)} models failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _exported_predictor(args: argparse.Namespace) -> Any:
    """An interactive ``.onnx`` / ``.engine`` pair (the runtime's OnnxSamPredictor), for the mIoU of FP16/INT8
    encoders."""
    from powersam.deploy.predict.segment import can_detect, load_model

    if args.checkpoint:
        raise ValueError("--checkpoint applies to PyTorch models; an export has its weights built in")
    model = load_model(args.model, None, args.img_size, args.device)
    if can_detect(model):
        raise ValueError(f"{args.model} is an integrated export; prompted mIoU needs an interactive one "
                         "(powersam export --interactive)")
    return model


def _exported_detector(args: argparse.Namespace) -> Any:
    """An integrated ``.onnx`` / ``.engine`` export (the runtime's OnnxPowerSAM), for the AP of FP16/INT8 graphs."""
    from powersam.deploy.predict.segment import can_detect, load_model

    if args.detector_checkpoint is not None:
        raise ValueError("--detector-checkpoint applies to PyTorch models; an export has its detector built in")
    model = load_model(args.model, args.checkpoint, args.img_size, args.device)
    if not can_detect(model):
        raise ValueError(f"{args.model} is an interactive encoder/decoder pair; AP needs an integrated export")
    return model


def run_det(args: argparse.Namespace) -> int:
    """``powersam eval det``: COCO box / mask AP of an integrated or decoupled model.

    Without a checkpoint the (randomly initialised) detector gets the dataset's classes, so a smoke test runs;
    with one, its recorded classes must match the dataset's."""
    from powersam.deploy.predict.segment import is_onnx
    from powersam.eval.detection import evaluate_detection, format_detection_report

    try:
        dataset = _open_dataset(args)
        model = _exported_detector(args) if is_onnx(args.model) else None
        if model is None:
            extra: dict[str, Optional[Any]] = {"detector_checkpoint": args.detector_checkpoint}
            if args.checkpoint is None:
                extra["class_names"] = list(dataset.class_names)
            model = _build(args, **extra)
        result = evaluate_detection(
            model, dataset, max_images=args.max_images, conf=args.conf, iou=args.iou, max_det=args.max_det,
            progress=not args.no_progress, verbose=args.verbose_coco, min_side=args.min_side,
        )
        return _finish(args, result, format_detection_report(result), model, "num_annotations")
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as err:
        return _fail(err)


def register(sub: Any) -> None:
    """Add ``eval miou`` and ``eval det`` to the ``powersam`` sub-command parsers ``sub``."""
    evaluation = sub.add_parser("eval", help="evaluate: prompted mask mIoU, COCO detection AP").add_subparsers(
        dest="eval_command", required=True, metavar="EVAL_COMMAND"
    )
    p = evaluation.add_parser("miou", help="mask mIoU under GT box / point prompts with refinement clicks")
    add_miou_arguments(p)
    p.set_defaults(func=run_miou)
    p = evaluation.add_parser("det", help="COCO box AP (and mask AP) of a detect-and-segment model")
    add_det_arguments(p)
    p.set_defaults(func=run_det)
