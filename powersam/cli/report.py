"""``powersam report RUN_DIR``: assemble a pipeline run folder into ``report.md``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``powersam report``."""
    parser.add_argument("run_dir", type=Path, help="pipeline run folder (layout: see powersam.eval.report)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write (default RUN_DIR/report.md)")
    return parser


def run_report(args: argparse.Namespace) -> int:
    """``powersam report``: exit 0 after writing, 1 with a message when the run folder is missing."""
    from ..eval.report import write_report

    try:
        path = write_report(args.run_dir, args.out)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def register(sub: Any) -> None:
    """Add ``report`` to the ``powersam`` sub-command parsers ``sub``."""
    p = sub.add_parser("report", help="assemble a pipeline run folder into report.md (next to the paper's tables)")
    add_report_arguments(p)
    p.set_defaults(func=run_report)
