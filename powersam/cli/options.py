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


# ``--ort-spinning``: ONNX Runtime's worker threads busy-wait after a run (on) or sleep (off); see
# powersam.runtime.GraphSession. "default" (or leaving the option out) keeps ORT's own default.
SPINNING_WORDS = {"on": True, "off": False, "default": None}


def ort_spinning(text: str) -> bool | None:
    """argparse type of ``--ort-spinning on|off|default`` → True / False / None (ORT's default)."""
    word = text.strip().lower()
    if word not in SPINNING_WORDS:
        raise argparse.ArgumentTypeError(f"expected on, off or default, got {text!r}")
    return SPINNING_WORDS[word]


def ort_spinning_list(text: str) -> tuple[bool | None, ...]:
    """argparse type of a comma list of ``--ort-spinning`` values (``on,off``), each once, in the order given."""
    values = tuple(ort_spinning(item) for item in text.split(","))
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"each value once, got {text!r}")
    return values
