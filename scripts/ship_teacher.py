"""Ship a pretrained teacher as the package's embedded default: evaluate it on held-out generated scenes, write
``powersam/weights/synth_teacher.safetensors`` (float16) and ``synth_teacher.json`` (recipe, steps, wall time,
machine, git commit, sha256, held-out numbers per object size, and the history of earlier runs).

    python scripts/ship_teacher.py runs/pretrain/teacher/teacher.pt --command "powersam train synth-teacher ..."

The teacher comes from `powersam train synth-teacher --config configs/pretrain/synth_teacher.yaml`.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from powersam.checkpoint import read_powersam_checkpoint
from powersam.eval.scenes import HELDOUT_SEED, evaluate_on_scenes, format_scene_table
from powersam.train.teacher import load_teacher
from powersam.weights import ShippedWeightsError, ship_weights, shipped_teacher_record
from powersam.weights.provenance import earlier_run_record, git_commit, machine, training_seconds


def earlier_runs(meta: dict) -> list[dict]:
    """The runs a continued teacher builds on: the shipped record's history (``init_checkpoint: synth``), or an
    earlier ``teacher.pt`` of this machine (its own meta and the ``metrics.jsonl`` beside it), recursively."""
    init = meta.get("init_checkpoint")
    if init is None:
        return []
    if init == "synth":
        try:
            return shipped_teacher_record().get("runs", [])
        except ShippedWeightsError:
            return []
    path = Path(init)
    earlier = read_powersam_checkpoint(path).get("meta") or {}
    return earlier_runs(earlier) + [earlier_run_record(earlier, path.parent, "synth-teacher")]


def earlier_shipped_sha256(meta: dict) -> list[str]:
    """The sha256 of every shipped teacher this one continues, oldest first: a student distilled from an earlier
    shipped teacher still names its ancestor (tests check the student's ``teacher_sha256`` against this lineage)."""
    init = meta.get("init_checkpoint")
    if init is None:
        return []
    if init == "synth":
        try:
            shipped = shipped_teacher_record()
        except ShippedWeightsError:
            return []
        return list(shipped.get("earlier_sha256", [])) + [shipped["sha256"]]
    return earlier_shipped_sha256(read_powersam_checkpoint(Path(init)).get("meta") or {})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher", type=Path, help="teacher.pt written by `powersam train synth-teacher`")
    parser.add_argument("--command", required=True, help="the exact training command (recorded)")
    parser.add_argument("--scenes", type=int, default=100, help="held-out scenes to evaluate on (default 100)")
    parser.add_argument("--img-sizes", default="256,512", help="network inputs to evaluate at (default 256,512)")
    parser.add_argument("--zoom", type=float, default=None,
                        help="also evaluate box prompts zoomed in (crop of this many box sides; docs/zoom.md)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the evaluation")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    payload = read_powersam_checkpoint(args.teacher)
    meta = payload.get("meta") or {}
    if meta.get("stage") != "synth_teacher":
        print(f"{args.teacher}: not written by `powersam train synth-teacher` (stage {meta.get('stage')!r})",
              file=sys.stderr)
        return 1
    metrics = args.teacher.parent / "metrics.jsonl"
    seconds = training_seconds(metrics) if metrics.is_file() else None
    history = earlier_runs(meta)
    run = {"command": args.command, "steps": meta["steps"], "scene_seed": meta["scene_seed"],
           "scene_offset": meta["scene_offset"], "next_scene_offset": meta["next_scene_offset"],
           "wall_seconds": seconds, "machine": machine(), "git_commit": git_commit(),
           "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    heldout = {}
    for size in (int(s) for s in args.img_sizes.split(",")):
        model = load_teacher(None, args.teacher, img_size=size)
        result = evaluate_on_scenes(model, count=args.scenes)
        heldout[str(size)] = {"miou": result["miou"], "per_size": result["per_size"],
                              "size_counts": result["size_counts"], "num_instances": result["num_instances"],
                              "box_as_mask": result["box_as_mask"]}
        print(f"\nheld-out scenes (seed {HELDOUT_SEED}, {args.scenes} scenes) at img_size {size}:")
        print(format_scene_table(result, "teacher"))
        if args.zoom is not None:
            zoomed = evaluate_on_scenes(model, count=args.scenes, prompts=("box",), zoom=args.zoom)
            heldout[str(size)]["zoom"] = {"context": args.zoom, "miou": zoomed["miou"],
                                          "per_size": zoomed["per_size"]}
            print(f"zoomed in (x{args.zoom:g}):")
            print(format_scene_table(zoomed, f"teacher zoom x{args.zoom:g}"))
    # the curve across runs: box mIoU overall and per size at each evaluated input size
    run["heldout_box"] = {size: {"all": values["miou"]["box"], **{k: v["box"] for k, v in values["per_size"].items()}}
                          for size, values in heldout.items()}
    if args.zoom is not None:
        run["heldout_box_zoom"] = {size: {"context": args.zoom, "all": values["zoom"]["miou"]["box"],
                                          **{k: v["box"] for k, v in values["zoom"]["per_size"].items()}}
                                   for size, values in heldout.items()}
    record = {
        "name": "synth",
        "description": "SAM prompt encoder + mask decoder on EdgeSAM's RepViT-M1 encoder, pretrained on procedural "
                       "substation scenes rendered on the fly (no SAM checkpoint involved)",
        "recipe": "configs/pretrain/synth_teacher.yaml",
        "total_steps": meta["total_steps"],
        "next_scene_offset": meta["next_scene_offset"],
        "scene_seed": meta["scene_seed"],
        "img_size": int(meta["img_size"]),  # trained at (pretrain records it): build_model's default size for it
        "wall_seconds_total": sum(r.get("wall_seconds") or 0.0 for r in history) + (seconds or 0.0),
        "heldout_seed": HELDOUT_SEED,
        "heldout_scenes": args.scenes,
        "heldout": heldout,
        "runs": history + [run],
        "earlier_sha256": earlier_shipped_sha256(meta),
    }
    weights, record_path = ship_weights(args.teacher, record, "synth")
    print(f"\nwrote {weights} ({weights.stat().st_size / 2**20:.1f} MiB) and {record_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
