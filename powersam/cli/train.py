"""``powersam train STAGE``, ``powersam pipeline`` and ``powersam demo``: options → one training function call.

Every stage reads its dataclass config from ``--config`` / ``--set`` (see :mod:`powersam.train.config`) and calls
the stage's function in :mod:`powersam.train`; nothing here imports torch until a command runs.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any, Callable

from .options import add_config_arguments, add_stage_arguments, config_from_args

Command = Callable[[argparse.Namespace], int]

# name → (help, module under powersam.train, train function, config class, what its summary calls the checkpoint)
SAM_STAGES: dict[str, tuple[str, str, str, str, str]] = {
    "teacher": ("stage 0: fine-tune a SAM teacher, or train a small one from scratch",
                "teacher", "train_teacher", "TeacherConfig", "teacher"),
    "synth-teacher": ("pretrain a SAM-architecture teacher on procedural scenes rendered on the fly",
                      "pretrain", "pretrain_teacher", "SynthTeacherConfig", "teacher"),
    "synth-student": ("pre-distil a student encoder from a teacher on procedural scenes rendered on the fly",
                      "pretrain", "pretrain_student", "SynthStudentConfig", "student"),
    "encoder": ("stage 1: distil the teacher's image embeddings into RepViT",
                "distill_encoder", "distill_encoder", "EncoderDistillConfig", "stage-1 student"),
    "decoder": ("stage 2: distil the mask decoder with box prompts and refinement clicks",
                "distill_decoder", "distill_decoder", "DecoderDistillConfig", "stage-2 student"),
}
CACHE_HELP = "store the teacher's image embeddings on disk (float16, memory-mapped, resumable)"
BBPG_HELP = "stage 3: train the box-prompt generator on the frozen backbone"
SYNTH_DETECTOR_HELP = "pretrain the box-prompt generator on a frozen pre-distilled backbone, on scenes rendered on the fly"
STAGE_ORDER = ("teacher", "synth-teacher", "synth-student", "synth-detector", "cache", "encoder", "decoder", "bbpg")


def stage_command(module: str, function: str, config: str, what: str) -> Command:
    """``powersam train STAGE`` for a SAM stage: train it and print its summary and checkpoint path."""

    def run(args: argparse.Namespace) -> int:
        from ..train.sam_data import print_stage_summary

        stage = importlib.import_module(f"powersam.train.{module}")
        path = getattr(stage, function)(config_from_args(args, getattr(stage, config)), resume=args.resume)
        print_stage_summary(path, what)
        return 0

    run.__doc__ = f"CLI entry: train the {what} and print its summary and checkpoint path."
    return run


def add_bbpg_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--config CFG``, ``--set key=value`` (repeatable) and ``--resume`` for ``powersam train bbpg``."""
    return add_stage_arguments(parser)


def run_bbpg(args: argparse.Namespace) -> int:
    """Entry point of ``powersam train bbpg``; prints the final checkpoint's path."""
    from ..train.bbpg import BBPGConfig, train_bbpg

    return _run_detector_stage(args, BBPGConfig, train_bbpg)


def run_synth_detector(args: argparse.Namespace) -> int:
    """Entry point of ``powersam train synth-detector``; prints the final checkpoint's path."""
    from ..train.pretrain_detector import SynthDetectorConfig, pretrain_detector

    return _run_detector_stage(args, SynthDetectorConfig, pretrain_detector)


def _run_detector_stage(args: argparse.Namespace, config: type, train: Callable[..., Path]) -> int:
    from ..train.distributed import cleanup, is_main

    cfg = config_from_args(args, config)
    try:
        final = train(cfg, resume=bool(args.resume))
        if is_main():
            print(final)
    finally:
        cleanup()
    return 0


