"""Procedural substation scenes rendered on the fly: an endless, deterministic source of training samples.

Scene ``i`` of stream ``seed`` is rendered from ``SeedSequence([seed, i])`` and depends on nothing else, so a
sampler that hands out global scene indices gives every training step fresh scenes that nobody wrote to disk,
the same ones again on a resumed run, and a disjoint set for another ``seed`` (a continued pretraining run or
a held-out evaluation set).

Scene sizes: each scene picks its (height, width) from ``sizes`` (or jitters a base size by ``size_jitter``),
so the equipment appears at the scales a network input sees at different image sizes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from .coco import Sample
from .synth_scene import SYNTH_CLASSES, check_object_counts, render_scene


@dataclass(frozen=True)
class SceneSpec:
    """How the scenes of a stream look (the demo's dataset is ``SceneSpec(256, 320, 2, 6)``)."""

    height: int = 256
    width: int = 320
    min_objects: int = 2
    max_objects: int = 6
    size_jitter: float = 0.0  # each side scaled by a factor drawn from [1 - j, 1 + j] (0: fixed size)

    def __post_init__(self) -> None:
        check_object_counts(self.min_objects, self.max_objects)
        if not 0.0 <= self.size_jitter < 1.0:
            raise ValueError(f"size_jitter must lie in [0, 1); got {self.size_jitter}")


def render_sample(seed: int, index: int, spec: SceneSpec) -> Sample:
    """Scene ``index`` of stream ``seed`` as a :class:`~powersam.data.coco.Sample` (image id = ``index`` + 1)."""
    if index < 0 or seed < 0:
        raise ValueError(f"seed and scene index must be non-negative; got seed={seed}, index={index}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    height, width = spec.height, spec.width
    if spec.size_jitter > 0:
        height = max(64, int(round(height * rng.uniform(1 - spec.size_jitter, 1 + spec.size_jitter))))
        width = max(64, int(round(width * rng.uniform(1 - spec.size_jitter, 1 + spec.size_jitter))))
    image, instances = render_scene(rng, height, width, spec.min_objects, spec.max_objects)
    masks = np.stack([mask for _, mask in instances]) if instances else np.zeros((0, height, width), bool)
    labels = np.array([SYNTH_CLASSES.index(name) for name, _ in instances], dtype=np.int64)
    boxes = np.zeros((len(instances), 4), np.float32)
    for row, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        boxes[row] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return Sample(image=image, image_id=int(index) + 1, file_name=f"scene_{seed}_{index:09d}.png", boxes=boxes,
                  labels=labels, masks=masks, annotation_ids=np.arange(1, len(instances) + 1, dtype=np.int64),
                  ignore_boxes=np.zeros((0, 4), np.float32), ignore_mask=None, orig_size=(height, width))


class SceneStream:
    """``stream[i]`` renders scene ``i`` (see the module docstring); a ``len`` of ``length`` scenes.

    Behaves like a :class:`~powersam.data.coco.CocoInstances` where the training stages need it
    (``image_ids``, ``has_masks``, ``class_names``), so :class:`~powersam.train.sam_data.SamTrainDataset`
    wraps it unchanged.
    """

    has_masks = True
    class_names = tuple(SYNTH_CLASSES)

    def __init__(self, seed: int, spec: SceneSpec = SceneSpec(), length: int = 2**40) -> None:
        if length < 1:
            raise ValueError(f"length must be positive; got {length}")
        self.seed, self.spec, self.length = int(seed), spec, int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(f"scene index {index} out of range for a stream of {self.length}")
        return render_sample(self.seed, int(index), self.spec)

    @property
    def image_ids(self) -> range:
        return range(1, self.length + 1)


class ConsecutiveSampler(torch.utils.data.Sampler[int]):
    """Epoch ``e`` yields scene indices ``offset + e·n … offset + (e+1)·n − 1`` (this rank's share of them).

    Every epoch sees ``n`` scenes never seen before; the order depends only on the epoch (the Trainer's
    resume contract). ``offset`` lets a continued run start past the scenes an earlier run used.
    """

    def __init__(self, n: int, offset: int = 0, rank: Optional[int] = None, world_size: Optional[int] = None) -> None:
        from ..train.distributed import get_dist_info

        if n < 1 or offset < 0:
            raise ValueError(f"need n >= 1 and offset >= 0; got n={n}, offset={offset}")
        info = get_dist_info(torch.device("cpu"))
        self.n, self.offset = int(n), int(offset)
        self.rank = info.rank if rank is None else rank
        self.world_size = info.world_size if world_size is None else world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        start = self.offset + self.epoch * self.n
        return iter(range(start + self.rank, start + self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def render_scenes(seed: int, count: int, spec: SceneSpec = SceneSpec()) -> list[Sample]:
    """The first ``count`` scenes of stream ``seed`` (a held-out evaluation set when ``seed`` is unused)."""
    return [render_sample(seed, index, spec) for index in range(int(count))]


__all__: Sequence[str] = ("SceneSpec", "SceneStream", "ConsecutiveSampler", "render_sample", "render_scenes")
