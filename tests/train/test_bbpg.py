"""Stage 3 (box-prompt generator) training: end-to-end runs on tiny synthetic data at small input sizes."""
from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from powersam import checkpoint as ckpt_io
from powersam.data.augment import DetectionAugment
from powersam.data.coco import CocoInstances
from powersam.data.synth import generate_dataset
from powersam.models.zoo import build_model
from powersam.ops.boxes import box_iou
from powersam.train import bbpg as bbpg_module
from powersam.cli.train import add_bbpg_arguments, run_bbpg
from powersam.train.bbpg import BBPGConfig, BoxDetector, build_bbpg_schedule, train_bbpg
from powersam.train.bbpg_data import BBPGDataset, collate_bbpg, label_mapping, normalize_batch
from powersam.train.config import dump_config, load_config
from powersam.transforms import preprocess_image

REPO = Path(__file__).resolve().parents[2]
SIZE = 64  # network input; the smallest multiple of 32 that keeps every detector level ≥ 2×2


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth"), 4, seed=3, image_size=(48, 64))


@pytest.fixture(scope="module")
def boxes_only(synth: Path, tmp_path_factory) -> Path:
    """The synthetic set as a boxes-only COCO file, with every annotation of image 1 removed (a negative)."""
    data = json.loads((synth / "annotations.json").read_text())
    data["annotations"] = [{k: v for k, v in a.items() if k != "segmentation"}
                           for a in data["annotations"] if a["image_id"] != 1]
    root = tmp_path_factory.mktemp("boxes_only")
    (root / "annotations.json").write_text(json.dumps(data))
    (root / "images").symlink_to(synth / "images", target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def stage2_checkpoint(tmp_path_factory) -> Path:
    """A stand-in stage-2 checkpoint: a random powersam_s SAM part (no box generator), BN statistics made
    non-trivial so that 'BN buffers unchanged' can fail."""
    torch.manual_seed(7)
    model = build_model("powersam_s", img_size=SIZE, class_names=["x"])
    with torch.no_grad():
        for module in model.image_encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("box_generator.")}
    path = tmp_path_factory.mktemp("stage2") / "stage2.pt"
    ckpt_io.save_checkpoint(path, state, "powersam_s", model_config=model.model_config)
    return path


def _cfg(data: Path, out: Path, **overrides) -> BBPGConfig:
    base = dict(data=data, split=None, val_split=None, img_size=SIZE, epochs=2, batch_size=4, warmup_epochs=1,
                no_aug_epochs=1, output_dir=out, num_workers=0, progress=False, log_every=1, eval_every=0, plot=False)
    base.update(overrides)
    return BBPGConfig(**base)


def _records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def test_end_to_end_checkpoint_frozen_backbone(synth, stage2_checkpoint, tmp_path, monkeypatch) -> None:
    initial = {}
    original = bbpg_module.load_backbone_model

    def recording(*args, **kwargs):
        model = original(*args, **kwargs)
        initial.update(copy.deepcopy(model.box_generator.state_dict()))
        return model

    monkeypatch.setattr(bbpg_module, "load_backbone_model", recording)
    cfg = _cfg(synth, tmp_path, backbone_checkpoint=stage2_checkpoint, mosaic=True, mixup=True)
    final = train_bbpg(cfg)

    model = build_model(checkpoint=final)
    assert type(model).__name__ == "PowerSAM" and model.img_size == SIZE
    assert model.class_names == CocoInstances(synth, load_masks=False).class_names
    image = np.asarray(CocoInstances(synth, load_masks=False)[0].image)
    results = model.predict(image, conf=0.0, max_det=5)
    assert results.masks is not None and results.masks.shape == (5, *image.shape[:2])
    # The validation detector (no SAM neck / decoder) finds exactly the boxes predict() prompts SAM with.
    boxes_only = BoxDetector(model.image_encoder, model.box_generator, model.class_names, SIZE, model.pixel_mean,
                             model.pixel_std).predict(image, conf=0.0, max_det=5)
    assert boxes_only.masks is None
    np.testing.assert_allclose(boxes_only.boxes, results.boxes, atol=1e-4)
    np.testing.assert_array_equal(boxes_only.labels, results.labels)

    saved = ckpt_io.read_powersam_checkpoint(final)["state_dict"]
    backbone = ckpt_io.read_checkpoint(stage2_checkpoint)
    for key, tensor in backbone.items():  # encoder params AND BN buffers, prompt encoder, mask decoder
        assert torch.equal(saved[key], tensor), key
    assert any(k.endswith("running_var") and k.startswith("image_encoder.") for k in backbone)
    floats = {k: v for k, v in initial.items() if v.is_floating_point()}
    changed = [k for k, v in floats.items() if not torch.equal(saved["box_generator." + k], v)]
    assert len(changed) > 0.9 * len(floats)
    # The final head is the EMA, not the raw weights.
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    for key, tensor in state["ema"]["module"].items():
        assert torch.equal(saved["box_generator." + key], tensor), key


