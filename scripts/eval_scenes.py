"""Box/point-prompt mIoU of a teacher on held-out generated scenes, per object size, with the box-as-mask row.

Takes a teacher checkpoint (PowerSAM format, an official file with --model, or the shipped name ``synth``) or the
``last.pt`` of a running ``powersam train synth-teacher`` (its learning curve while it trains).

    python scripts/eval_scenes.py synth --scenes 100 --img-sizes 256,512
    python scripts/eval_scenes.py runs/pretrain/teacher/last.pt --scenes 40 --json curve.jsonl   # appends a line
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from powersam.eval.scenes import HELDOUT_SEED, evaluate_on_scenes, format_scene_table
from powersam.models.zoo import build_model
from powersam.train.teacher import load_teacher


def load(checkpoint: str, img_size: int, model: str | None) -> tuple[torch.nn.Module, int | None]:
    """(model, training step or None) from a teacher checkpoint or a training state's last.pt."""
    path = Path(checkpoint)
    if path.name.endswith(".pt") and path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") == "powersam.training_state":
            weights = {k[len("sam."):]: v for k, v in state["model"].items() if k.startswith("sam.")}
            sam = build_model(model or "edgesam", img_size=img_size, with_detector=False)
            sam.load_state_dict(weights)
            return sam.eval(), int(state["global_step"])
    return load_teacher(model, checkpoint, img_size=img_size), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="teacher checkpoint, 'synth', or a synth-teacher run's last.pt")
    parser.add_argument("--model", default=None, help="zoo name when the file does not record it (default edgesam "
                                                       "for a training state)")
    parser.add_argument("--scenes", type=int, default=100, help="held-out scenes (default 100)")
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED, help=f"scene stream (default {HELDOUT_SEED})")
    parser.add_argument("--img-sizes", default="256", help="network inputs, comma-separated (default 256)")
    parser.add_argument("--json", type=Path, default=None, help="append one JSON line per input size")
    parser.add_argument("--prompts", default="box,point", help="prompt kinds (default box,point)")
    parser.add_argument("--refine", type=int, default=2, help="refinement clicks (default 2)")
    parser.add_argument("--zoom", type=float, default=None, help="decode zoomed in: crop of this many box sides")
    args = parser.parse_args()
    for size in (int(s) for s in args.img_sizes.split(",")):
        model, step = load(args.checkpoint, size, args.model)
        result = evaluate_on_scenes(model, count=args.scenes, seed=args.seed, prompts=args.prompts.split(","),
                                    refine_iters=args.refine, zoom=args.zoom)
        zoomed = "" if args.zoom is None else f", zoom-in x{args.zoom:g}"
        print(f"\n{args.checkpoint}" + (f" (step {step})" if step is not None else "") + f" at img_size {size}{zoomed}, "
              f"{args.scenes} scenes of seed {args.seed}:")
        print(format_scene_table(result, "model"))
        if args.json is not None:
            record = {"checkpoint": args.checkpoint, "step": step, "img_size": size, "zoom": args.zoom,
                      "scenes": args.scenes,
                      "seed": args.seed, "miou": result["miou"], "per_size": result["per_size"],
                      "size_counts": result["size_counts"], "box_as_mask": result["box_as_mask"]}
            with open(args.json, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
