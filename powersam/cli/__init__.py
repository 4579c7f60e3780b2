"""``powersam`` command line. Every sub-command mirrors a Python API function.

Exit codes: 0 success, 1 a failure the command reports (bad input file, mismatching checkpoint, …),
2 wrong usage (argparse).
"""
from __future__ import annotations

import os

# Before torch is imported: with the default (active) OpenMP wait policy, a thread pool that shares its cores
# with any other busy process spins instead of sleeping, and training steps get several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Large temporaries reuse freed heap pages instead of faulting in fresh ones on every call (the mask decoder's cost
# per box at 1024: 32.8 -> 23.4 ms, powersam/utils/memory.py); POWERSAM_MALLOC=system keeps the system's settings.
from ..utils.memory import retain_freed_memory_unless_disabled  # noqa: E402

retain_freed_memory_unless_disabled()

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Sequence  # noqa: E402

# The modules of this package that add sub-commands (each has ``register(sub)``), in the order of ``powersam -h``
# after models/info. Each imports only argparse and other light modules at module level: building the parser
# imports no torch, so ``powersam predict`` / ``serve`` with an ONNX model run on a torch-free device.
COMMAND_MODULES = ("train", "predict", "eval", "export", "bench", "report", "prune", "serve")


class CommandError(Exception):
    """A failure to report to the user as one line, without a traceback."""


def _cmd_models(args: argparse.Namespace) -> int:
    from ..models.zoo import MODEL_GROUP_DESCRIPTIONS, MODEL_GROUPS, MODEL_SPECS

    for spec in MODEL_SPECS.values():
        print(f"{spec.name:24s} {spec.description}")
    print("\ngroups (usable wherever a comma list of model names is):")
    for group, members in MODEL_GROUPS.items():
        print(f"{group:24s} {MODEL_GROUP_DESCRIPTIONS.get(group, '')}".rstrip())
        print(f"{'':24s} = {','.join(members)}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from ..models.zoo import expand_model_names
    from ..utils.model_info import format_model_info, model_info

    names = expand_model_names(args.model)
    infos = [model_info(name, img_size=args.size, det_size=args.det_size) for name in names]
    if args.json:
        print(json.dumps(infos if len(infos) > 1 else infos[0], indent=2))
    else:
        print("\n\n".join(format_model_info(info) for info in infos))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from ..checkpoint import convert_mmengine_checkpoint, identify_checkpoint

    state = convert_mmengine_checkpoint(args.src, args.dst)
    guess = identify_checkpoint(state)
    if guess == "slimsam" and any(key.endswith(".attn.q.weight") for key in state):
        # A globally pruned SlimSAM: its per-block widths and attention scales live in the pickled modules, not in
        # the tensors, so the plain state dict alone cannot be rebuilt. Write a checkpoint that carries them.
        from ..models.slimsam_files import convert_slimsam_checkpoint

        convert_slimsam_checkpoint(args.src, args.dst)
        print(f"wrote {args.dst}: globally pruned SlimSAM ({len(state)} tensors) as a slimsam_custom checkpoint "
              f"with its per-block widths; use it as --checkpoint {args.dst}")
        return 0
    print(f"wrote {args.dst}: {len(state)} tensors" + (f" (looks like {guess})" if guess else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The whole ``powersam`` parser; each sub-command's ``func`` runs it on the parsed options."""
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

    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)

    p = sub.add_parser(
        "convert",
        help="turn an mmengine/mmdet (or EdgeSAM training) checkpoint into a plain state dict, or a pickled SlimSAM "
             "model into a slimsam_custom checkpoint, without running its pickled code",
    )
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.set_defaults(func=_cmd_convert)

    importlib.import_module(f"{__name__}.data").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command == "serve":  # the serve parser alone: nothing else of the command line is needed to serve a model
        from .serve import main as serve_main

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


