"""Argument groups several commands share: ``--config`` / ``--set`` (a YAML config and overrides) and ``--resume``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--config PATH`` and repeatable ``--set key.sub=value`` to ``parser``."""
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=2e-4 (repeatable)")
    return parser


def add_stage_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--config``, ``--set`` and ``--resume``: the arguments of every ``powersam train`` stage."""
    add_config_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pt if it exists")
    return parser


def config_from_args(args: argparse.Namespace, cls: type[T]) -> T:
    """The config named by ``args.config`` (or ``cls()`` defaults) with ``args.overrides`` applied."""
    from ..train.config import apply_overrides, load_config

    cfg = load_config(args.config, cls) if args.config is not None else cls()
    return apply_overrides(cfg, args.overrides) if args.overrides else cfg
