"""Datasets, checks, augmentations and prompt samplers for training and evaluation on COCO instance data."""
from .augment import (
    DetectionAugment,
    DetectionSample,
    affine_matrix,
    apply_affine,
    horizontal_flip,
    hsv_jitter,
    letterbox,
    masks_to_boxes,
    mosaic,
    random_affine,
)
from .check import CheckReport, Issue, check_dataset, format_report
from .coco import CocoInstances, Sample, split_image_ids
from .prompts import (
    append_points,
    as_numpy_rng,
    box_centers,
    jitter_boxes,
    sample_points_in_masks,
    sample_refinement_clicks,
    subsample_instances,
)


__all__ = [
    "CheckReport",
    "CocoInstances",
    "DetectionAugment",
    "DetectionSample",
    "Issue",
    "Sample",
    "affine_matrix",
    "append_points",
    "apply_affine",
    "as_numpy_rng",
    "box_centers",
    "check_dataset",
    "format_report",
    "horizontal_flip",
    "hsv_jitter",
    "jitter_boxes",
    "letterbox",
    "masks_to_boxes",
    "mosaic",
    "random_affine",
    "sample_points_in_masks",
    "sample_refinement_clicks",
    "split_image_ids",
    "subsample_instances",
    "SYNTH_CLASSES",
    "generate_dataset",
]


def __getattr__(name: str):
    # Imported on first use so that `python -m powersam.data.synth` does not import the module twice.
    if name in ("SYNTH_CLASSES", "generate_dataset"):
        from . import synth

        return getattr(synth, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
