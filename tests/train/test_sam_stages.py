"""SAM-side training stages end to end on a tiny synthetic dataset at img_size 64 (a few iterations each):
the data wrapper, teacher (from scratch / from a checkpoint), stage 1 and stage 2 (what is frozen), and a short
stage-1 overfit check."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from powersam.checkpoint import read_powersam_checkpoint
from powersam.data.coco import CocoInstances
from powersam.data.synth import generate_dataset
from powersam.models.zoo import build_model
from powersam.train.distill_decoder import DecoderDistillConfig, distill_decoder
from powersam.train.distill_encoder import EncoderDistillConfig, distill_encoder
from powersam.train.metrics import read_metrics
from powersam.train.sam_data import SamTrainDataset, collate_sam_batch, refinement_points, valid_maps
from powersam.train.teacher import TeacherConfig, train_teacher

IMG = 64
QUIET = dict(progress=False, log_every=1, plot=False)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synth") / "ds", 4, seed=5, image_size=(48, 64))


@pytest.fixture(scope="module")
def teacher_ckpt(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    cfg = TeacherConfig(data=data_root, split=None, img_size=IMG, epochs=1, batch_size=2, max_prompts=3,
                        output_dir=out, **QUIET)
    return train_teacher(cfg)


@pytest.fixture(scope="module")
def stage1_ckpt(data_root, teacher_ckpt, tmp_path_factory):
    cfg = EncoderDistillConfig(data=data_root, split=None, img_size=IMG, teacher_checkpoint=teacher_ckpt, epochs=1,
                               batch_size=2, lr=1e-3, scale_lr=False, warmup_epochs=0,
                               output_dir=tmp_path_factory.mktemp("stage1"), **QUIET)
    return distill_encoder(cfg)


def state_of(path, prefix=""):
    return {k: v for k, v in read_powersam_checkpoint(path)["state_dict"].items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------------------------- data


def test_dataset_items_and_collate(data_root):
    coco = CocoInstances(data_root)
    dataset = SamTrainDataset(coco, IMG, max_prompts=2)
    item = dataset[0]
    sample = coco[0]
    assert item["image"].shape == (3, IMG, IMG)
    assert tuple(item["input_size"].tolist()) == (48, 64)
    assert torch.all(item["image"][:, 48:] == 0)  # zero padding after normalisation
    assert item["valid_lowres"].shape == (16, 16) and item["valid_lowres"][:12].min() == 1 and item["valid_lowres"][12:].max() == 0
    assert item["valid_embed"].shape == (4, 4) and item["valid_embed"].sum() == 12
    n = item["boxes"].shape[0]
    assert n == min(2, len(sample.labels)) and item["gt_lowres"].shape == (n, 16, 16)
    assert item["gt_lowres"].flatten(1).sum(1).min() > 0  # empty low-res masks are never used as prompts
    # boxes are scaled to the input frame (64/64 = 1 here) and belong to distinct instances
    matches = [int(np.argmin(np.abs(sample.boxes - b.numpy()).sum(1))) for b in item["boxes"]]
    assert len(set(matches)) == n

    empty = dict(item, boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long), gt_lowres=torch.zeros(0, 16, 16))
    batch = collate_sam_batch([item, empty, item])
    assert batch["image"].shape == (3, 3, IMG, IMG)
    assert batch["num_prompts"].tolist() == [n, 0, n]
    assert batch["prompt_image"].tolist() == [0] * n + [2] * n
    assert batch["gt_lowres"].shape == (2 * n, 16, 16)


def test_prompts_are_drawn_without_replacement(data_root):
    coco = CocoInstances(data_root)
    index = int(np.argmax([len(coco[i].labels) for i in range(len(coco))]))
    count = len(coco[index].labels)
    dataset = SamTrainDataset(coco, IMG, max_prompts=count)
    for _ in range(5):
        boxes = dataset[index]["boxes"]
        assert len(torch.unique(boxes, dim=0)) == len(boxes)


def test_bad_arguments_raise(data_root):
    coco = CocoInstances(data_root)
    with pytest.raises(ValueError, match="img_size"):
        SamTrainDataset(coco, 100)
    with pytest.raises(ValueError, match="max_prompts"):
        SamTrainDataset(coco, IMG, max_prompts=0)
    lowres, embed = valid_maps((10, 64), IMG)
    assert lowres[2, 0].item() == pytest.approx(0.5)  # a boundary cell is half on the image
    assert embed.sum() == 4  # one row of 4 cells is ≥ half on the image (10/16 rows)


def test_refinement_points_follow_the_error():
    target = torch.zeros(2, 16, 16)
    target[:, 4:12, 4:12] = 1
    logits = torch.full((2, 16, 16), -5.0)
    logits[0, 4:12, 4:8] = 5.0  # prompt 0 misses the right half → a positive click there
    logits[1] = torch.where(target[1] > 0, 5.0, -5.0)
    logits[1, 0, 0:3] = 5.0  # prompt 1 has only 3 wrong pixels → no click
    coords, labels = refinement_points(logits, target, torch.ones(2, 16, 16), np.random.default_rng(0))
    assert labels.tolist() == [1, -1]
    col, row = ((coords[0] + 0.5) / 4 - 0.5).round().long().tolist()
    assert 4 <= row < 12 and 8 <= col < 12


# ---------------------------------------------------------------------------------------------- teacher


def test_teacher_from_scratch_is_loadable(teacher_ckpt, caplog):
    model = build_model(None, checkpoint=teacher_ckpt)
    assert model.img_size == IMG and model.model_name == "sam_vit_t"
    meta = read_powersam_checkpoint(teacher_ckpt)["meta"]
    assert meta["from_scratch"] and "FROM SCRATCH" in meta["summary"][0]
    records = read_metrics(teacher_ckpt.parent / "metrics.jsonl")
    assert [r["global_step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in records)


def test_teacher_from_checkpoint_resizes_and_finetunes_the_decoder(data_root, tmp_path, caplog):
    source = build_model("sam_vit_t", img_size=128, with_detector=False)
    plain = tmp_path / "official.pth"
    torch.save(source.state_dict(), plain)  # a plain state dict, like Meta's files
    cfg = TeacherConfig(data=data_root, split=None, img_size=IMG, model="sam_vit_t", checkpoint=plain,
                        finetune="decoder", epochs=1, batch_size=4, lr=1e-3, output_dir=tmp_path / "out", **QUIET)
    with caplog.at_level(logging.WARNING, logger="powersam.train"):
        path = train_teacher(cfg)
    assert "FROM SCRATCH" not in caplog.text
    trained = state_of(path)
    assert trained["image_encoder.pos_embed"].shape == (1, 4, 4, 192)
    before = source.state_dict()
    frozen = [k for k in trained if k.startswith(("image_encoder.", "prompt_encoder.")) and trained[k].shape == before[k].shape]
    assert len(frozen) > 100 and all(torch.equal(trained[k], before[k]) for k in frozen)
    resized = [k for k in trained if trained[k].shape != before[k].shape]
    assert "image_encoder.pos_embed" in resized and all(k.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")) for k in resized)
    assert not torch.equal(trained["mask_decoder.mask_tokens.weight"], before["mask_decoder.mask_tokens.weight"])
    converted = train_teacher(TeacherConfig(data=data_root, split=None, img_size=128, model="sam_vit_t",
                                            checkpoint=plain, finetune="none", output_dir=tmp_path / "none", **QUIET))
    assert all(torch.equal(v, before[k]) for k, v in state_of(converted).items())
    with pytest.raises(ValueError, match="finetune"):
        train_teacher(TeacherConfig(data=data_root, finetune="encoder", output_dir=tmp_path / "bad"))


def test_teacher_adaptation_replays_generated_scenes(data_root, teacher_ckpt, tmp_path):
    cfg = TeacherConfig(data=data_root, split=None, img_size=IMG, model="sam_vit_t", checkpoint=teacher_ckpt,
                        epochs=1, batch_size=2, max_prompts=3, replay_scenes=0.5, output_dir=tmp_path / "r", **QUIET)
    summary = read_powersam_checkpoint(train_teacher(cfg))["meta"]["summary"]
    # 4 images + 2 scenes in batches of 2: 3 iterations, and the note says what was replayed
    assert "trained 3 iterations (1 epochs of 3)" in summary and "with 2 generated scenes replayed among 6 items" in summary
    for bad in (-0.1, 11, True):
        with pytest.raises(ValueError, match="replay_scenes"):
            train_teacher(TeacherConfig(data=data_root, split=None, img_size=IMG, model="sam_vit_t",
                                        checkpoint=teacher_ckpt, replay_scenes=bad, output_dir=tmp_path / "bad"))


# ---------------------------------------------------------------------------------------------- stage 1


def test_stage1_checkpoint_loads_and_carries_the_teacher_decoder(stage1_ckpt, teacher_ckpt):
    model = build_model("powersam_s", checkpoint=stage1_ckpt)  # with the (absent, optional) box generator
    assert model.img_size == IMG
    sam_only = build_model("powersam_s", checkpoint=stage1_ckpt, with_detector=False)
    student, teacher = state_of(stage1_ckpt), state_of(teacher_ckpt)
    decoder_keys = [k for k in teacher if k.startswith(("prompt_encoder.", "mask_decoder."))]
    assert decoder_keys and all(torch.equal(student[k], teacher[k]) for k in decoder_keys)
    assert sum(k.startswith("image_encoder.") for k in sam_only.state_dict()) == 456
    cache_dirs = list(teacher_ckpt.parent.glob("embeddings_all_64"))
    assert len(cache_dirs) == 1 and (cache_dirs[0] / "index.json").is_file()


def test_stage1_loss_decreases_when_overfitting_two_images(data_root, teacher_ckpt, tmp_path):
    cfg = EncoderDistillConfig(data=data_root, split=None, max_images=2, img_size=IMG, teacher_checkpoint=teacher_ckpt,
                               epochs=20, batch_size=2, lr=3e-3, min_lr=3e-3, scale_lr=False, warmup_epochs=0,
                               grad_clip=None, checkpoint_every=20, output_dir=tmp_path, **QUIET)
    distill_encoder(cfg)
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert len(losses) == 20
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])


def test_repvit_imagenet_init_is_partial_and_reported(tmp_path):
    from powersam.models.repvit import RepVGGDW, RepViT
    from powersam.train.distill_encoder import load_repvit_init

    torch.manual_seed(0)
    source = RepViT("m0")
    new_format = {}  # a RepViT-HEAD style file: plain conv1 with bias, a post-sum BN, a classifier
    for key, value in source.state_dict().items():
        if ".conv1.bn." in key or key.startswith(("fuse", "neck")):
            continue
        new_format[key.replace(".conv1.c.weight", ".conv1.weight")] = value.clone()
    for i, block in enumerate(source.features):
        if i and isinstance(block.token_mixer[0], RepVGGDW):
            channels = block.token_mixer[0].conv.c.out_channels
            new_format[f"features.{i}.token_mixer.0.conv1.bias"] = torch.randn(channels)
            new_format[f"features.{i}.token_mixer.0.bn.weight"] = torch.randn(channels)
    new_format["classifier.classifier.l.weight"] = torch.zeros(1000, 320)
    torch.save({"model": new_format}, tmp_path / "repvit_m0_6.pth")

    target = RepViT("m0", img_size=IMG)
    report = load_repvit_init(target, tmp_path / "repvit_m0_6.pth")
    assert torch.equal(target.features[7].channel_mixer.m[0].c.weight, source.features[7].channel_mixer.m[0].c.weight)
    assert report["missing"] and all(k.startswith(("fuse", "neck")) for k in report["missing"])
    assert not report["unexpected"]  # the converter drops the classifier and post-sum BNs
    assert len(report["loaded"]) + len(report["missing"]) == len(target.state_dict())
    torch.save({"model": {"head.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="shares no weights"):
        load_repvit_init(target, tmp_path / "other.pth")


# ---------------------------------------------------------------------------------------------- stage 2


@pytest.mark.parametrize("train_encoder", [False, True])
def test_stage2_trains_only_what_it_should(data_root, teacher_ckpt, stage1_ckpt, tmp_path, train_encoder):
    cfg = DecoderDistillConfig(data=data_root, split=None, img_size=IMG, student_checkpoint=stage1_ckpt,
                               teacher_checkpoint=teacher_ckpt, epochs=1, batch_size=2, max_prompts=3,
                               lr=1e-3, scale_lr=False, grad_clip=1.0, train_encoder=train_encoder,
                               output_dir=tmp_path, **QUIET)
    path = distill_decoder(cfg)
    assert path.name == "powersam_s_stage2.pt"
    build_model("powersam_s", checkpoint=path)
    before, after = state_of(stage1_ckpt), state_of(path)
    assert before.keys() == after.keys()

    def unchanged(prefix):
        return all(torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))

    assert unchanged("prompt_encoder.")
    assert unchanged("mask_decoder.iou_prediction_head.")  # no loss reaches it (iou_weight 0)
    assert not unchanged("mask_decoder.transformer.")
    assert not unchanged("mask_decoder.output_hypernetworks_mlps.3.")  # all 4 outputs are supervised
    if train_encoder:
        assert not unchanged("image_encoder.features.")
    else:  # frozen: weights and BatchNorm statistics untouched
        assert unchanged("image_encoder.")
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert len(records) == 2 and all(np.isfinite(r["loss"]) and 0 <= r["miou"] <= 1 for r in records)


def test_stage2_requires_its_inputs(data_root, tmp_path):
    with pytest.raises(ValueError, match="student_checkpoint"):
        distill_decoder(DecoderDistillConfig(data=data_root, output_dir=tmp_path))
    with pytest.raises(ValueError, match="teacher_checkpoint"):
        distill_encoder(EncoderDistillConfig(data=data_root, output_dir=tmp_path))


def test_stage_commands_run_from_the_cli(data_root, teacher_ckpt, tmp_path, capsys):
    from powersam.cli import main

    out = tmp_path / "cli_stage1"
    argv = ["train", "encoder", "--set", f"data={data_root}", "--set", "split=null", "--set", f"img_size={IMG}",
            "--set", f"teacher_checkpoint={teacher_ckpt}", "--set", "epochs=1", "--set", "batch_size=2",
            "--set", f"output_dir={out}", "--set", "progress=false", "--set", "plot=false", "--set", "log_every=1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    final = [line for line in printed.splitlines() if line.startswith("stage-1 student checkpoint: ")]
    assert len(final) == 1
    path = final[0].split(": ", 1)[1]
    assert build_model(None, checkpoint=path).img_size == IMG
    steps = [r["global_step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert main(argv + ["--resume"]) == 0  # a finished run resumes to the same end without training again
    assert [r["global_step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"] == steps


def test_stage2_learns_to_match_the_shipped_teacher(tmp_path):
    # The student starts with the teacher's encoder and a freshly initialised decoder, so all it can learn is the
    # teacher's decoding: its loss must fall and its agreement (mIoU) with the teacher's masks must rise.
    from powersam.checkpoint import save_checkpoint
    from powersam.train.teacher import sam_state_dict

    data = generate_dataset(tmp_path / "ds", 6, seed=11, image_size=(96, 128))
    torch.manual_seed(0)
    student = build_model("edgesam", checkpoint="synth", img_size=IMG)
    fresh = build_model("edgesam", img_size=IMG)
    student.mask_decoder.load_state_dict(fresh.mask_decoder.state_dict())
    start = save_checkpoint(tmp_path / "student.pt", sam_state_dict(student), "edgesam",
                            model_config={"img_size": IMG})
    cfg = DecoderDistillConfig(data=data, split=None, img_size=IMG, student_checkpoint=start,
                               teacher_checkpoint="synth", cache_dir=tmp_path / "cache", epochs=6, batch_size=2,
                               max_prompts=4, lr=2e-3, min_lr=2e-3, scale_lr=False, grad_clip=1.0,
                               output_dir=tmp_path / "stage2", **QUIET)
    distill_decoder(cfg)
    records = [r for r in read_metrics(tmp_path / "stage2" / "metrics.jsonl") if r["kind"] == "train"]
    assert len(records) == 18
    first, last = records[:4], records[-4:]
    assert np.mean([r["loss"] for r in last]) < 0.8 * np.mean([r["loss"] for r in first])
    assert np.mean([r["miou"] for r in last]) > np.mean([r["miou"] for r in first]) + 0.1
