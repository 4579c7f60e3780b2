"""Structured pruning of SAM ViTs (Taylor / magnitude importance, local / global) and distillation afterwards."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from powersam.checkpoint import load_state_dict_strict, read_powersam_checkpoint
from powersam.models.sam.build import build_sam_vit
from powersam.models.slimsam import build_pruned_image_encoder, build_slimsam, widths_of
from powersam.prune import channel_scores, keep_count, prune_vit, select_channels, slice_encoder_state, taylor_scores
from powersam.utils.complexity import count_params

IMG = 64
TINY = dict(embed_dim=64, depth=2, num_heads=4, global_attn_indexes=(1,), window_size=2)  # head dim 16, MLP 256


@pytest.fixture
def teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_sam_vit(TINY, img_size=IMG)
    with torch.no_grad():  # SAM zero-initialises these; random values make them matter for the checks
        for name, p in model.image_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.3)
    return model


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))


def _encode(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.image_encoder(x)


def test_half_pruning_removes_the_expected_parameters_and_runs(teacher, images) -> None:
    pruned = prune_vit(teacher, images, ratio=0.5, steps=2, round_to=1)
    widths = widths_of(pruned)
    assert widths["qk_dims"] == [32, 32] and widths["v_dims"] == [32, 32] and widths["mlp_dims"] == [128, 128]
    assert widths["embed_dim"] == 64 and widths["num_heads"] == [4, 4]
    assert widths["attn_scales"] == [0.25, 0.25]  # the unpruned head dim 16 keeps its scale
    embed, removed = 64, 0
    for rel_len in (2 * 2 - 1, 2 * 4 - 1):  # window 2, global over the 4×4 grid
        removed += 96 * (embed + 1)  # q, k, v: 3 × 4 heads × 8 dims, weight rows and biases
        removed += embed * 32  # proj input columns
        removed += 2 * rel_len * 8  # rel_pos_h/w columns
        removed += 128 * (embed + 1) + embed * 128  # lin1 rows + biases, lin2 columns
    assert count_params(pruned) == count_params(teacher) - removed
    assert _encode(pruned, images).shape == (2, 256, 4, 4)
    out = pruned([{"image": torch.rand(3, IMG, IMG) * 255, "original_size": (IMG, IMG),
                   "boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]])}], multimask_output=False)
    assert out[0]["masks"].shape == (1, 1, IMG, IMG)
    for key in ("prompt_encoder.point_embeddings.0.weight", "mask_decoder.iou_token.weight"):
        assert torch.equal(pruned.state_dict()[key], teacher.state_dict()[key])

    both = prune_vit(teacher, images, ratio=0.5, steps=1, embed_ratio=0.5, round_to=8)
    assert widths_of(both)["embed_dim"] == 32 and both.image_encoder.neck[0].in_channels == 32
    assert _encode(both, images).shape == (2, 256, 4, 4)


@pytest.mark.parametrize("scope, importance", [("local", "taylor"), ("global", "taylor"), ("global", "magnitude")])
def test_ratio_zero_keeps_the_outputs(teacher, images, scope: str, importance: str) -> None:
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    pruned = prune_vit(teacher, images, ratio=0.0, steps=1, importance=importance, scope=scope)
    assert widths_of(pruned)["mlp_dims"] == [256, 256]
    torch.testing.assert_close(_encode(pruned, images), _encode(teacher, images), rtol=0, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # the teacher is untouched
    assert all(p.grad is None for p in teacher.parameters())


def _kill_channels(model: torch.nn.Module, mlp_channel: int, head_dim_index: int) -> None:
    """Zero MLP hidden channel ``mlp_channel`` and per-head q/k dim ``head_dim_index`` of block 0."""
    block = model.image_encoder.blocks[0]
    with torch.no_grad():
        block.mlp.lin1.weight[mlp_channel] = 0
        block.mlp.lin1.bias[mlp_channel] = 0
        block.mlp.lin2.weight[:, mlp_channel] = 0
        rows = [part * 64 + h * 16 + head_dim_index for part in (0, 1) for h in range(4)]  # q and k of all heads
        block.attn.qkv.weight[rows] = 0
        block.attn.qkv.bias[rows] = 0
        block.attn.rel_pos_h[:, head_dim_index] = 0
        block.attn.rel_pos_w[:, head_dim_index] = 0


def test_taylor_ranks_a_dead_channel_lowest_and_pruning_it_changes_nothing(teacher, images) -> None:
    _kill_channels(teacher, mlp_channel=37, head_dim_index=5)
    scores = channel_scores(teacher, taylor_scores(teacher, images.split(1), noise_std=0.01))
    mlp, qk = scores["mlp"][0], scores["qk"][0]
    assert int(mlp.argmin()) == 37 and float(mlp[37]) == 0.0 and bool((mlp.sum() - mlp[37]) > 0)
    assert int(qk.argmin()) == 5 and float(qk[5]) == 0.0
    assert all(bool((s > 0).all()) for s in scores["mlp"][1:] + scores["qk"][1:] + scores["v"])
    assert bool((scores["embed"] > 0).all())

    keep = select_channels(scores, ratio=1 / 256, round_to=1)
    assert 37 not in keep["mlp"][0].tolist() and len(keep["mlp"][0]) == 255
    assert 5 not in keep["qk"][0].tolist()
    # Removing only the dead channels (everything else kept) must not change the encoder's output.
    dead_only = {"embed": torch.arange(64), "qk": [keep["qk"][0], torch.arange(16)],
                 "v": [torch.arange(16), torch.arange(16)], "mlp": [keep["mlp"][0], torch.arange(256)]}
    state, widths = slice_encoder_state(teacher.image_encoder, dead_only)
    encoder = build_pruned_image_encoder(widths, IMG)
    encoder.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), _encode(teacher, images), rtol=1e-5, atol=1e-5)


def test_global_scope_gives_width_to_the_block_that_needs_it(teacher, images) -> None:
    with torch.no_grad():  # block 0: three quarters of its MLP channels are dead
        block = teacher.image_encoder.blocks[0]
        block.mlp.lin1.weight[64:] = 0
        block.mlp.lin1.bias[64:] = 0
        block.mlp.lin2.weight[:, 64:] = 0
    local = prune_vit(teacher, None, ratio=0.5, importance="magnitude", round_to=1)
    global_ = prune_vit(teacher, None, ratio=0.5, importance="magnitude", scope="global", round_to=1)
    assert widths_of(local)["mlp_dims"] == [128, 128]
    assert widths_of(global_)["mlp_dims"] == [64, 192]  # same total, the dead channels go first
    rounded = prune_vit(teacher, None, ratio=0.5, importance="magnitude", scope="global", round_to=12)
    assert all(m % 12 == 0 for m in widths_of(rounded)["mlp_dims"])


def test_keep_count_follows_slimsam_widths() -> None:
    assert keep_count(768, 0.5, 12, 12) == 384 and keep_count(768, 0.77, 12, 12) == 168
    assert keep_count(3072, 0.77, 12, 12) == 696 and keep_count(64, 0.77) == 14
    assert keep_count(5, 0.99) == 1  # never empty
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="ratio"):
            keep_count(10, bad)


def test_bad_arguments_are_reported(teacher, images) -> None:
    with pytest.raises(ValueError, match="noise_std"):
        taylor_scores(teacher, images.split(1), noise_std=0.0)
    with pytest.raises(ValueError, match="calibration"):
        prune_vit(teacher, None, ratio=0.5)  # Taylor needs data
    with pytest.raises(ValueError, match="yielded no batches"):
        prune_vit(teacher, [], ratio=0.5)
    with pytest.raises(ValueError, match="scope"):
        prune_vit(teacher, images, ratio=0.5, scope="everywhere")
    with pytest.raises(ValueError, match="B×3×H×W"):
        prune_vit(teacher, torch.zeros(2, 1, IMG, IMG), ratio=0.5)
    with pytest.raises(TypeError, match="SAM ViT"):
        prune_vit(torch.nn.Linear(2, 2), images)


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from powersam.data.synth import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("prune_data") / "set", 4, seed=0, image_size=IMG)


def test_distill_runs_and_writes_a_loadable_checkpoint(teacher, tiny_coco: Path, tmp_path: Path) -> None:
    from powersam.data.coco import CocoInstances
    from powersam.prune.distill import distill_pruned

    student = prune_vit(teacher, None, ratio=0.5, importance="magnitude", scope="global", round_to=4)
    before = {k: v.clone() for k, v in student.image_encoder.state_dict().items()}
    dataset = CocoInstances(tiny_coco, load_masks=False)
    path = distill_pruned(student, teacher, dataset, epochs=1, output_dir=tmp_path / "run", batch_size=2, lr=1e-3,
                          device="cpu", progress=False, log_every=1)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("kind") == "train"]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    after = student.image_encoder.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before)

    payload = read_powersam_checkpoint(path)
    assert payload["model_name"] == "slimsam_custom" and payload["model_config"]["img_size"] == IMG
    rebuilt = build_slimsam(payload["model_config"]["widths"], img_size=payload["model_config"]["img_size"])
    load_state_dict_strict(rebuilt, payload["state_dict"], source=str(path))
    x = torch.randn(1, 3, IMG, IMG)
    torch.testing.assert_close(_encode(rebuilt, x), _encode(student.cpu(), x), rtol=0, atol=0)


def test_prune_command_end_to_end(tiny_coco: Path, tmp_path: Path) -> None:
    from powersam.cli.prune import add_prune_arguments, run_prune

    parser = add_prune_arguments(argparse.ArgumentParser())
    out = tmp_path / "out"
    args = parser.parse_args([
        "--model", "sam_vit_t", "--data", str(tiny_coco), "--img-size", str(IMG), "--ratio", "0.5",
        "--calib-images", "2", "--epochs", "1", "--batch-size", "2", "--eval-max-images", "1", "--out", str(out),
        "--device", "cpu", "--set", "progress=false", "--set", "split=null", "--set", "eval_split=all",
    ])
    assert run_prune(args) == 0
    report = json.loads((out / "prune_report.json").read_text())
    assert report["pruned"]["encoder_params_m"] < report["teacher"]["encoder_params_m"]
    assert report["pruned"]["encoder_gmacs_full"] < report["teacher"]["encoder_gmacs_full"]
    assert report["pruned"]["widths"]["mlp_dims"] == [384] * 6  # sam_vit_t: MLP 768, halved
    for name in ("teacher", "pruned", "distilled"):
        assert set(report[name]["miou"]) == {"box", "box+1", "box+2", "point", "point+1", "point+2"}
    for name in ("pruned.pt", "final.pt"):
        assert read_powersam_checkpoint(out / name)["model_name"] == "slimsam_custom"
    with pytest.raises(Exception, match="scope"):
        run_prune(parser.parse_args(["--data", str(tiny_coco), "--scope", "sideways", "--out", str(out)]))
