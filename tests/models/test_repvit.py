"""RepViT image encoder: checkpoint key layout, parameter counts, shapes, re-parameterisation, conversion."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from powersam.models.common import LayerNorm2d
from powersam.models.repvit import (
    REPVIT_CONFIGS,
    ConvBN,
    RepViT,
    RepVGGDW,
    ResizeTo,
    convert_new_format_repvit,
    repvit_block_specs,
)

torch.set_num_threads(1)

# spec §2.2: which features.i carry SE / are downsample blocks
SE_BLOCKS = {"m0": {1, 4, 7, 9, 11, 13, 17}, "m1": {1, 5, 9, 11, 13, 15, 17, 19, 21, 25}}
DOWN_BLOCKS = {"m0": {3, 6, 16}, "m1": {4, 8, 24}}
SE_REDUCED = {40: 8, 48: 16, 80: 24, 96: 24, 160: 40, 192: 48, 320: 80, 384: 96}


def _n_params(module: nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefix))


@pytest.fixture(scope="module", params=["m0", "m1"])
def encoder(request) -> RepViT:
    torch.manual_seed(0)
    return RepViT(request.param)


def test_key_count_and_spot_shapes(encoder: RepViT) -> None:
    sd = encoder.state_dict()
    assert len(sd) == {"m0": 456, "m1": 684}[encoder.arch]
    stem = {"m0": 20, "m1": 24}[encoder.arch]
    c1, c2, c3 = encoder.stage_channels
    assert sd["features.0.0.c.weight"].shape == (stem, 3, 3, 3)
    assert sd["features.0.2.c.weight"].shape == (2 * stem, stem, 3, 3)
    assert sd["features.1.token_mixer.0.conv.c.weight"].shape == (2 * stem, 1, 3, 3)
    assert sd["features.1.token_mixer.0.conv1.c.weight"].shape == (2 * stem, 1, 1, 1)
    assert sd["features.1.channel_mixer.m.0.c.weight"].shape == (4 * stem, 2 * stem, 1, 1)
    assert sd["features.1.channel_mixer.m.2.bn.running_var"].shape == (2 * stem,)
    assert sd["fuse_stage2.weight"].shape == (256, c2, 1, 1)
    assert sd["fuse_stage3.op_list.0.weight"].shape == (256, c3, 1, 1)
    assert {k for k in sd if k.startswith(("fuse", "neck"))} == {
        "fuse_stage2.weight", "fuse_stage3.op_list.0.weight", "neck.0.weight", "neck.1.weight", "neck.1.bias",
        "neck.2.weight", "neck.3.weight", "neck.3.bias"}
    assert sd["neck.2.weight"].shape == (256, 256, 3, 3)
    assert isinstance(encoder.neck[1], LayerNorm2d) and isinstance(encoder.neck[3], LayerNorm2d)
    assert (c1, c2, c3) == {"m0": (80, 160, 320), "m1": (96, 192, 384)}[encoder.arch]


def test_se_and_downsample_placement(encoder: RepViT) -> None:
    sd = encoder.state_dict()
    n_blocks = len(encoder.features) - 1
    for i in range(1, n_blocks + 1):
        has_se = f"features.{i}.token_mixer.1.fc1.weight" in sd
        assert has_se == (i in SE_BLOCKS[encoder.arch]), f"features.{i}"
        is_down = f"features.{i}.token_mixer.2.c.weight" in sd
        assert is_down == (i in DOWN_BLOCKS[encoder.arch]), f"features.{i}"
        assert (f"features.{i}.token_mixer.0.conv1.c.weight" in sd) == (not is_down)
        if has_se:
            channels = sd[f"features.{i}.token_mixer.1.fc1.weight"].shape[1]
            assert sd[f"features.{i}.token_mixer.1.fc1.weight"].shape == (SE_REDUCED[channels], channels, 1, 1)
            assert sd[f"features.{i}.token_mixer.1.fc2.bias"].shape == (channels,)
        else:
            assert isinstance(encoder.features[i].token_mixer[1], nn.Identity)
    assert encoder.stage_idx == {"m0": (1, 4, 14, 16), "m1": (2, 6, 22, 25)}[encoder.arch]


def test_parameter_counts(encoder: RepViT) -> None:
    expected = {"m0": (2_942_916, 2_163_652, 779_264), "m1": (5_517_552, 4_713_712, 803_840)}[encoder.arch]
    total, trunk = _n_params(encoder), _n_params(encoder, "features.")
    assert (total, trunk, total - trunk) == expected


def test_init_and_activation_details(encoder: RepViT) -> None:
    # the last BN of every FFN starts at 0 (block starts as identity); GELU is the exact erf form
    assert torch.all(encoder.features[1].channel_mixer.m[2].bn.weight == 0)
    assert torch.all(encoder.features[1].channel_mixer.m[0].bn.weight == 1)
    gelus = [m for m in encoder.modules() if isinstance(m, nn.GELU)]
    assert len(gelus) == len(encoder.features) and all(g.approximate == "none" for g in gelus)


# n_parameters printed in THU-MIG/RepViT logs/repvit_*_distill_*.txt (trained with a distilled 2-head classifier)
LOGGED_PARAMS = {"m1": 5_489_328, "m1_0": 7_298_036, "m1_1": 8_797_984, "m1_5": 14_635_024, "m2_3": 23_674_632}


@pytest.mark.parametrize("arch", sorted(LOGGED_PARAMS))
def test_variant_rows_match_published_logs(arch: str) -> None:
    with torch.device("meta"):
        model = RepViT(arch)
    trunk = _n_params(model, "features.")
    width = model.stage_channels[-1]
    head = 2 * (2 * width + width * 1000 + 1000)  # two BN1d + Linear heads
    # m0_9's log was produced with new-format blocks: +C per stride-1 block (conv1 bias, post-sum BN)
    new_format_extra = sum(m.conv.c.out_channels for m in model.modules() if isinstance(m, RepVGGDW))
    logged = trunk + head + (new_format_extra if arch == "m1" else 0)
    assert logged == LOGGED_PARAMS[arch]


def test_block_specs_follow_the_config_rows() -> None:
    for arch, stages in REPVIT_CONFIGS.items():
        specs = repvit_block_specs(arch)
        assert len(specs) == sum(len(flags) for _, flags in stages)
        assert sum(s.stride == 2 for s in specs) == 3
        assert all(s.in_channels == s.out_channels for s in specs if s.stride == 1)
    with pytest.raises(ValueError, match="unknown RepViT arch"):
        repvit_block_specs("m9")


@pytest.mark.parametrize("height,width", [(256, 256), (200, 264), (33, 17), (1, 1)])
def test_multiscale_shapes_any_size(height: int, width: int) -> None:
    torch.manual_seed(0)
    model = RepViT("m0").eval()
    x = torch.randn(2, 3, height, width)
    with torch.no_grad():
        s1, s2, s3, emb = model.forward_multiscale(x)
        stages = model.forward_stages(x)
        plain = model(x)

    def side(n: int, stride: int) -> int:
        return math.ceil(n / stride)

    assert s1.shape == (2, 80, side(height, 8), side(width, 8))
    assert s2.shape == (2, 160, side(height, 16), side(width, 16))
    assert s3.shape == (2, 320, side(height, 32), side(width, 32))
    assert emb.shape == (2, 256, side(height, 16), side(width, 16))
    assert all(torch.equal(a, b) for a, b in zip(stages, (s1, s2, s3)))
    assert torch.equal(plain, emb)
    assert torch.isfinite(emb).all()


def test_forward_backward_finite() -> None:
    torch.manual_seed(0)
    model = RepViT("m0").train()
    x = torch.randn(2, 3, 128, 96, requires_grad=True)
    s1, s2, s3, emb = model.forward_multiscale(x)
    (emb.square().mean() + s1.mean() + s2.mean() + s3.mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_upsample_matches_reference_x2_at_even_sizes() -> None:
    x = torch.randn(1, 4, 5, 7)
    for mode in ("bicubic", "bilinear"):
        ref = F.interpolate(x, scale_factor=2, mode=mode, align_corners=False)
        assert torch.allclose(ResizeTo(mode)(x, (10, 14)), ref, atol=1e-6)
    torch.manual_seed(0)
    bicubic = RepViT("m0").eval()
    bilinear = RepViT("m0", upsample_mode="bilinear").eval()
    bilinear.load_state_dict(bicubic.state_dict())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert not torch.allclose(bicubic(x), bilinear(x))


def test_rejects_bad_arguments_and_inputs() -> None:
    with pytest.raises(ValueError, match="arch"):
        RepViT("m4")
    with pytest.raises(ValueError, match="upsample_mode"):
        RepViT("m0", upsample_mode="area")
    with pytest.raises(ValueError, match="img_size"):
        RepViT("m0", img_size=0)
    model = RepViT("m0")
    with pytest.raises(ValueError, match=r"B x 3 x H x W"):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match=r"\(1, 1, 64, 64\)"):
        model.forward_multiscale(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError):
        model.forward_stages(torch.zeros(1, 3, 0, 64))
    with pytest.raises(TypeError):
        model([[0.0]])


def _randomise(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


@pytest.mark.parametrize("arch", ["m0", "m1"])
def test_reparameterize_is_exact_in_eval(arch: str) -> None:
    torch.manual_seed(1)
    model = RepViT(arch)
    _randomise(model, seed=2)
    model.eval()
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        ref = model.forward_multiscale(x)
    n_convs_before = sum(isinstance(m, nn.Conv2d) for m in model.modules())

    assert model.reparameterize() is model
    assert model.is_reparameterized
    assert not any(isinstance(m, (nn.BatchNorm2d, ConvBN, RepVGGDW)) for m in model.modules())
    # each RepVGGDW (3 convs incl. identity) became 1 conv: strictly fewer convs than before
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) < n_convs_before
    assert "features.1.token_mixer.0.weight" in model.state_dict()
    with torch.no_grad():
        out = model.forward_multiscale(x)
    for a, b in zip(out, ref):
        assert (a - b).abs().max() / b.abs().max() < 1e-4

    keys = list(model.state_dict())
    model.reparameterize()  # second call is a no-op
    assert list(model.state_dict()) == keys


def test_channels_last_inference_matches_the_plain_layout() -> None:
    """Eval-mode CPU inference runs in channels-last memory; outputs equal the plain layout's to float rounding
    and come back contiguous (NCHW) either way."""
    torch.manual_seed(3)
    model = RepViT("m0")
    _randomise(model, seed=4)
    model.eval().reparameterize()
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        model.channels_last = False
        plain = model.forward_multiscale(x)
        model.channels_last = True
        fast = model.forward_multiscale(x)
        assert torch.equal(model(x), fast[-1])
    for a, b in zip(fast, plain):
        assert a.is_contiguous() and a.shape == b.shape
        assert (a - b).abs().max() / b.abs().max() < 1e-5
    assert model._inference_layout(x).is_contiguous(memory_format=torch.channels_last)
    assert model.train()._inference_layout(x) is x  # training keeps the caller's layout


def test_reparameterize_refuses_train_mode() -> None:
    model = RepViT("m0").train()
    with pytest.raises(RuntimeError, match="eval"):
        model.reparameterize()
    assert not model.is_reparameterized


def test_convert_new_format_checkpoint() -> None:
    torch.manual_seed(0)
    model = RepViT("m0").eval()
    # build a new-format (RepViT HEAD) trunk state dict from our layout
    new_sd: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if ".conv1.bn." in key or key.startswith(("fuse", "neck")):
            continue
        new_sd[key.replace(".conv1.c.weight", ".conv1.weight")] = value.clone()
    stride1 = [i for i in range(1, len(model.features)) if isinstance(model.features[i].token_mixer[0], RepVGGDW)]
    for i in stride1:
        channels = model.features[i].token_mixer[0].conv.c.out_channels
        new_sd[f"features.{i}.token_mixer.0.conv1.bias"] = torch.randn(channels)
        for name in ("weight", "bias", "running_mean", "running_var"):
            new_sd[f"features.{i}.token_mixer.0.bn.{name}"] = torch.randn(channels)
    new_sd["classifier.classifier.l.weight"] = torch.zeros(1000, 320)

    converted = convert_new_format_repvit(new_sd)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert unexpected == []
    assert all(k.startswith(("fuse", "neck")) for k in missing)
    # DOWN blocks keep their ConvBN ``token_mixer.0.bn`` (same name as the dropped post-sum BN)
    assert "features.3.token_mixer.0.bn.running_var" in converted
    mixer = model.features[1].token_mixer[0]
    x = torch.randn(1, 40, 5, 5)
    expected = F.conv2d(x, new_sd["features.1.token_mixer.0.conv1.weight"],
                        new_sd["features.1.token_mixer.0.conv1.bias"], groups=40)
    with torch.no_grad():
        assert torch.allclose(mixer.conv1(x), expected, atol=1e-5)
