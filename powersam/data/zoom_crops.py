"""Zoom-in training crops: a dataset view with every image as it is plus one crop around each instance.

The crops are framed by :func:`powersam.inference.zoom.zoom_window`, the rule :class:`~powersam.inference.zoom.
ZoomPredictor` uses at inference, with the context (window side / box side) drawn once per instance from a seeded
generator. So the view is fixed: a crop is an image with its own id, and the stages that cache teacher embeddings
per image id (stage 1, stage 2) work on it unchanged, and a resumed run sees the same crops.

A crop keeps every instance of which at least ``min_visible`` of the area lies inside it (the one it was made for
always), with its mask cut to the crop and its box clipped to it.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..inference.zoom import check_context, covers_most_of, zoom_window

__all__ = ["ZoomCrops", "ZoomedStream", "check_context_range", "crop_around"]


def check_context_range(context: Any, name: str = "zoom_context") -> tuple[float, float]:
    """``[lo, hi]`` with 1 ≤ lo ≤ hi as a float pair, else ValueError naming ``name``."""
    if isinstance(context, (int, float)) and not isinstance(context, bool):
        context = (context, context)
    if not isinstance(context, Sequence) or isinstance(context, str) or len(context) != 2:
        raise ValueError(f"{name} must be [min, max] (window side / box side, both >= 1); got {context!r}")
    lo, hi = (check_context(c, name) for c in context)
    if lo > hi:
        raise ValueError(f"{name} must be [min, max] with min <= max; got {list(context)}")
    return lo, hi


class ZoomCrops:
    """See the module docstring.

    Args:
        dataset: a :class:`~powersam.data.coco.CocoInstances` (anything with ``image_info(i)["num_instances"]``,
            ``image_ids`` and ``__getitem__`` returning a ``Sample``).
        context: [min, max] window side / box side; each instance's crop draws one value uniformly.
        seed: fixes every drawn context.
        include_full: keep the uncropped images too (first, at their own indices and ids).
        min_visible: a neighbour enters a crop when at least this share of its area (mask, else box) is inside.
    """

    def __init__(self, dataset: Any, context: Any = (3.0, 5.0), seed: int = 0, include_full: bool = True,
                 min_visible: float = 0.5) -> None:
        if not 0.0 < float(min_visible) <= 1.0:
            raise ValueError(f"min_visible must lie in (0, 1]; got {min_visible!r}")
        self.dataset = dataset
        self.context = check_context_range(context)
        self.min_visible = float(min_visible)
        self.include_full = bool(include_full)
        self._items: list[tuple[int, int, float]] = []  # (image index, instance index or -1, context)
        rng = np.random.default_rng([int(seed), 0x200])
        if self.include_full:
            self._items += [(i, -1, 0.0) for i in range(len(dataset))]
        for i in range(len(dataset)):
            for k in range(int(dataset.image_info(i)["num_instances"])):
                self._items.append((i, k, float(rng.uniform(*self.context))))
        source_ids = list(dataset.image_ids)
        first_crop_id = max(source_ids, default=-1) + 1
        crops = len(self._items) - (len(dataset) if self.include_full else 0)
        self._ids = (source_ids if self.include_full else []) + list(range(first_crop_id, first_crop_id + crops))

    def __len__(self) -> int:
        return len(self._items)

    def __getattr__(self, name: str) -> Any:  # class_names, has_masks, num_classes, ... of the wrapped dataset
        if name in ("dataset", "_items", "_ids"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def image_ids(self) -> list[int]:
        return list(self._ids)

    def image_info(self, index: int) -> dict:
        image, instance, context = self._items[index]
        info = dict(self.dataset.image_info(image), image_id=self._ids[index])
        if instance >= 0:
            info.update(file_name=f"{Path(info['file_name']).stem}#zoom{instance}", zoom_instance=instance,
                        zoom_context=context)
        return info

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images and crops")
        image_index, instance, context = self._items[index]
        sample = self.dataset[image_index]
        if instance < 0:
            return sample
        if instance >= len(sample.labels):  # the source skipped a bad record: the whole image instead
            return replace(sample, image_id=self._ids[index])
        return crop_around(sample, instance, context, self._ids[index], self.min_visible)


def crop_around(sample: Any, instance: int, context: float, image_id: int, min_visible: float = 0.5) -> Any:
    """``sample`` cut to :func:`~powersam.inference.zoom.zoom_window` of its instance ``instance`` (module docstring):
    the neighbours with at least ``min_visible`` of their area inside, masks cut, boxes clipped."""
    height, width = sample.image.shape[:2]
    x0, y0, x1, y1 = zoom_window(sample.boxes[instance], (height, width), context)
    boxes = np.asarray(sample.boxes, dtype=np.float32).reshape(-1, 4)
    clipped = boxes - np.array([x0, y0, x0, y0], dtype=np.float32)
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, x1 - x0)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, y1 - y0)
    if sample.masks is not None:
        masks = sample.masks[:, y0:y1, x0:x1]
        full = sample.masks.reshape(len(boxes), -1).sum(axis=1)
        inside = masks.reshape(len(boxes), -1).sum(axis=1)
    else:
        masks = None
        full = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = inside >= min_visible * np.maximum(full, 1e-9)
    keep &= (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    keep[instance] = True
    ignore = np.asarray(sample.ignore_boxes, dtype=np.float32).reshape(-1, 4) - np.array([x0, y0, x0, y0],
                                                                                           dtype=np.float32)
    ignore[:, 0::2] = ignore[:, 0::2].clip(0, x1 - x0)
    ignore[:, 1::2] = ignore[:, 1::2].clip(0, y1 - y0)
    ignore = ignore[(ignore[:, 2] > ignore[:, 0]) & (ignore[:, 3] > ignore[:, 1])]
    return replace(
        sample,
        image=np.ascontiguousarray(sample.image[y0:y1, x0:x1]),
        image_id=image_id,
        file_name=f"{Path(sample.file_name).stem}#zoom{instance}{Path(sample.file_name).suffix}",
        boxes=clipped[keep],
        labels=np.asarray(sample.labels)[keep],
        masks=None if masks is None else np.ascontiguousarray(masks[keep]),
        annotation_ids=np.asarray(sample.annotation_ids)[keep],
        ignore_boxes=ignore,
        ignore_mask=None if sample.ignore_mask is None else np.ascontiguousarray(sample.ignore_mask[y0:y1, x0:x1]),
        orig_size=(y1 - y0, x1 - x0),
    )


class ZoomedStream:
    """A scene stream (:class:`~powersam.data.synth_stream.SceneStream`) where a seeded share ``prob`` of the
    indices yields a zoom-in crop around one of the scene's instances instead of the whole scene.

    Only instances that zoom-in prompting would crop for are drawn: those whose window covers less than
    ``full_frame_fraction`` of the image (the :class:`~powersam.inference.zoom.ZoomPredictor` rule; larger boxes
    are decoded on the full frame there, which the whole scenes already train). A scene without one stays whole.

    The choice (crop or not, which instance, which context) depends only on ``seed`` and the index, so a resumed
    run sees the same samples. The stream is never cached by image id, so a crop keeps its scene's id.

    Args:
        stream: anything indexable returning a ``Sample`` (``image_ids``, ``class_names``, … pass through).
        context: [min, max] window side / box side; each crop draws one value uniformly.
        prob: share of indices that become a crop (0: the stream unchanged; 1: crops only).
        seed: fixes every draw.
        min_visible: a neighbour enters a crop when at least this share of its area is inside.
        full_frame_fraction: see above (the predictor's default).
    """

    def __init__(self, stream: Any, context: Any = (3.0, 5.0), prob: float = 0.5, seed: int = 0,
                 min_visible: float = 0.5, full_frame_fraction: float = 0.5) -> None:
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"zoom_prob must lie in [0, 1]; got {prob!r}")
        if not 0.0 < float(min_visible) <= 1.0:
            raise ValueError(f"min_visible must lie in (0, 1]; got {min_visible!r}")
        self.stream = stream
        self.context = check_context_range(context)
        if not 0.0 < float(full_frame_fraction) <= 1.0:
            raise ValueError(f"full_frame_fraction must lie in (0, 1]; got {full_frame_fraction!r}")
        self.prob, self.seed, self.min_visible = float(prob), int(seed), float(min_visible)
        self.full_frame_fraction = float(full_frame_fraction)

    def __len__(self) -> int:
        return len(self.stream)

    def __getattr__(self, name: str) -> Any:
        if name == "stream":
            raise AttributeError(name)
        return getattr(self.stream, name)

    def __getitem__(self, index: int) -> Any:
        sample = self.stream[index]
        rng = np.random.default_rng([self.seed, 0x201, int(index)])
        if len(sample.labels) == 0 or rng.random() >= self.prob:
            return sample
        context = float(rng.uniform(*self.context))
        size = sample.image.shape[:2]
        zoomed = [k for k, box in enumerate(sample.boxes)
                  if not covers_most_of(zoom_window(box, size, context), size, self.full_frame_fraction)]
        if not zoomed:
            return sample
        instance = zoomed[int(rng.integers(len(zoomed)))]
        return crop_around(sample, instance, context, sample.image_id, self.min_visible)
