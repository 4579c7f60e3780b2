"""``powersam data check`` (validate a COCO dataset), ``powersam data synth`` (write the synthetic dataset) and
``powersam data split`` (write a train/val division as per-split annotation files) and ``powersam data merge`` (merge
datasets, each keeping its division)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``powersam data check``."""
    parser.add_argument("path", type=Path, help="dataset folder (annotations.json + images/) or a COCO JSON file")
    parser.add_argument("--images-dir", type=Path, default=None, help="folder the file_name entries are relative to")
    parser.add_argument("--split", choices=("train", "val"), default=None, help="which file of a folder with per-split files")
    parser.add_argument("--decode", action="store_true", help="fully decode every image (slower, finds truncated files)")
    parser.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run_check(args: argparse.Namespace) -> int:
    """Run the check for parsed CLI ``args`` and print the report. Exit code 1 on errors (or warnings with --strict)."""
    from ..data.check import check_dataset, format_report

    report = check_dataset(args.path, args.images_dir, split=args.split, decode_images=args.decode)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    failed = bool(report.errors) or (args.strict and bool(report.warnings))
    return 1 if failed else 0


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``powersam data synth``."""
    parser.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    parser.add_argument("--num-images", type=int, default=300, help="number of images (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--image-size", type=int, nargs="+", default=[384, 512], metavar="PX",
                        help="HEIGHT WIDTH, or one value for square images (default 384 512)")
    parser.add_argument("--min-objects", type=int, default=2, help="fewest labelled instances per image")
    parser.add_argument("--max-objects", type=int, default=8, help="most labelled instances per image")
    parser.add_argument("--split", default=None, help="write into OUT/SPLIT and mix the split name into the seed")
    parser.add_argument("--overwrite", action="store_true", help="replace images/ and annotations.json in OUT")
    return parser


def run_synth(args: argparse.Namespace) -> int:
    """Run generate_dataset from parsed arguments; prints the dataset folder; returns a process exit code."""
    from ..data.synth import generate_dataset

    size = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size)
    try:
        root = generate_dataset(args.out, args.num_images, seed=args.seed, image_size=size,
                                min_objects=args.min_objects, max_objects=args.max_objects, split=args.split,
                                overwrite=args.overwrite)
    except (ValueError, TypeError, FileExistsError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(root)
    return 0


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``powersam data split``."""
    parser.add_argument("path", type=Path, help="dataset folder with one annotation file, or a COCO JSON file")
    parser.add_argument("--out", type=Path, required=True, help="output folder: annotations/{train,val}.json + images link")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of images in val (default 0.2, as training)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the division (default 0, as training's split_seed)")
    parser.add_argument("--images-dir", type=Path, default=None, help="folder the file_name entries are relative to")
    parser.add_argument("--overwrite", action="store_true", help="replace the split files in a non-empty OUT")


def run_split(args: argparse.Namespace) -> int:
    """Write the division (powersam.data.split); prints the counts; returns a process exit code."""
    from ..data.split import write_split

    try:
        counts = write_split(args.path, args.out, val_fraction=args.val_fraction, seed=args.seed,
                             images_dir=args.images_dir, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for split, c in counts.items():
        print(f"{args.out / 'annotations' / (split + '.json')}: {c['images']} images, {c['annotations']} annotations")
    return 0


def add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``powersam data merge``."""
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                        help="two or more dataset folders or COCO JSON files; each keeps its own train/val division")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: annotations/{train,val}.json + images/s<k> links")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="division of a source with one annotation file (default 0.2, as training)")
    parser.add_argument("--seed", type=int, default=0, help="seed of that division (default 0, as training's split_seed)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous merge in a non-empty OUT")


def run_merge(args: argparse.Namespace) -> int:
    """Merge the datasets (powersam.data.merge); prints what went where; returns a process exit code."""
    from ..data.merge import describe_merge, merge_datasets

    try:
        result = merge_datasets(args.paths, args.out, val_fraction=args.val_fraction, seed=args.seed,
                                overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(describe_merge(result, args.out))
    return 0


def synth_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m powersam.data.synth ARGS``: ``powersam data synth`` on its own."""
    parser = add_synth_arguments(argparse.ArgumentParser(description="Generate the synthetic substation dataset."))
    return run_synth(parser.parse_args(argv))


def register(sub: Any) -> None:
    """Add ``data check``, ``data synth``, ``data split`` and ``data merge`` to the ``powersam`` sub-command parsers ``sub``."""
    data = sub.add_parser("data", help="datasets: validate, divide into train/val, merge, synthesise the embedded default"
                          ).add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    p = data.add_parser("check", help="validate a COCO dataset and print a report")
    add_check_arguments(p)
    p.set_defaults(func=run_check)

    p = data.add_parser("synth", help="write the procedural substation dataset (COCO)")
    add_synth_arguments(p)
    p.set_defaults(func=run_synth)

    p = data.add_parser("split", help="write a train/val division (the one training uses) as per-split files")
    add_split_arguments(p)
    p.set_defaults(func=run_split)

    p = data.add_parser("merge", help="merge datasets into one, each keeping its train/val division")
    add_merge_arguments(p)
    p.set_defaults(func=run_merge)
