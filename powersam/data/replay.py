"""Scene replay: generated substation scenes mixed into an adaptation on a few real photos.

Adapting the shipped teacher to a handful of photos teaches it their labelling and look, and also makes it forget
what the photos do not show (measured on the insulator photos: glass discs seen edge-on, none of them in the 67
training photos, fell from 53 to 28 box mIoU while large insulators rose from 64 to 75). Replaying scenes of the
kind the teacher was pretrained on (Rebuffi et al.'s rehearsal, in its simplest form) keeps its general "segment
what the prompt points at" behaviour while it learns the photos.

The view is fixed: the wrapped dataset first, then ``count`` scenes of the pretraining stream ``seed`` starting at
``first_index`` (far beyond the scenes any shipped pretraining used), with ids after the dataset's own, so a
resumed run and the per-image-id caches of stages 1-2 see the same items.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from .synth_stream import SceneSpec, SceneStream

__all__ = ["SceneReplay", "REPLAY_FIRST_INDEX", "REPLAY_SEED"]

REPLAY_SEED = 1000  # the pretraining stream of configs/pretrain/synth_teacher.yaml
REPLAY_FIRST_INDEX = 10**9  # shipped runs used scenes below 10^6


class SceneReplay:
    """``dataset`` followed by ``count`` generated scenes (see the module docstring).

    Args:
        dataset: a :class:`~powersam.data.coco.CocoInstances` or a view of it (``image_ids``, ``__getitem__``).
        count: scenes appended (0: the dataset unchanged).
        spec: how the scenes look (the pretraining's: 256×320 ±15 %, 2-6 objects).
        zoom_context: with [min, max], half of the scenes become zoom-in crops around one of their instances
            (:class:`~powersam.data.zoom_crops.ZoomedStream`), as in the pretraining.
        seed, first_index: which scenes of which stream.
    """

    def __init__(self, dataset: Any, count: int, spec: SceneSpec = SceneSpec(size_jitter=0.15),
                 zoom_context: Optional[Any] = None, seed: int = REPLAY_SEED,
                 first_index: int = REPLAY_FIRST_INDEX) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"the replayed scene count must be a non-negative int; got {count!r}")
        self.dataset, self.count, self.first_index = dataset, count, int(first_index)
        scenes: Any = SceneStream(seed, spec)
        if zoom_context is not None:
            from .zoom_crops import ZoomedStream

            scenes = ZoomedStream(scenes, context=zoom_context, prob=0.5, seed=seed)
        self.scenes = scenes
        own = list(dataset.image_ids)
        first_id = max(own, default=0) + 1
        self._ids = own + list(range(first_id, first_id + count))

    def __len__(self) -> int:
        return len(self.dataset) + self.count

    def __getattr__(self, name: str) -> Any:  # class_names, has_masks, ... of the wrapped dataset
        if name in ("dataset", "scenes", "_ids"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def image_ids(self) -> list[int]:
        return list(self._ids)

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self.dataset)} images + {self.count} scenes")
        if index < len(self.dataset):
            return self.dataset[index]
        scene = self.scenes[self.first_index + index - len(self.dataset)]
        return replace(scene, image_id=self._ids[index])
