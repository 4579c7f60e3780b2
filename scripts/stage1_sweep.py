"""Does stage 1 help a pre-distilled student? Held-out box mIoU of the student as it is, then after stage 1 of each
given length and learning rate on a pipeline run's data (its teacher-embedding cache is reused).

    python scripts/stage1_sweep.py synth_powersam_s 4:3e-4 8:3e-4 8:1e-3 --run runs/demo

Each EPOCHS:LR trains stage 1 from the same start (the run's stage-1 settings otherwise: batch 8, no warm-up, cosine
to 1e-5) into /tmp/stage1_sweep/, then scores box prompts on the run's held-out split, per object size.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("init", help="the pre-distilled student (a checkpoint path or a shipped name)")
    parser.add_argument("runs", nargs="+", help="EPOCHS:LR of each stage-1 run")
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished pipeline run (its data and teacher)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/stage1_sweep"))
    args = parser.parse_args()

    from powersam.data.coco import CocoInstances
    from powersam.eval.miou import evaluate_miou
    from powersam.models.zoo import build_model
    from powersam.train.distill_encoder import EncoderDistillConfig, distill_encoder

    data, teacher = args.run / "data", args.run / "teacher" / "teacher.pt"
    val = CocoInstances(data, split="val", val_fraction=0.2, seed=0)

    def score(model) -> str:
        result = evaluate_miou(model, val, prompts=("box",), refine_iters=0, progress=False)
        sizes = ", ".join(f"{k} {v['box']:.1f}" for k, v in result["per_size"].items())
        return f"box mIoU {result['miou']['box']:.2f} ({sizes})"

    size = int(build_model(checkpoint=teacher).img_size)
    print("as it is:", score(build_model("powersam_s", checkpoint=args.init, img_size=size, with_detector=False)))
    for spec in args.runs:
        epochs, lr = spec.split(":")
        cfg = EncoderDistillConfig(data=data, split="train", img_size=size, epochs=int(epochs), lr=float(lr),
                                   min_lr=1e-5, warmup_lr=1e-5, warmup_epochs=0, batch_size=8, scale_lr=False,
                                   amp=True, num_workers=0, teacher_checkpoint=teacher, init_checkpoint=args.init,
                                   output_dir=args.out / f"e{epochs}_lr{lr}", progress=False, plot=False)
        start = time.time()
        path = distill_encoder(cfg)
        print(f"stage 1, {epochs} epochs at lr {lr} ({time.time() - start:.0f} s):",
              score(build_model(checkpoint=path, with_detector=False)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
