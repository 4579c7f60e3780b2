"""``powersam`` command line. Every sub-command mirrors a Python API function.

Exit codes: 0 success, 1 a failure the command reports (bad input file, mismatching checkpoint, …),
2 wrong usage (argparse).
"""
from __future__ import annotations

import os

# Before torch is imported: with the default (active) OpenMP wait policy, a thread pool that shares its cores
# with any other busy process spins instead of sleeping, and training steps get several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Sequence  # noqa: E402


class CommandError(Exception):
    """A failure to report to the user as one line, without a traceback."""


def _cmd_models(args: argparse.Namespace) -> int:
    from .models.zoo import MODEL_GROUP_DESCRIPTIONS, MODEL_GROUPS, MODEL_SPECS

    for spec in MODEL_SPECS.values():
        print(f"{spec.name:24s} {spec.description}")
    print("\ngroups (usable wherever a comma list of model names is):")
    for group, members in MODEL_GROUPS.items():
        print(f"{group:24s} {MODEL_GROUP_DESCRIPTIONS.get(group, '')}".rstrip())
        print(f"{'':24s} = {','.join(members)}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .models.zoo import expand_model_names
    from .utils.model_info import format_model_info, model_info

    names = expand_model_names(args.model)
    infos = [model_info(name, img_size=args.size, det_size=args.det_size) for name in names]
    if args.json:
        print(json.dumps(infos if len(infos) > 1 else infos[0], indent=2))
    else:
        print("\n\n".join(format_model_info(info) for info in infos))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoint import convert_mmengine_checkpoint, identify_checkpoint

    state = convert_mmengine_checkpoint(args.src, args.dst)
    guess = identify_checkpoint(state)
    if guess == "slimsam" and any(key.endswith(".attn.q.weight") for key in state):
        # A globally pruned SlimSAM: its per-block widths and attention scales live in the pickled modules, not in
        # the tensors, so the plain state dict alone cannot be rebuilt. Write a checkpoint that carries them.
        from .models.slimsam_files import convert_slimsam_checkpoint

        convert_slimsam_checkpoint(args.src, args.dst)
        print(f"wrote {args.dst}: globally pruned SlimSAM ({len(state)} tensors) as a slimsam_custom checkpoint "
              f"with its per-block widths; use it as --checkpoint {args.dst}")
        return 0
    print(f"wrote {args.dst}: {len(state)} tensors" + (f" (looks like {guess})" if guess else ""))
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from .data.synth import run_synth

    return run_synth(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="powersam", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the model zoo")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("info", help="parameters and GMACs per component")
    p.add_argument("model", help="zoo name, or several and/or group names (table1, table2) separated by commas")
    p.add_argument("--size", type=int, default=1024, help="input size for the MAC count (default 1024)")
    p.add_argument("--det-size", type=int, default=None, help="input size of a decoupled model's detector (default 640)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="the main job on the embedded default: synthesise, train all stages, evaluate, report")
    from .train.pipeline import add_demo_arguments, add_pipeline_arguments, run_demo, run_pipeline_command

    add_demo_arguments(p)
    p.set_defaults(func=run_demo)

    p = sub.add_parser("pipeline", help="run every training stage, evaluation, export and report from one config")
    add_pipeline_arguments(p)
    p.set_defaults(func=run_pipeline_command)

    train = sub.add_parser("train", help="run one training stage").add_subparsers(
        dest="train_command", required=True, metavar="STAGE"
    )
    from .train.bbpg import add_bbpg_arguments, run_bbpg
    from .train.distill_decoder import add_decoder_arguments, run_decoder
    from .train.distill_encoder import add_encoder_arguments, run_encoder
    from .train.embed_cache import add_cache_arguments, run_cache
    from .train.pretrain import (add_synth_student_arguments, add_synth_teacher_arguments, run_synth_student,
                                 run_synth_teacher)
    from .train.teacher import add_teacher_arguments, run_teacher

    for name, help_text, add, run in (
        ("teacher", "stage 0: fine-tune a SAM teacher, or train a small one from scratch", add_teacher_arguments, run_teacher),
        ("synth-teacher", "pretrain a SAM-architecture teacher on procedural scenes rendered on the fly",
         add_synth_teacher_arguments, run_synth_teacher),
        ("synth-student", "pre-distil a student encoder from a teacher on procedural scenes rendered on the fly",
         add_synth_student_arguments, run_synth_student),
        ("cache", "store the teacher's image embeddings on disk (float16, memory-mapped, resumable)", add_cache_arguments, run_cache),
        ("encoder", "stage 1: distil the teacher's image embeddings into RepViT", add_encoder_arguments, run_encoder),
        ("decoder", "stage 2: distil the mask decoder with box prompts and refinement clicks", add_decoder_arguments, run_decoder),
        ("bbpg", "stage 3: train the box-prompt generator on the frozen backbone", add_bbpg_arguments, run_bbpg),
    ):
        p = train.add_parser(name, help=help_text)
        add(p)
        p.set_defaults(func=run)

    p = sub.add_parser("predict", help="segment images, folders, globs or videos; write overlays, COCO results, a summary")
    from .deploy.predict import add_predict_arguments, run_predict

    add_predict_arguments(p)
    p.set_defaults(func=run_predict)

    evaluation = sub.add_parser("eval", help="evaluate: prompted mask mIoU, COCO detection AP").add_subparsers(
        dest="eval_command", required=True, metavar="EVAL_COMMAND"
    )
    from .eval.cli import add_det_arguments, add_miou_arguments, run_det, run_miou

    p = evaluation.add_parser("miou", help="mask mIoU under GT box / point prompts with refinement clicks")
    add_miou_arguments(p)
    p.set_defaults(func=run_miou)
    p = evaluation.add_parser("det", help="COCO box AP (and mask AP) of a detect-and-segment model")
    add_det_arguments(p)
    p.set_defaults(func=run_det)

    p = sub.add_parser("export", help="export to ONNX: integrated detect-and-segment graph, or the interactive pair")
    from .deploy import register_export_formats
    from .deploy.onnx_export import add_export_arguments, run_export

    register_export_formats()  # --int8 on the onnx format, and --format tensorrt
    add_export_arguments(p)
    p.set_defaults(func=run_export)

    p = sub.add_parser("bench", help="latency per frame and per stage, with params/GMACs, across models and runtimes")
    from .bench.cli import add_bench_arguments, run_bench

    add_bench_arguments(p)
    p.set_defaults(func=run_bench)

    p = sub.add_parser("report", help="assemble a pipeline run folder into report.md (next to the paper's tables)")
    from .eval.report import add_report_arguments, run_report

    add_report_arguments(p)
    p.set_defaults(func=run_report)

    p = sub.add_parser("prune", help="structured pruning of a SAM ViT teacher + distillation (SlimSAM-style)")
    from .prune.distill import add_prune_arguments, run_prune

    add_prune_arguments(p)
    p.set_defaults(func=run_prune)

    p = sub.add_parser("serve", help="HTTP inference service and web page for one model (needs the serve extra)")
    from .serve.server import add_serve_arguments, run_serve

    add_serve_arguments(p)
    p.set_defaults(func=run_serve)

    p = sub.add_parser(
        "convert",
        help="turn an mmengine/mmdet (or EdgeSAM training) checkpoint into a plain state dict, or a pickled SlimSAM "
             "model into a slimsam_custom checkpoint, without running its pickled code",
    )
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.set_defaults(func=_cmd_convert)

    data = sub.add_parser("data", help="datasets: validate a COCO dataset, synthesise the embedded default").add_subparsers(
        dest="data_command", required=True, metavar="DATA_COMMAND"
    )
    p = data.add_parser("check", help="validate a COCO dataset and print a report")
    from .data.check import add_check_arguments, run_check

    add_check_arguments(p)
    p.set_defaults(func=run_check)

    p = data.add_parser("synth", help="write the procedural substation dataset (COCO)")
    from .data.synth import add_synth_arguments

    add_synth_arguments(p)
    p.set_defaults(func=_cmd_data_synth)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command == "serve":  # before build_parser, which imports torch: an ONNX model is served torch-free
        from .serve.server import main as serve_main

        return serve_main(argv[argv.index("serve") + 1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CommandError, FileNotFoundError, ValueError, TypeError, RuntimeError) as err:
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