def test_mode_switch_and_learning_rate(synth, tmp_path) -> None:
    cfg = _cfg(synth, tmp_path, epochs=4, batch_size=2, warmup_epochs=1, no_aug_epochs=2, mosaic=False)
    train_bbpg(cfg)
    records = _records(tmp_path)
    assert [r["global_step"] for r in records] == list(range(1, 9))  # 2 iterations × 4 epochs
    for r in records:
        assert (r["loss_l1"] > 0) == (r["epoch"] >= 2), r  # L1 on exactly in the last 2 epochs
    # Quadratic warmup over 2 iterations, cosine with period 4 iterations until iteration 4, then constant.
    base, low = 0.01, 0.01 * 0.05
    cos_at = lambda t: low + (base - low) * 0.5 * (1 + math.cos(math.pi * t / 4))  # noqa: E731
    expected = [base * 0.25, base, cos_at(0), cos_at(1), cos_at(1), cos_at(1), cos_at(1), cos_at(1)]
    np.testing.assert_allclose([r["lr"] for r in records], expected, rtol=1e-12)


def test_epoch_mode_switch_flags(synth) -> None:
    augment = DetectionAugment(SIZE, mosaic=True, mixup=True)
    dataset = BBPGDataset(CocoInstances(synth, load_masks=False), SIZE, augment)
    loss_fn = bbpg_module.YOLOXLoss(10)
    seen = []
    for epoch in range(6):
        bbpg_module.set_epoch_mode(epoch, epochs=6, no_aug_epochs=2, dataset=dataset, augment=augment, loss_fn=loss_fn)
        seen.append((dataset.epoch, augment.strong, augment.num_extra_samples, loss_fn.use_l1))
    assert seen == [(0, True, 4, False), (1, True, 4, False), (2, True, 4, False), (3, True, 4, False),
                    (4, False, 0, True), (5, False, 0, True)]


def test_schedule_matches_paper_shape() -> None:
    cfg = BBPGConfig(data=Path("."), epochs=300, warmup_epochs=5, no_aug_epochs=15)
    schedule = build_bbpg_schedule(cfg, 10)
    assert schedule(0) == pytest.approx(0.01 / 50**2)
    assert schedule(49) == pytest.approx(0.01)
    assert schedule(2849) == schedule(2850) == schedule(2999)  # constant for the last 15 epochs
    assert 5e-4 < schedule(2849) < 6e-4  # mmdet's T_max = 285 epochs stops just above 5 % of the base LR


def test_overfit_two_images(tmp_path) -> None:
    """60 SGD steps at a constant LR (L1 on) on 2 images without augmentation: the loss falls by a large factor
    and most training boxes are found (an untrained head scores ~1e-4 everywhere, i.e. finds none)."""
    data = generate_dataset(tmp_path / "two", 2, seed=11, image_size=(96, 128))
    cfg = _cfg(data, tmp_path / "run", img_size=128, epochs=60, batch_size=2, warmup_epochs=0, no_aug_epochs=60,
               augment=False, ema=False, lr=0.01, precise_bn_batches=1, checkpoint_every=1000, plot=False)
    final = train_bbpg(cfg)
    losses = [r["loss"] for r in _records(tmp_path / "run")]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses

    model = build_model(checkpoint=final)
    detector = BoxDetector(model.image_encoder, model.box_generator, model.class_names, 128, model.pixel_mean,
                           model.pixel_std)
    source = CocoInstances(data, load_masks=False)
    found = total = 0
    for index in range(len(source)):
        sample = source[index]
        results = detector.predict(sample.image, conf=0.1)
        total += len(sample.boxes)
        if len(results.boxes):
            iou = box_iou(torch.as_tensor(sample.boxes), torch.as_tensor(results.boxes))
            same = torch.as_tensor(sample.labels)[:, None] == torch.as_tensor(results.labels)[None]
            found += int(((iou >= 0.5) & same).any(dim=1).sum())
    assert found >= 0.4 * total, (found, total)


def test_precise_bn_replaces_lagging_statistics() -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4, momentum=0.03)).eval()
    batches = [torch.randn(2, 3, 5, 5) * 1e-3 + 2.0 for _ in range(3)]
    assert bbpg_module.recompute_bn_statistics(module, iter(batches)) == 3
    with torch.no_grad():
        conv_out = torch.cat([module[0](b) for b in batches])
    torch.testing.assert_close(module[1].running_mean, conv_out.mean(dim=(0, 2, 3)))
    assert not module.training and module[1].momentum == 0.03
    with pytest.raises(ValueError, match="no batches"):
        bbpg_module.recompute_bn_statistics(module, iter(()))


