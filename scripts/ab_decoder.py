"""The mask decoder's inference shortcuts against SAM's plain op sequence, round-robin in one process.

    python scripts/ab_decoder.py [--sizes 512,1024] [--threads 2] [--rounds 9]

``segment_boxes`` (prompt encoder + mask decoder, single-mask output) of PowerSAM-S with seeded random weights on one
image embedding, 1 and 5 boxes. "plain" runs inside ``reference_ops()``: the op sequence the decoder runs under
autograd (SAM's); "shortcuts" is what ``no_grad`` inference runs (shared-key attention once, few-key attention
as dense products, upscaling in slices). Prints medians and the largest output difference between the two.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from powersam.models.sam.transformer import reference_ops
from powersam.models.zoo import build_model

BOXES = torch.tensor([[0.1, 0.1, 0.3, 0.4], [0.5, 0.2, 0.7, 0.6], [0.2, 0.5, 0.4, 0.9], [0.6, 0.6, 0.9, 0.8],
                      [0.3, 0.3, 0.6, 0.6]])


def timed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for size in (int(s) for s in args.sizes.split(",")):
        torch.manual_seed(0)
        model = build_model("powersam_s", img_size=size).eval()
        embedding = torch.randn(1, 256, size // 16, size // 16)
        boxes = BOXES * size
        times: dict[tuple[str, int], list[float]] = {}
        with torch.no_grad():
            fast = model.segment_boxes(embedding, boxes)
            with reference_ops():
                plain = model.segment_boxes(embedding, boxes)
            diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(fast, plain))
            for _ in range(args.rounds):  # round-robin: drift hits both alike
                for count in (1, 5):
                    times.setdefault(("shortcuts", count), []).append(
                        timed_ms(lambda: model.segment_boxes(embedding, boxes[:count])))
                    with reference_ops():
                        times.setdefault(("plain", count), []).append(
                            timed_ms(lambda: model.segment_boxes(embedding, boxes[:count])))
        median = {key: float(np.median(values)) for key, values in times.items()}
        print(f"S={size}, {args.threads} threads, medians of {args.rounds} (largest output difference {diff:.1e}):")
        for name in ("plain", "shortcuts"):
            one, five = median[(name, 1)], median[(name, 5)]
            print(f"  {name:9s}  1 box {one:6.1f} ms  5 boxes {five:6.1f} ms  per extra box {(five - one) / 4:5.1f} ms")


if __name__ == "__main__":
    main()
