"""The best box-prompt mIoU any SAM-architecture model can reach at a given network input size.

SAM's decoder predicts masks at a quarter of the input resolution, and they are upsampled to the photo. This
script takes each GT mask itself through that bottleneck (resized into the S×S input, area-averaged to S/4, then
upsampled back to the photo and thresholded, as the predictor does with logits) and scores it against the GT:
a perfect model at input S cannot do better. Per object size, on held-out generated scenes (the shipped teacher's
yardstick) or on a COCO dataset.

    python scripts/resolution_ceiling.py                      # 100 held-out demo-like scenes, S = 256 384 512 1024
    python scripts/resolution_ceiling.py --data COCO_DIR --sizes 512,1024
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from powersam.eval.miou import SIZE_BUCKETS, size_bucket
from powersam.transforms import ResizeLongestSide


def ceiling_ious(masks: np.ndarray, img_size: int) -> np.ndarray:
    """IoU of each N×H×W bool GT mask with itself after SAM's low-res bottleneck at input ``img_size``."""
    height, width = masks.shape[1:]
    new_h, new_w = ResizeLongestSide.get_preprocess_shape(height, width, img_size)
    gt = torch.from_numpy(masks)
    resized = F.interpolate(gt[:, None].float(), (new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    padded = F.pad(resized, (0, img_size - new_w, 0, img_size - new_h))
    logits = (F.avg_pool2d(padded, 4) - 0.5) * 20.0  # the ideal low-res logit map: the GT's cell coverage
    upsampled = F.interpolate(logits, (img_size, img_size), mode="bilinear", align_corners=False)[..., :new_h, :new_w]
    pred = F.interpolate(upsampled, (height, width), mode="bilinear", align_corners=False)[:, 0] > 0
    inter = (pred & gt).flatten(1).sum(1).double()
    union = (pred | gt).flatten(1).sum(1).double().clamp_min(1)
    return (inter / union).numpy()


def resolution_ceiling(dataset: Any, sizes: Sequence[int]) -> dict[str, dict[str, float]]:
    """``{str(S): {"all": mIoU, "small"|"medium"|"large": mIoU}}`` (×100) of the bottlenecked GT masks."""
    per_size: dict[int, list[np.ndarray]] = {s: [] for s in sizes}
    areas = []
    for index in range(len(dataset)):
        sample = dataset[index]
        if sample.masks is None or not len(sample.masks):
            continue
        areas.append(sample.masks.reshape(len(sample.masks), -1).sum(1))
        for size in sizes:
            per_size[size].append(ceiling_ious(sample.masks, size))
    buckets = np.array([size_bucket(a) for a in np.concatenate(areas)])
    out = {}
    for size in sizes:
        ious = np.concatenate(per_size[size])
        out[str(size)] = {"all": float(100 * ious.mean()),
                          **{name: float(100 * ious[buckets == name].mean()) for name, _ in SIZE_BUCKETS
                             if (buckets == name).any()}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="COCO dataset (default: held-out generated scenes)")
    parser.add_argument("--scenes", type=int, default=100, help="held-out scenes when no --data (default 100)")
    parser.add_argument("--sizes", default="256,384,512,1024", help="network input sizes (default 256,384,512,1024)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    if args.data is None:
        from powersam.eval.scenes import heldout_scenes

        dataset = heldout_scenes(args.scenes)
    else:
        from powersam.data.coco import CocoInstances

        dataset = CocoInstances(args.data)
    result = resolution_ceiling(dataset, [int(s) for s in args.sizes.split(",")])
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("| input | all | small | medium | large |\n|---|---|---|---|---|")
    for size, values in result.items():
        print(f"| {size} | " + " | ".join(f"{values.get(k, float('nan')):.1f}" for k in ("all", "small", "medium", "large")) + " |")


if __name__ == "__main__":
    main()
