"""Ship a pre-distilled student as package data: evaluate it against its teacher on held-out generated scenes, write
``powersam/weights/synth_<student>.safetensors`` (float16; a whole SAM: the distilled encoder + the teacher's
prompt encoder and mask decoder) and its JSON record (recipe, steps, wall time, machine, git commit, sha256, the
teacher's hash, held-out numbers per object size for the student and its teacher, and the runs it builds on).

    python scripts/ship_student.py runs/pretrain/student/powersam_s_synth.pt --command "powersam train synth-student ..."

The student comes from `powersam train synth-student --config configs/pretrain/synth_student.yaml`; a run stopped
early yields one with `python -c "from powersam.train.pretrain import student_from_training_state as f; f('RUN')"`.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from powersam.checkpoint import read_powersam_checkpoint
from powersam.eval.scenes import HELDOUT_SEED, evaluate_on_scenes, format_scene_table
from powersam.models.zoo import build_model
from powersam.train.teacher import load_teacher
from powersam.weights import ShippedWeightsError, is_shipped_name, ship_weights, shipped_teacher_record
from powersam.weights.provenance import earlier_run_record, git_commit, machine, training_seconds


def earlier_runs(name: str, meta: dict) -> list[dict]:
    """The runs a continued student builds on: the shipped record's history (``init_checkpoint`` = ``name``), or an
    earlier ``<student>_synth.pt`` of this machine (its own meta and the ``metrics.jsonl`` beside it), recursively."""
    init = meta.get("init_checkpoint")
    if init is None:
        return []
    if init == name:
        try:
            return shipped_teacher_record(name).get("runs", [])
        except ShippedWeightsError:
            return []
    path = Path(init)
    earlier = read_powersam_checkpoint(path).get("meta") or {}
    return earlier_runs(name, earlier) + [earlier_run_record(earlier, path.parent, "synth-student")]


def teacher_result(teacher_source: str, teacher_record: dict, size: int, scenes: int) -> dict:
    """The teacher's held-out numbers at ``size``: from its shipped record when it holds them for the same scenes
    (same function, seed and count), else evaluated now."""
    recorded = teacher_record.get("heldout", {}).get(str(size))
    if recorded is not None and teacher_record.get("heldout_scenes") == scenes:
        print(f"teacher at {size}: the numbers recorded in its shipped record ({scenes} scenes, seed {HELDOUT_SEED})")
        return recorded
    result = evaluate_on_scenes(load_teacher(None, teacher_source, img_size=size), count=scenes)
    print(format_scene_table(result, "teacher"))
    return result


def summary_row(result: dict) -> dict:
    return {"all": result["miou"]["box"], **{k: v["box"] for k, v in result["per_size"].items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", type=Path, help="<student>_synth.pt written by `powersam train synth-student`")
    parser.add_argument("--command", required=True, help="the exact training command (recorded)")
    parser.add_argument("--scenes", type=int, default=100, help="held-out scenes to evaluate on (default 100)")
    parser.add_argument("--img-sizes", default="256,512", help="network inputs to evaluate at (default 256,512)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the evaluation")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    payload = read_powersam_checkpoint(args.student)
    meta = payload.get("meta") or {}
    if meta.get("stage") != "synth_student":
        print(f"{args.student}: not written by `powersam train synth-student` (stage {meta.get('stage')!r})",
              file=sys.stderr)
        return 1
    student, teacher_source = payload["model_name"], meta["teacher_checkpoint"]
    name = f"synth_{student}"
    teacher_record = shipped_teacher_record(teacher_source) if is_shipped_name(teacher_source) else {}
    metrics = args.student.parent / "metrics.jsonl"
    seconds = training_seconds(metrics) if metrics.is_file() else None
    run = {"command": args.command, "steps": meta["steps"], "scene_seed": meta["scene_seed"],
           "scene_offset": meta["scene_offset"], "next_scene_offset": meta["next_scene_offset"],
           "wall_seconds": seconds, "machine": machine(), "git_commit": git_commit(),
           "teacher": teacher_source, "teacher_sha256": teacher_record.get("sha256"),
           "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    heldout = {}
    for size in (int(s) for s in args.img_sizes.split(",")):
        ours = evaluate_on_scenes(build_model(student, checkpoint=args.student, img_size=size, with_detector=False),
                                  count=args.scenes)
        print(f"\nheld-out scenes (seed {HELDOUT_SEED}, {args.scenes} scenes) at img_size {size}:")
        print(format_scene_table(ours, "student"))
        theirs = teacher_result(teacher_source, teacher_record, size, args.scenes)
        heldout[str(size)] = {"miou": ours["miou"], "per_size": ours["per_size"], "size_counts": ours["size_counts"],
                              "num_instances": ours["num_instances"], "box_as_mask": ours["box_as_mask"],
                              "teacher_box": summary_row(theirs),
                              "box_vs_teacher": ours["miou"]["box"] / max(theirs["miou"]["box"], 1e-9)}
        print(f"student / teacher, box mIoU at {size}: {heldout[str(size)]['box_vs_teacher']:.2f}x")
    run["heldout_box"] = {size: summary_row(values) for size, values in heldout.items()}
    history = earlier_runs(name, meta)
    record = {
        "name": name,
        "stage": "synth_student",
        "description": f"{student}: its RepViT encoder distilled from the shipped teacher's embeddings on procedural "
                       "substation scenes rendered on the fly, with the teacher's prompt encoder and mask decoder",
        "recipe": "configs/pretrain/synth_student.yaml",
        "teacher": teacher_source,
        "teacher_sha256": teacher_record.get("sha256"),
        "teacher_total_steps": teacher_record.get("total_steps"),
        "total_steps": meta["total_steps"],
        "next_scene_offset": meta["next_scene_offset"],
        "scene_seed": meta["scene_seed"],
        "img_size": meta.get("img_size"),
        "wall_seconds_total": sum(r.get("wall_seconds") or 0.0 for r in history) + (seconds or 0.0),
        "heldout_seed": HELDOUT_SEED,
        "heldout_scenes": args.scenes,
        "heldout": heldout,
        "runs": history + [run],
    }
    weights, record_path = ship_weights(args.student, record, name)
    print(f"\nwrote {weights} ({weights.stat().st_size / 2**20:.1f} MiB) and {record_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