def add_cache_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--config``, ``--set`` and ``--restart`` for ``powersam train cache`` (resuming is the default)."""
    add_config_arguments(parser)
    parser.add_argument("--restart", action="store_true", help="discard an existing cache instead of resuming it")
    return parser


def run_cache(args: argparse.Namespace) -> int:
    """CLI entry: build (or finish) the teacher-embedding cache and print where it is."""
    import torch

    from ..train import distributed as pdist
    from ..train.embed_cache import EmbedCacheConfig, build_embedding_cache, default_cache_dir
    from ..train.sam_data import open_stage_dataset
    from ..train.teacher import load_teacher

    cfg = config_from_args(args, EmbedCacheConfig)
    if cfg.teacher_checkpoint is None:
        raise ValueError("teacher_checkpoint is required (the stage-0 output, e.g. runs/teacher/teacher.pt)")
    use_cuda = torch.cuda.is_available() if cfg.device is None else cfg.device == "cuda"
    info = pdist.init_distributed(use_cuda=use_cuda)
    teacher = load_teacher(cfg.teacher_model, cfg.teacher_checkpoint, img_size=cfg.img_size)
    dataset = open_stage_dataset(cfg, load_masks=False)
    out_dir = cfg.cache_dir if cfg.cache_dir is not None else default_cache_dir(cfg.teacher_checkpoint, cfg)
    cache = build_embedding_cache(teacher, dataset, out_dir, img_size=cfg.img_size, batch_size=cfg.batch_size,
                                  dtype=cfg.dtype, resume=not args.restart, device=info.device,
                                  num_workers=cfg.num_workers)
    if info.is_main:
        print(f"{cache}: {cache.num_completed} of {len(cache)} embeddings")
    return 0


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``powersam pipeline``: ``--config``, ``--set``, ``--resume``."""
    add_config_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="skip finished stages, resume the interrupted one")
    parser.add_argument("--until", choices=("teacher", "stage1", "stage2", "stage3"), default=None,
                        help="stop after this stage, without evaluation (e.g. to compare teacher settings on a "
                             "selection split; --resume continues later)")
    return parser


def run_pipeline_command(args: argparse.Namespace) -> int:
    """``powersam pipeline``: every stage, evaluation, export and report of one config."""
    from ..train.pipeline import PipelineConfig, run_pipeline

    cfg = config_from_args(args, PipelineConfig)
    run_pipeline(cfg, resume=args.resume, until=args.until)
    return 0


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``powersam demo``."""
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    parser.add_argument("--resume", action="store_true", help="skip finished stages, resume the interrupted one")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    return parser


def run_demo(args: argparse.Namespace) -> int:
    """``powersam demo``: the pipeline on the embedded default dataset."""
    from ..train.config import apply_overrides
    from ..train.pipeline import demo_config, run_pipeline

    cfg = apply_overrides(demo_config(args.out), args.set)
    run_pipeline(cfg, resume=args.resume)
    return 0


def register(sub: Any) -> None:
    """Add ``demo``, ``pipeline`` and ``train STAGE`` to the ``powersam`` sub-command parsers ``sub``."""
    p = sub.add_parser("demo", help="the main job on the embedded default: synthesise, train all stages, evaluate, "
                                    "report")
    add_demo_arguments(p)
    p.set_defaults(func=run_demo)

    p = sub.add_parser("pipeline", help="run every training stage, evaluation, export and report from one config")
    add_pipeline_arguments(p)
    p.set_defaults(func=run_pipeline_command)

    train = sub.add_parser("train", help="run one training stage").add_subparsers(
        dest="train_command", required=True, metavar="STAGE"
    )
    for name in STAGE_ORDER:
        if name == "cache":
            help_text, add, run = CACHE_HELP, add_cache_arguments, run_cache
        elif name == "bbpg":
            help_text, add, run = BBPG_HELP, add_bbpg_arguments, run_bbpg
        elif name == "synth-detector":
            help_text, add, run = SYNTH_DETECTOR_HELP, add_bbpg_arguments, run_synth_detector
        else:
            help_text, module, function, config, what = SAM_STAGES[name]
            add, run = add_stage_arguments, stage_command(module, function, config, what)
        p = train.add_parser(name, help=help_text)
        add(p)
        p.set_defaults(func=run)
