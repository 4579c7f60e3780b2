"""Add a pretrained box-prompt generator to a shipped student: evaluate the integrated model (detect, then segment
each box, no ground-truth prompts) on held-out generated scenes, and rewrite ``powersam/weights/synth_<student>``
as the whole integrated model (float16) with a ``detector`` section in its record (command, steps, wall time,
machine, git commit, held-out box and mask AP).

    python scripts/ship_detector.py runs/pretrain/detector/final.pt --command "powersam train synth-detector ..."

The head comes from `powersam train synth-detector --config configs/pretrain/synth_detector.yaml`, trained on the
frozen backbone of the shipped student it is added to (checked tensor by tensor, as float16: the head may have been
trained on the float32 run output the student was shipped from, never on another backbone).
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from powersam.checkpoint import read_powersam_checkpoint
from powersam.eval.detection import evaluate_detection
from powersam.eval.scenes import HELDOUT_SEED, heldout_scenes
from powersam.models.zoo import build_model
from powersam.weights import is_shipped_name, ship_weights, shipped_teacher_record
from powersam.weights.provenance import git_commit, machine, training_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("detector", type=Path, help="final.pt written by `powersam train synth-detector`")
    parser.add_argument("--command", required=True, help="the exact training command (recorded)")
    parser.add_argument("--scenes", type=int, default=100, help="held-out scenes to evaluate on (default 100)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the evaluation")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    payload = read_powersam_checkpoint(args.detector)
    meta = payload.get("meta") or {}
    backbone = f"synth_{payload.get('model_name')}"
    if meta.get("stage") != "synth_detector" or not is_shipped_name(backbone):
        print(f"{args.detector}: not a `powersam train synth-detector` head of a model with a shipped student (stage "
              f"{meta.get('stage')!r}, model {payload.get('model_name')!r})", file=sys.stderr)
        return 1
    shipped = read_powersam_checkpoint(backbone)["state_dict"]
    changed = [k for k, v in payload["state_dict"].items()
               if not k.startswith("box_generator.") and not torch.equal(v.to(torch.float16), shipped[k])]
    if changed:
        print(f"{args.detector}: its backbone differs from the shipped {backbone} ({len(changed)} tensors, e.g. "
              f"{changed[0]}); train the head on the shipped student", file=sys.stderr)
        return 1

    img_size = int(meta.get("img_size") or 256)
    model = build_model(checkpoint=args.detector, img_size=img_size)
    scenes = heldout_scenes(args.scenes)
    result = evaluate_detection(model, scenes, progress=False)
    detection = {key: result[key] for key in ("bbox", "segm") if key in result}
    print(f"held-out scenes (seed {HELDOUT_SEED}, {args.scenes}) at img_size {img_size}, detect + segment:")
    for key, values in detection.items():
        print(f"  {key}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in values.items() if v is not None))

    metrics = args.detector.parent / "metrics.jsonl"
    record = dict(shipped_teacher_record(backbone))
    for key in ("model", "file", "dtype", "bytes", "sha256"):  # recomputed by ship_weights
        record.pop(key, None)
    # A run that continued the shipped head keeps the earlier runs it builds on (each with its own held-out numbers).
    earlier = dict(record.get("detector") or {})
    history = earlier.pop("history", []) + [earlier] if meta["total_steps"] > meta["steps"] and earlier else []
    record["detector"] = {
        "recipe": "configs/pretrain/synth_detector.yaml", "command": args.command, "steps": meta["steps"],
        "total_steps": meta["total_steps"], "scene_seed": meta["scene_seed"], "scene_offset": meta["scene_offset"],
        "next_scene_offset": meta["next_scene_offset"], "img_size": img_size, "class_names": payload["class_names"],
        "wall_seconds": training_seconds(metrics) if metrics.is_file() else None, "machine": machine(),
        "git_commit": git_commit(), "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "heldout_seed": HELDOUT_SEED, "heldout_scenes": args.scenes, "heldout": detection,
        "trivial": "no detection at all scores AP 0", "history": history}
    weights, record_path = ship_weights(args.detector, record, backbone)
    print(f"\nwrote {weights} ({weights.stat().st_size / 2**20:.1f} MiB) and {record_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
