"""Reference for prompted-mIoU tables: the mIoU of returning each instance's GT box itself as its mask.

A model that follows its box prompt at all should beat this; the README quotes it next to the from-scratch
teachers' numbers. Same split and IoU definition as `powersam eval miou` (original resolution, true GT mask).

    python scripts/box_as_mask_miou.py DATASET [--split val]
"""
from __future__ import annotations

import argparse

import numpy as np

from powersam.data.coco import CocoInstances


def box_as_mask_ious(dataset: CocoInstances) -> np.ndarray:
    """IoU of every instance's GT mask with the filled rectangle of its GT box (rounded to whole pixels)."""
    ious = []
    for index in range(len(dataset)):
        sample = dataset[index]
        for box, mask in zip(sample.boxes, sample.masks):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            filled = np.zeros(mask.shape, dtype=bool)
            filled[y0:y1, x0:x1] = True
            union = np.logical_or(filled, mask).sum()
            ious.append(np.logical_and(filled, mask).sum() / union if union else 0.0)
    return np.asarray(ious, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="COCO dataset folder or annotation JSON")
    parser.add_argument("--split", default="val", choices=("train", "val", "all"))
    args = parser.parse_args()
    dataset = CocoInstances(args.data, split=None if args.split == "all" else args.split)
    ious = box_as_mask_ious(dataset)
    print(f"box-as-mask mIoU ×100 over {len(ious)} instances in {len(dataset)} images: {100 * ious.mean():.1f}")


if __name__ == "__main__":
    main()