def test_boxes_only_dataset_with_negative_image(boxes_only, tmp_path) -> None:
    source = CocoInstances(boxes_only, load_masks=False)
    assert not source.has_masks and len(source) == 4
    dataset = BBPGDataset(source, SIZE, None)
    empty = [item for item in (dataset[i] for i in range(len(dataset))) if len(item["boxes"]) == 0]
    assert len(empty) == 1 and empty[0]["boxes"].shape == (0, 4) and empty[0]["labels"].shape == (0,)
    # Through the CLI helpers: a YAML config plus --set overrides.
    cfg = _cfg(boxes_only, tmp_path, epochs=1, batch_size=3, warmup_epochs=0, no_aug_epochs=0, mosaic=False)
    dump_config(cfg, tmp_path / "cfg.yaml")
    parser = add_bbpg_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--config", str(tmp_path / "cfg.yaml"), "--set", "batch_size=4"])
    assert run_bbpg(args) == 0
    final = tmp_path / "final.pt"
    assert len(_records(tmp_path)) == 1  # 4 images, batch 4 (the override took effect)
    assert build_model(checkpoint=final).class_names == source.class_names
    assert all(math.isfinite(r["loss"]) for r in _records(tmp_path))


def test_resume_reproduces_uninterrupted_run(synth, tmp_path, monkeypatch) -> None:
    full = train_bbpg(_cfg(synth, tmp_path / "full", batch_size=2))
    original = bbpg_module.BBPGTrainer.save_state

    def save_then_stop(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt  # "killed" right after the first epoch's checkpoint

    monkeypatch.setattr(bbpg_module.BBPGTrainer, "save_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_bbpg(_cfg(synth, tmp_path / "resumed", batch_size=2))
    monkeypatch.setattr(bbpg_module.BBPGTrainer, "save_state", original)
    resumed = train_bbpg(_cfg(synth, tmp_path / "resumed", batch_size=2), resume=True)
    a, b = ckpt_io.read_checkpoint(full), ckpt_io.read_checkpoint(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_normalize_batch_equals_sam_preprocessing(synth) -> None:
    source = CocoInstances(synth, load_masks=False)
    dataset = BBPGDataset(source, SIZE, None)
    batch = collate_bbpg([dataset[0], dataset[1]])
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    x = normalize_batch(batch["images"], batch["input_sizes"], mean, std)
    for row in range(2):
        reference, size = preprocess_image(source[row].image, SIZE, torch.tensor(mean), torch.tensor(std))
        assert tuple(batch["input_sizes"][row].tolist()) == size
        assert torch.equal(x[row].view(torch.int32), reference[0].view(torch.int32))  # bitwise: +0.0 padding
    assert size != (SIZE, SIZE)  # the test image really has padding


def test_dataset_augmentation_is_seeded_per_epoch_and_sample(synth) -> None:
    source = CocoInstances(synth, load_masks=False)
    dataset = BBPGDataset(source, SIZE, DetectionAugment(SIZE, mosaic=True), seed=5)
    first = dataset[1]
    assert torch.equal(first["image"], dataset[1]["image"])
    dataset.set_epoch(1)
    assert not torch.equal(first["image"], dataset[1]["image"])
    boxes = dataset[1]["boxes"]
    assert (boxes[:, 2:] - boxes[:, :2] >= 1.0).all() and (boxes >= 0).all() and (boxes <= SIZE).all()


def test_config_errors_and_label_mapping(synth, tmp_path) -> None:
    with pytest.raises(ValueError, match="data is required"):
        train_bbpg(BBPGConfig())
    with pytest.raises(ValueError, match="no_aug_epochs"):
        train_bbpg(_cfg(synth, tmp_path, epochs=3, warmup_epochs=2, no_aug_epochs=2))
    with pytest.raises(ValueError, match="cache_features"):
        train_bbpg(_cfg(synth, tmp_path, cache_features=True))
    with pytest.raises(ValueError, match="multiple of 32"):
        train_bbpg(_cfg(synth, tmp_path, img_size=100))
    with pytest.raises(ValueError, match="not in class_names"):
        train_bbpg(_cfg(synth, tmp_path, class_names=["only_one"]))
    np.testing.assert_array_equal(label_mapping(["b", "a"], ["a", "x", "b"]), [2, 0])


def test_paper_config_loads() -> None:
    cfg = load_config(REPO / "configs" / "paper" / "stage3_bbpg.yaml", BBPGConfig)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (300, 8, 0.01, 0.9, 5e-4)
    assert (cfg.warmup_epochs, cfg.no_aug_epochs, cfg.min_lr_ratio, cfg.img_size) == (5, 15, 0.05, 1024)
    assert cfg.nesterov and cfg.ema and cfg.mosaic and cfg.augment and cfg.scale == (0.1, 2.0)
    assert cfg.mixup and cfg.mixup_ratio == (0.8, 1.6)
