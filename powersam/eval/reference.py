"""The trivial answer every prompted-mIoU number is compared with: each instance's GT box itself as its mask.

A model that follows its box prompt at all should beat it; reports print it per object size next to the
model's numbers. Same IoU definition and size buckets as :func:`powersam.eval.miou.evaluate_miou` (original
resolution, true GT mask, COCO areas from the mask).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .miou import SIZE_BUCKETS, size_bucket


def box_as_mask_ious(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """(IoU of every instance's GT mask with the filled rectangle of its GT box (whole pixels), mask areas)."""
    ious, areas = [], []
    for index in range(len(dataset)):
        sample = dataset[index]
        if sample.masks is None:
            raise ValueError("box-as-mask needs instance masks; this dataset is boxes-only")
        for box, mask in zip(sample.boxes, sample.masks):
            x0, y0, x1, y1 = (int(round(float(v))) for v in box)
            filled = np.zeros(mask.shape, dtype=bool)
            filled[max(y0, 0):y1, max(x0, 0):x1] = True
            union = np.logical_or(filled, mask).sum()
            ious.append(np.logical_and(filled, mask).sum() / union if union else 0.0)
            areas.append(float(mask.sum()))
    return np.asarray(ious, dtype=np.float64), np.asarray(areas, dtype=np.float64)


def box_as_mask_miou(dataset: Any) -> dict[str, Any]:
    """``{"miou", "per_size": {small|medium|large: mIoU}, "size_counts", "num_instances"}``, mIoU ×100."""
    ious, areas = box_as_mask_ious(dataset)
    buckets = np.array([size_bucket(a) for a in areas]) if len(areas) else np.zeros(0, str)

    def mean(values: np.ndarray) -> Any:
        return float(100 * values.mean()) if len(values) else None

    return {
        "miou": mean(ious),
        "per_size": {name: mean(ious[buckets == name]) for name, _ in SIZE_BUCKETS},
        "size_counts": {name: int((buckets == name).sum()) for name, _ in SIZE_BUCKETS},
        "num_instances": int(len(ious)),
    }
