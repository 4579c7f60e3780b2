"""``powersam train synth-detector``: the box-prompt generator pretrained on streamed scenes, and stage 3 starting
from a pretrained head (``head_checkpoint``)."""
from __future__ import annotations

import pytest
import torch

from powersam import checkpoint as ckpt_io
from powersam.data.synth_scene import SYNTH_CLASSES
from powersam.models.zoo import build_model
from powersam.train.bbpg import load_box_generator
from powersam.train.metrics import read_metrics
from powersam.train.pretrain_detector import SynthDetectorConfig, head_meta, pretrain_detector

SIZE = 64


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A stand-in pre-distilled student: a random powersam_s SAM part (no box generator)."""
    torch.manual_seed(11)
    model = build_model("powersam_s", img_size=SIZE, class_names=list(SYNTH_CLASSES))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("box_generator.")}
    path = tmp_path_factory.mktemp("backbone") / "student.pt"
    ckpt_io.save_checkpoint(path, state, "powersam_s", model_config=model.model_config)
    return path


def tiny(backbone, out, **overrides) -> SynthDetectorConfig:
    settings = dict(backbone_checkpoint=backbone, img_size=SIZE, scene_height=64, scene_width=80, max_objects=3,
                    size_jitter=0.0, epochs=2, iters_per_epoch=2, batch_size=2, warmup_epochs=1, no_aug_epochs=1,
                    val_scenes=2, eval_every=0, num_workers=0, progress=False, plot=False, log_every=1,
                    output_dir=out)
    settings.update(overrides)
    return SynthDetectorConfig(**settings)


@pytest.fixture(scope="module")
def pretrained(backbone, tmp_path_factory):
    return pretrain_detector(tiny(backbone, tmp_path_factory.mktemp("detector")))


def test_pretraining_writes_an_integrated_model_that_records_its_scenes(pretrained, backbone):
    payload = ckpt_io.read_powersam_checkpoint(pretrained)
    meta = payload["meta"]
    assert payload["model_name"] == "powersam_s" and payload["class_names"] == list(SYNTH_CLASSES)
    assert meta["stage"] == "synth_detector" and meta["steps"] == meta["total_steps"] == 4
    assert meta["next_scene_offset"] == 8 and set(meta["val_bbox"]) >= {"AP", "AP50", "AR100"}
    records = [r for r in read_metrics(pretrained.parent / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["global_step"] for r in records] == [1, 2, 3, 4]
    original = ckpt_io.read_powersam_checkpoint(backbone)["state_dict"]
    assert all(torch.equal(v, original[k]) for k, v in payload["state_dict"].items() if k.startswith("image_encoder."))
    model = build_model(checkpoint=pretrained)
    assert model.load_report.loaded == len(model.state_dict()) and not model.load_report.left_at_init


def test_a_continued_run_starts_from_the_pretrained_head_past_its_scenes(pretrained, backbone, tmp_path):
    again = pretrain_detector(tiny(backbone, tmp_path, head_checkpoint=pretrained, scene_offset=8, epochs=1,
                                   warmup_epochs=0, no_aug_epochs=0, lr=1e-12, ema=False, precise_bn_batches=0))
    before = ckpt_io.read_powersam_checkpoint(pretrained)
    after = ckpt_io.read_powersam_checkpoint(again)
    assert after["meta"]["total_steps"] == 6 and after["meta"]["next_scene_offset"] == 12
    for key, value in before["state_dict"].items():  # a negligible lr: the head was loaded, not re-initialised
        if key.startswith("box_generator.") and value.is_floating_point() and "running" not in key:
            assert torch.allclose(value, after["state_dict"][key], atol=1e-6), key


def test_a_head_for_other_classes_or_no_head_is_refused(pretrained, backbone):
    model = build_model("powersam_s", img_size=SIZE, class_names=["insulator"])
    with pytest.raises(ValueError, match="was trained for classes"):
        load_box_generator(model, pretrained, ["insulator"])
    with pytest.raises(ValueError, match="holds no box generator"):
        load_box_generator(build_model("powersam_s", img_size=SIZE, class_names=list(SYNTH_CLASSES)), backbone,
                           list(SYNTH_CLASSES))


def test_streamed_scenes_cannot_be_cached():
    with pytest.raises(ValueError, match="cache_features"):
        SynthDetectorConfig(cache_features=True).validate()


def test_a_continued_head_counts_the_heads_steps_not_the_encoders():
    # The shipped model's top-level total_steps are its encoder's (1559 in session 6); a head continued from it
    # must add to the head's own count (the first continuation recorded 1559 + 1500).
    shipped = {"stage": "synth_student", "total_steps": 1559, "detector": {"total_steps": 1500, "steps": 1500}}
    assert head_meta(shipped)["total_steps"] == 1500
    run = {"stage": "synth_detector", "total_steps": 4}
    assert head_meta(run) is run
    assert head_meta({"stage": "synth_student", "total_steps": 7}) == {}
