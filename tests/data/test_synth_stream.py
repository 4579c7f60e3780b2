"""Scenes rendered on the fly for teacher pretraining: deterministic per (seed, index), fresh every epoch."""
from __future__ import annotations

import numpy as np
import pytest

from powersam.data.synth_stream import ConsecutiveSampler, SceneSpec, SceneStream, render_sample
from powersam.train.sam_data import SamTrainDataset

SMALL = SceneSpec(height=64, width=80, min_objects=1, max_objects=3)


def test_a_scene_depends_only_on_seed_and_index():
    first, again = render_sample(5, 17, SMALL), render_sample(5, 17, SMALL)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.masks, again.masks)
    assert not np.array_equal(first.image, render_sample(6, 17, SMALL).image)
    assert not np.array_equal(first.image, render_sample(5, 18, SMALL).image)


def test_samples_are_consistent_instances():
    sample = SceneStream(3, SMALL)[2]
    assert sample.image.shape == (64, 80, 3) and sample.image.dtype == np.uint8
    assert 1 <= len(sample.labels) <= 3 and sample.masks.shape == (len(sample.labels), 64, 80)
    for box, mask in zip(sample.boxes, sample.masks):
        ys, xs = np.nonzero(mask)
        assert tuple(box) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_size_jitter_changes_the_scene_size_within_bounds():
    spec = SceneSpec(height=64, width=80, min_objects=1, max_objects=2, size_jitter=0.2)
    sizes = {render_sample(0, i, spec).orig_size for i in range(6)}
    assert len(sizes) > 1
    assert all(51 <= h <= 77 and 64 <= w <= 96 for h, w in sizes)


def test_stream_feeds_the_sam_training_dataset():
    item = SamTrainDataset(SceneStream(0, SMALL, length=4), img_size=64)[1]
    assert item["image"].shape == (3, 64, 64) and item["gt_lowres"].shape[1:] == (16, 16)
    assert len(item["boxes"]) == len(item["gt_lowres"]) >= 1


def test_sampler_gives_every_epoch_new_consecutive_scenes_and_shards_them():
    sampler = ConsecutiveSampler(6, offset=100, rank=0, world_size=1)
    sampler.set_epoch(0)
    assert list(sampler) == [100, 101, 102, 103, 104, 105]
    sampler.set_epoch(2)
    assert list(sampler) == [112, 113, 114, 115, 116, 117] and len(sampler) == 6
    shards = [ConsecutiveSampler(6, rank=r, world_size=2) for r in (0, 1)]
    for shard in shards:
        shard.set_epoch(1)
    assert sorted(list(shards[0]) + list(shards[1])) == list(range(6, 12))


@pytest.mark.parametrize("kwargs", [dict(min_objects=3, max_objects=2), dict(size_jitter=1.0), dict(size_jitter=-0.1)])
def test_bad_scene_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        SceneSpec(**kwargs)


def test_out_of_range_index_is_refused():
    with pytest.raises(IndexError):
        SceneStream(0, SMALL, length=3)[3]
    with pytest.raises(ValueError):
        ConsecutiveSampler(0)
