"""PyTorch mask decoder: time per extra box prompt against this machine's matmul roofline, in one run.

    python scripts/decoder_per_box.py [--sizes 512,1024] [--threads 2] [--repeats 9] [--plain]

Times ``segment_boxes`` (prompt encoder + mask decoder, single-mask output, what ``predict`` runs per detection) of
PowerSAM-S with seeded random weights on one image embedding for 1 and 5 boxes, round-robin with a float32 matmul
probe; per extra box = (t5 - t1) / 4. The roofline is the decoder's multiply-accumulates per box (the profiler's FLOP
estimate of its matrix products, see ``true_gmacs``) at the probe's median rate. ``--plain`` also times SAM's op
sequence (``reference_ops``: none of the decoder's inference shortcuts) in the same rounds, and prints the largest
output difference between the two. Like the ``powersam`` command it keeps freed memory in the process
(``powersam.utils.memory``); ``POWERSAM_MALLOC=system`` runs it with the system's malloc settings.
"""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import numpy as np
import torch

from powersam.models.sam.transformer import reference_ops
from powersam.models.zoo import build_model


def true_gmacs(model, embedding: torch.Tensor, boxes: torch.Tensor) -> float:
    """Multiply-accumulates of one segment_boxes call: the profiler's FLOP estimate of its matrix products and
    convolutions (2 FLOPs = 1 MAC; attention's fused kernel and element-wise work are not counted, so the roofline
    is a lower bound on the time), on SAM's op sequence (``reference_ops``): the model's work, not what the timed
    inference shortcuts skip or fold."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), reference_ops(), profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        model.segment_boxes(embedding, boxes)
    return sum(event.flops for event in prof.key_averages()) / 2e9


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--plain", action="store_true", help="also time SAM's op sequence (no inference shortcuts)")
    args = parser.parse_args()
    from powersam.utils.memory import retain_freed_memory_unless_disabled

    kept = retain_freed_memory_unless_disabled()
    print(f"malloc: {'freed memory kept in the process' if kept else 'system settings'}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    probe = median_ms(lambda: a @ b, 20)
    gflops = 2 * 1024**3 / (probe / 1e3) / 1e9
    print(f"matmul probe (1024^3, {args.threads} threads): {gflops:.0f} GFLOP/s")
    for size in (int(s) for s in args.sizes.split(",")):
        model = build_model("powersam_s", img_size=size).eval()
        side = size // 16
        embedding = torch.randn(1, 256, side, side)
        boxes = torch.tensor([[0.1, 0.1, 0.3, 0.4], [0.5, 0.2, 0.7, 0.6], [0.2, 0.5, 0.4, 0.9],
                              [0.6, 0.6, 0.9, 0.8], [0.3, 0.3, 0.6, 0.6]]) * size
        per_box_gmacs = true_gmacs(model, embedding, boxes[:1])
        five_gmacs = true_gmacs(model, embedding, boxes)
        variants = {"": nullcontext, " (SAM's op sequence)": reference_ops} if args.plain else {"": nullcontext}
        times: dict[tuple[str, int], list[float]] = {}
        with torch.no_grad():
            for _ in range(2):
                model.segment_boxes(embedding, boxes)
            if args.plain:
                fast = model.segment_boxes(embedding, boxes)
                with reference_ops():
                    plain = model.segment_boxes(embedding, boxes)
                diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(fast, plain))
                print(f"S={size}: largest output difference, shortcuts vs SAM's op sequence: {diff:.1e}")
            for _ in range(args.repeats):  # round-robin: drift hits every variant alike
                for label, mode in variants.items():
                    with mode():
                        for count in (1, 5):
                            times.setdefault((label, count), []).append(
                                median_ms(lambda: model.segment_boxes(embedding, boxes[:count]), 1))
        extra_gmacs = (five_gmacs - per_box_gmacs) / 4
        roof = 2e3 * extra_gmacs / gflops
        for label in variants:
            t1, t5 = float(np.median(times[(label, 1)])), float(np.median(times[(label, 5)]))
            extra = (t5 - t1) / 4
            print(f"S={size}{label}: 1 box {t1:.1f} ms ({per_box_gmacs:.2f} GMACs), 5 boxes {t5:.1f} ms "
                  f"({five_gmacs:.2f} GMACs); per extra box {extra:.1f} ms for {extra_gmacs:.2f} GMACs = "
                  f"{extra / roof:.2f}x its roofline ({roof:.1f} ms)")

if __name__ == "__main__":
    main()
