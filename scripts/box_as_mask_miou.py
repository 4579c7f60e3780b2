"""Reference for prompted-mIoU tables: the mIoU of returning each instance's GT box itself as its mask.

A model that follows its box prompt at all should beat this; the README quotes it next to the teachers'
numbers. Same split, IoU definition and size buckets as `powersam eval miou` (original resolution, true GT mask).

    python scripts/box_as_mask_miou.py DATASET [--split all|train|val]   # default: every image
"""
from __future__ import annotations

import argparse

from powersam.data.coco import CocoInstances
from powersam.eval.reference import box_as_mask_ious, box_as_mask_miou

__all__ = ["box_as_mask_ious", "main"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="COCO dataset folder or annotation JSON")
    parser.add_argument("--split", default="all", choices=("train", "val", "all"),
                        help="every image (default), or the train / val part of the training stages' hash split")
    args = parser.parse_args()
    dataset = CocoInstances(args.data, split=None if args.split == "all" else args.split)
    result = box_as_mask_miou(dataset)
    sizes = ", ".join(f"{name} {value:.1f} ({result['size_counts'][name]})" for name, value in result["per_size"].items()
                      if value is not None)
    print(f"box-as-mask mIoU ×100 over {result['num_instances']} instances in {len(dataset)} images ({args.split}): "
          f"{result['miou']:.1f}; per size: {sizes}")


if __name__ == "__main__":
    main()
