"""``powersam prune``: structured pruning of a SAM ViT teacher + distillation (SlimSAM-style), from options."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .options import add_config_arguments, config_from_args

_FLAGS = {  # CLI flag → (PruneConfig field, type, help)
    "--model": ("model", str, "zoo name of the SAM ViT teacher (default sam_vit_b)"),
    "--checkpoint": ("checkpoint", Path, "teacher weights, e.g. sam_vit_b_01ec64.pth"),
    "--data": ("data", Path, "COCO dataset folder or annotation JSON"),
    "--images-dir": ("images_dir", Path, "folder the JSON's file_name entries are relative to"),
    "--ratio": ("ratio", float, "share of attention dims and MLP channels removed (default 0.5)"),
    "--embed-ratio": ("embed_ratio", float, "share of embedding channels removed (default 0)"),
    "--scope": ("scope", str, "local (same widths in every block) or global"),
    "--importance": ("importance", str, "taylor (default) or magnitude"),
    "--calib-images": ("calib_images", int, "images of the Taylor calibration pass (default 64)"),
    "--epochs": ("epochs", int, "distillation epochs (0: prune only)"),
    "--batch-size": ("batch_size", int, "distillation batch size per process"),
    "--lr": ("lr", float, "distillation learning rate"),
    "--img-size": ("img_size", int, "network input size (default 1024, or the checkpoint's)"),
    "--max-images": ("max_images", int, "use only the first N training images"),
    "--eval-max-images": ("eval_max_images", int, "evaluate mIoU on at most N images"),
    "--out": ("output_dir", Path, "output folder (default runs/prune)"),
    "--device": ("device", str, "cpu or cuda (default: cuda when available)"),
}


def add_prune_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``powersam prune``: ``--config``/``--set`` plus shortcuts for the common fields."""
    add_config_arguments(parser)
    for flag, (field, kind, text) in _FLAGS.items():
        parser.add_argument(flag, dest=f"flag_{field}", type=kind, default=None, help=text)
    parser.add_argument("--no-eval", action="store_true", help="skip the mIoU evaluations")
    parser.add_argument("--resume", action="store_true", help="continue the distillation from OUT/last.pt")
    return parser


def _config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~powersam.prune.distill.PruneConfig` of ``--config``/``--set`` with the shortcut flags applied."""
    from ..prune.distill import PruneConfig
    from ..train.config import apply_overrides

    cfg = config_from_args(args, PruneConfig)
    flags = {field: getattr(args, f"flag_{field}") for field, _, _ in _FLAGS.values()
             if getattr(args, f"flag_{field}", None) is not None}
    if getattr(args, "no_eval", False):
        flags["eval_split"] = None
    if flags:  # through the config checker, so a bad --scope is reported like a bad YAML value
        cfg = apply_overrides(cfg, [f"{k}={'null' if v is None else v}" for k, v in flags.items()], source="flags")
    if not 0.0 <= cfg.ratio < 1.0 or not 0.0 <= cfg.embed_ratio < 1.0:
        raise ValueError(f"ratio and embed_ratio must be in [0, 1), got {cfg.ratio} and {cfg.embed_ratio}")
    if cfg.calib_images < 1:
        raise ValueError(f"calib_images must be >= 1, got {cfg.calib_images}")
    return cfg


def run_prune(args: argparse.Namespace) -> int:
    """Entry point of ``powersam prune``: prune, report, distil, report; prints the final checkpoint's path."""
    from ..prune.distill import prune_and_distill

    final, report = prune_and_distill(_config_from_args(args), resume=bool(getattr(args, "resume", False)))
    if report is not None:
        _print_summary(report)
    print(final)
    return 0


def _print_summary(report: dict) -> None:
    for name in ("teacher", "pruned", "distilled"):
        row = report.get(name)
        if row is None:
            continue
        parts = []
        if "encoder_params_m" in row:
            parts.append(f"encoder {row['encoder_params_m']:.2f} M params, {row['encoder_gmacs_paper']:.1f} GMACs "
                         f"(paper) / {row['encoder_gmacs_full']:.1f} (full)")
        if row.get("miou"):
            parts.append("mIoU " + ", ".join(f"{k} {v:.1f}" for k, v in row["miou"].items() if v is not None))
        print(f"{name:10s} " + "; ".join(parts))


def register(sub: Any) -> None:
    """Add ``prune`` to the ``powersam`` sub-command parsers ``sub``."""
    p = sub.add_parser("prune", help="structured pruning of a SAM ViT teacher + distillation (SlimSAM-style)")
    add_prune_arguments(p)
    p.set_defaults(func=run_prune)
