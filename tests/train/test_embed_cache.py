"""Teacher-embedding cache: round trip, crash + resume fills only the missing rows, mismatch errors."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from powersam.data.coco import CocoInstances
from powersam.data.synth import generate_dataset
from powersam.models.zoo import build_model
from powersam.train.embed_cache import EmbeddingCache, build_embedding_cache, encoder_fingerprint
from powersam.train.sam_data import SamTrainDataset

IMG = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> CocoInstances:
    root = generate_dataset(tmp_path_factory.mktemp("synth") / "ds", 5, seed=3, image_size=(48, 64))
    return CocoInstances(root, load_masks=False)


def make_teacher(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("sam_vit_t", img_size=IMG, with_detector=False)


class CountingEncoder(torch.nn.Module):
    """Wraps an image encoder, counts the images it encodes and can fail on a chosen call."""

    def __init__(self, encoder: torch.nn.Module, fail_on_call: int | None = None) -> None:
        super().__init__()
        self.inner, self.fail_on_call = encoder, fail_on_call
        self.img_size = encoder.img_size
        self.calls = self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise RuntimeError("simulated crash")
        self.images += x.shape[0]
        return self.inner(x)


def expected_embeddings(teacher: torch.nn.Module, dataset) -> dict[int, torch.Tensor]:
    images = SamTrainDataset(dataset, IMG, with_instances=False)
    with torch.no_grad():
        return {int(images[i]["image_id"]): teacher.image_encoder(images[i]["image"][None])[0] for i in range(len(images))}


def test_round_trip_matches_the_teacher(dataset, tmp_path):
    teacher = make_teacher()
    cache = build_embedding_cache(teacher, dataset, tmp_path / "cache", batch_size=2, progress=False)
    assert cache.is_complete and len(cache) == len(dataset)
    assert (tmp_path / "cache" / "embeddings.f16").stat().st_size == len(dataset) * 256 * 4 * 4 * 2
    reopened = EmbeddingCache.open(tmp_path / "cache", teacher_fingerprint=encoder_fingerprint(teacher), img_size=IMG)
    for image_id, embedding in expected_embeddings(teacher, dataset).items():
        stored = reopened[image_id]
        assert stored.dtype == torch.float16 and stored.shape == (256, 4, 4)
        assert torch.allclose(stored.float(), embedding, atol=2e-3, rtol=2e-3)
    assert reopened.teacher["model_name"] == "sam_vit_t"
    assert 12345 not in reopened
    with pytest.raises(KeyError):
        reopened[12345]
    # Worker processes get the cache without its data: pickling must not copy the memory map.
    reopened[dataset.image_ids[0]]
    assert len(pickle.dumps(reopened)) < 4096


def test_float32_cache_is_exact(dataset, tmp_path):
    teacher = make_teacher()
    cache = build_embedding_cache(teacher, dataset, tmp_path / "c32", batch_size=5, dtype=torch.float32, progress=False)
    assert (tmp_path / "c32" / "embeddings.f32").is_file()
    for image_id, embedding in expected_embeddings(teacher, dataset).items():
        assert torch.allclose(cache[image_id], embedding, atol=1e-5)


def test_crash_then_resume_fills_only_missing_rows(dataset, tmp_path):
    teacher = make_teacher()
    original = teacher.image_encoder
    teacher.image_encoder = CountingEncoder(original, fail_on_call=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_embedding_cache(teacher, dataset, tmp_path / "cache", batch_size=2, progress=False)
    partial = EmbeddingCache.open(tmp_path / "cache")
    assert partial.num_completed == 2 and not partial.is_complete  # the first batch survived the crash
    assert sorted(partial.missing_image_ids()) == sorted(dataset.image_ids[2:])
    with pytest.raises(KeyError, match="no embedding yet"):
        partial[dataset.image_ids[4]]

    # Mark a finished row with a sentinel: a resume must not recompute it.
    data = np.memmap(tmp_path / "cache" / "embeddings.f16", dtype=np.float16, mode="r+", shape=(5, 256, 4, 4))
    data[0] = 7.0
    data.flush()
    del data
    counter = CountingEncoder(original)
    teacher.image_encoder = counter
    cache = build_embedding_cache(teacher, dataset, tmp_path / "cache", batch_size=2, progress=False)
    assert counter.images == 3  # only the 3 missing images were encoded
    assert cache.is_complete
    assert torch.all(cache[dataset.image_ids[0]] == 7.0)
    expected = expected_embeddings(make_teacher(), dataset)
    for image_id in dataset.image_ids[1:]:
        assert torch.allclose(cache[image_id].float(), expected[image_id], atol=2e-3, rtol=2e-3)

    # A complete cache is not re-encoded; resume=False starts over.
    counter.images = 0
    build_embedding_cache(teacher, dataset, tmp_path / "cache", batch_size=2, progress=False)
    assert counter.images == 0
    cache = build_embedding_cache(teacher, dataset, tmp_path / "cache", batch_size=2, resume=False, progress=False)
    assert counter.images == 5 and not torch.all(cache[dataset.image_ids[0]] == 7.0)


def test_wrong_teacher_size_or_images_raise(dataset, tmp_path):
    teacher = make_teacher(0)
    build_embedding_cache(teacher, dataset, tmp_path / "cache", batch_size=5, progress=False)
    other = make_teacher(1)
    with pytest.raises(ValueError, match="made with teacher 'sam_vit_t'"):
        EmbeddingCache.open(tmp_path / "cache", teacher_fingerprint=encoder_fingerprint(other))
    with pytest.raises(ValueError, match="made with teacher"):
        build_embedding_cache(other, dataset, tmp_path / "cache", batch_size=5, progress=False)
    with pytest.raises(ValueError, match="img_size 64, but img_size 32"):
        EmbeddingCache.open(tmp_path / "cache", img_size=32)
    with pytest.raises(ValueError, match="differs from the teacher"):
        build_embedding_cache(teacher, dataset, tmp_path / "c2", img_size=32, progress=False)
    subset = CocoInstances(dataset.annotation_file, split="train", val_fraction=0.4)
    with pytest.raises(ValueError, match="other images"):
        build_embedding_cache(teacher, subset, tmp_path / "cache", batch_size=5, progress=False)
    # Only the encoder matters: a teacher with another decoder shares the cache.
    tuned = make_teacher(0)
    torch.nn.init.zeros_(tuned.mask_decoder.iou_token.weight)
    assert encoder_fingerprint(tuned) == encoder_fingerprint(teacher)
    with pytest.raises(FileNotFoundError, match="no embedding cache"):
        EmbeddingCache.open(tmp_path / "nothing")


def test_a_stages_own_stale_cache_is_rebuilt_a_named_one_is_not(dataset, tmp_path, caplog):
    from powersam.train.embed_cache import ensure_embedding_cache

    build_embedding_cache(make_teacher(0), dataset, tmp_path / "cache", batch_size=5, progress=False)
    new_teacher = make_teacher(1)  # e.g. a demo re-run after the shipped teacher changed
    with pytest.raises(ValueError, match="made with teacher"):  # a folder the user named: never deleted
        ensure_embedding_cache(new_teacher, dataset, tmp_path / "cache", IMG, 5, 0)
    cache = ensure_embedding_cache(new_teacher, dataset, tmp_path / "cache", IMG, 5, 0, rebuild_stale=True)
    assert "rebuilt" in caplog.text
    assert cache.index["teacher"]["fingerprint"] == encoder_fingerprint(new_teacher)
    for image_id, embedding in expected_embeddings(new_teacher, dataset).items():
        assert torch.allclose(cache[image_id].float(), embedding, atol=2e-3, rtol=2e-3)
