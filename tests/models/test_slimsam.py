"""SlimSAM models: uniform p50/p77 layouts, per-block (globally pruned) state dicts, pickled whole modules."""
from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from powersam.checkpoint import (convert_mmengine_checkpoint, identify_checkpoint, load_state_dict_strict,
                                 read_checkpoint, read_powersam_checkpoint)
from powersam.models.slimsam import (PrunedAttention, build_slimsam, build_slimsam_from_state_dict, fuse_split_qkv,
                                     infer_widths, resolve_widths, widths_of)
from powersam.models.slimsam_files import (convert_slimsam_checkpoint, read_slimsam_pickle, read_widths_json,
                                           write_widths_json)
from reference_impls import import_segment_anything

IMG = 64  # 4×4 token grid: window-2 blocks and a global block stay distinguishable by their rel_pos tables


@pytest.mark.parametrize("name, embed, mlp, head_dim", [("slimsam_50", 384, 1536, 32), ("slimsam_77", 168, 696, 14)])
def test_uniform_key_shapes_match_slimsam_builder(name: str, embed: int, mlp: int, head_dim: int) -> None:
    with torch.device("meta"):
        model = build_slimsam(name, img_size=1024)
    state = model.state_dict()
    assert len(state) == 314  # the same keys as SAM ViT-B
    enc = "image_encoder."
    assert state[enc + "pos_embed"].shape == (1, 64, 64, embed)
    assert state[enc + "blocks.0.attn.qkv.weight"].shape == (3 * embed, embed)
    assert state[enc + "blocks.0.attn.proj.weight"].shape == (embed, embed)
    assert state[enc + "blocks.0.mlp.lin1.weight"].shape == (mlp, embed)
    assert state[enc + "blocks.0.attn.rel_pos_h"].shape == (27, head_dim)  # windowed (14)
    assert state[enc + "blocks.2.attn.rel_pos_w"].shape == (127, head_dim)  # global
    assert state[enc + "neck.0.weight"].shape == (256, embed, 1, 1)
    # SlimSAM's uniform builder derives the scale from dim // num_heads (12 heads of the pruned width).
    for block in model.image_encoder.blocks:
        assert block.attn.num_heads == 12 and block.attn.scale == pytest.approx(head_dim**-0.5)
    assert identify_checkpoint(state) == "slimsam"


def test_uniform_p50_matches_meta_encoder_and_round_trips(tmp_path: Path) -> None:
    import_segment_anything()
    modeling = importlib.import_module("segment_anything.modeling")
    torch.manual_seed(1)
    model = build_slimsam("slimsam_50", img_size=IMG)
    with torch.no_grad():
        for name, p in model.image_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.2)
    # p50's MLP is 4 × 384, so Meta's own ViT builds the same network (12 heads of 32 → scale 32^-0.5).
    meta = modeling.ImageEncoderViT(img_size=IMG, embed_dim=384, depth=12, num_heads=12, mlp_ratio=4,
                                       norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6), qkv_bias=True,
                                       use_rel_pos=True, global_attn_indexes=(2, 5, 8, 11), window_size=14,
                                       out_chans=256)
    meta.load_state_dict(model.image_encoder.state_dict(), strict=True)
    x = torch.randn(1, 3, IMG, IMG)
    path = tmp_path / "slimsam_50.pth"
    torch.save(model.state_dict(), path)
    again = build_slimsam("slimsam_50", img_size=IMG)
    load_state_dict_strict(again, read_checkpoint(path), source=str(path))
    with torch.no_grad():
        expected = meta(x)
        torch.testing.assert_close(model.image_encoder(x), expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(again.image_encoder(x), model.image_encoder(x))


def test_uniform_p77_round_trip_strict_and_rejects_wrong_variant(tmp_path: Path) -> None:
    model = build_slimsam("slimsam_77", img_size=IMG)
    path = tmp_path / "p77.pth"
    torch.save(model.state_dict(), path)
    state = read_checkpoint(path)
    load_state_dict_strict(build_slimsam("vit_p77", img_size=IMG), state)
    with pytest.raises(ValueError, match="shape"):
        load_state_dict_strict(build_slimsam("slimsam_50", img_size=IMG), state)
    with pytest.raises(ValueError, match="unknown SlimSAM variant"):
        build_slimsam("slimsam_33")


# ---------------------------------------------------------------------------------------------- global pruning

# A stand-in for SlimSAM's segment_anything_kd: split q/k/v, blocks returning tuples, a DataParallel encoder.
# It is written to a temporary module so that the class can be made unimportable before the file is read back.
KD_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn
    from segment_anything.modeling.common import LayerNorm2d, MLPBlock
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos, window_partition, window_unpartition

    class KDAttention(nn.Module):
        def __init__(self, dim, num_heads, qk_dim, v_dim, size, scale):
            super().__init__()
            self.num_heads, self.scale, self.input_size, self.use_rel_pos = num_heads, scale, (size, size), True
            self.q, self.k, self.v = nn.Linear(dim, qk_dim), nn.Linear(dim, qk_dim), nn.Linear(dim, v_dim)
            self.proj = nn.Linear(v_dim, dim)
            self.rel_pos_h = nn.Parameter(0.3 * torch.randn(2 * size - 1, qk_dim // num_heads))
            self.rel_pos_w = nn.Parameter(0.3 * torch.randn(2 * size - 1, qk_dim // num_heads))

        def forward(self, x):
            B, H, W, _ = x.shape
            q, k, v = self.q(x), self.k(x), self.v(x)
            heads = lambda t: t.reshape(B, H * W, 1, self.num_heads, -1).permute(2, 0, 3, 1, 4).reshape(
                B * self.num_heads, H * W, -1)
            q, k, v = heads(q), heads(k), heads(v)
            attn = add_decomposed_rel_pos((q * self.scale) @ k.transpose(-2, -1), q, self.rel_pos_h,
                                          self.rel_pos_w, (H, W), (H, W)).softmax(dim=-1)
            x = (attn @ v).view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
            return self.proj(x), q

    class KDBlock(nn.Module):
        def __init__(self, dim, heads, qk_dim, v_dim, mlp_dim, window, grid, scale):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
            self.attn = KDAttention(dim, heads, qk_dim, v_dim, window or grid, scale)
            self.mlp = MLPBlock(dim, mlp_dim)
            self.window_size = window

        def forward(self, x):
            shortcut, y = x, self.norm1(x)
            if self.window_size > 0:
                H, W = y.shape[1], y.shape[2]
                y, pad = window_partition(y, self.window_size)
            y, qkv_emb = self.attn(y)
            if self.window_size > 0:
                y = window_unpartition(y, self.window_size, pad, (H, W))
            x = shortcut + y
            mid = self.mlp(self.norm2(x))
            return x + mid, qkv_emb, mid, x

    class KDEncoder(nn.Module):
        def __init__(self, embed, widths, grid, global_indexes, window, scales):
            super().__init__()
            self.global_attn_indexes, self.num_heads = list(global_indexes), widths[0][0]
            self.patch_embed = nn.Module()
            self.patch_embed.proj = nn.Conv2d(3, embed, 16, 16)
            self.pos_embed = nn.Parameter(0.1 * torch.randn(1, grid, grid, embed))
            self.blocks = nn.ModuleList(
                KDBlock(embed, h, qk, v, m, 0 if i in global_indexes else window, grid, scales[i])
                for i, (h, qk, v, m) in enumerate(widths))
            self.neck = nn.Sequential(nn.Conv2d(embed, 256, 1, bias=False), LayerNorm2d(256),
                                      nn.Conv2d(256, 256, 3, padding=1, bias=False), LayerNorm2d(256))

        def forward(self, x):
            x = self.patch_embed.proj(x).permute(0, 2, 3, 1) + self.pos_embed
            for block in self.blocks:
                x = block(x)[0]
            return self.neck(x.permute(0, 3, 1, 2))

    class KDSam(nn.Module):
        def __init__(self, encoder, prompt_encoder, mask_decoder):
            super().__init__()
            self.image_encoder = nn.DataParallel(encoder)
            self.prompt_encoder, self.mask_decoder = prompt_encoder, mask_decoder
''')

# (heads, q/k width, v width, MLP width) per block: 3 heads kept, per-head dims and MLP differ per block.
BLOCK_WIDTHS = [(3, 18, 12, 100), (3, 9, 15, 48), (3, 24, 24, 140)]
EMBED, GLOBAL, WINDOW = 36, (1,), 2


@pytest.fixture
def kd_module(tmp_path: Path):
    import_segment_anything()  # registers the torchvision stand-in that segment_anything's package needs
    (tmp_path / "fake_slimsam_kd.py").write_text(KD_SOURCE)
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("fake_slimsam_kd")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fake_slimsam_kd", None)


def _kd_model(kd, scales):
    from powersam.models.sam.build import build_mask_decoder, build_prompt_encoder

    torch.manual_seed(3)
    encoder = kd.KDEncoder(EMBED, BLOCK_WIDTHS, IMG // 16, GLOBAL, WINDOW, scales)
    return kd.KDSam(encoder, build_prompt_encoder(IMG), build_mask_decoder()).eval()


def test_split_qkv_state_dict_builds_per_block_model_equal_to_reference(kd_module) -> None:
    default_scales = [(qk // h) ** -0.5 for h, qk, _, _ in BLOCK_WIDTHS]  # what a state dict alone implies
    reference = _kd_model(kd_module, default_scales)
    state = reference.state_dict()
    assert any(k.endswith("attn.q.weight") for k in state) and identify_checkpoint(state) == "slimsam"
    widths = infer_widths(state)
    assert widths["qk_dims"] == [18, 9, 24] and widths["v_dims"] == [12, 15, 24]
    assert widths["mlp_dims"] == [100, 48, 140] and widths["num_heads"] == [3, 3, 3]
    assert widths["global_attn_indexes"] == [1] and widths["window_size"] == WINDOW and widths["img_size"] == IMG
    model = build_slimsam_from_state_dict(state)  # strict: raises on any missing/unexpected/mis-shaped key
    assert isinstance(model.image_encoder.blocks[0].attn, PrunedAttention)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(model.image_encoder(x), reference.image_encoder(x), rtol=1e-5, atol=1e-5)
    # fused rows are q, k, v in that order
    fused = fuse_split_qkv(state)
    q = state["image_encoder.module.blocks.1.attn.q.weight"]  # (the DataParallel level is folded away)
    assert torch.equal(fused["image_encoder.blocks.1.attn.qkv.weight"][:9], q)


def test_pickled_slimsam_module_converts_without_its_code(kd_module, tmp_path: Path) -> None:
    scales = [0.125, 0.2, 0.3]  # arbitrary: must be read from the pickle, they are in no state dict
    reference = _kd_model(kd_module, scales)
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        expected = reference.image_encoder(x)
    pickled = tmp_path / "vit_b_slim_step2_.pth"
    torch.save(reference, pickled)
    sys.modules.pop("fake_slimsam_kd")
    sys.path.remove(str(tmp_path))
    (tmp_path / "fake_slimsam_kd.py").unlink()
    sys.path.insert(0, str(tmp_path))  # (the fixture removes it again)
    with pytest.raises(ModuleNotFoundError):
        torch.load(pickled, weights_only=False)  # the class really is unavailable now

    state, widths = read_slimsam_pickle(pickled)
    assert widths["attn_scales"] == pytest.approx(scales) and widths["num_heads"] == [3, 3, 3]
    img_size = widths.pop("img_size")
    assert img_size == IMG
    model = build_slimsam_from_state_dict(state, widths)
    with torch.no_grad():
        torch.testing.assert_close(model.image_encoder(x), expected, rtol=1e-5, atol=1e-5)

    # the two on-disk forms: plain state dict (via `powersam convert`) + widths JSON, and a PowerSAM checkpoint
    plain, widths_file = tmp_path / "plain.pth", tmp_path / "plain.widths.json"
    convert_mmengine_checkpoint(pickled, plain)
    write_widths_json(widths, widths_file)
    assert json.loads(widths_file.read_text())["attn_scales"] == pytest.approx(scales)
    again = build_slimsam_from_state_dict(read_checkpoint(plain), read_widths_json(widths_file))
    converted = convert_slimsam_checkpoint(pickled, tmp_path / "slimsam_global.pt")
    payload = read_powersam_checkpoint(converted)
    assert payload["model_name"] == "slimsam_custom"
    rebuilt = build_slimsam(payload["model_config"]["widths"], img_size=payload["model_config"]["img_size"])
    load_state_dict_strict(rebuilt, payload["state_dict"])
    with torch.no_grad():
        for candidate in (again, rebuilt):
            torch.testing.assert_close(candidate.image_encoder(x), expected, rtol=1e-5, atol=1e-5)

    # `powersam convert` recognises the pickled SlimSAM and keeps its widths and scales
    from powersam.cli import main
    from powersam.models.zoo import build_model

    assert main(["convert", str(pickled), str(tmp_path / "cli.pt")]) == 0
    from_cli = build_model(checkpoint=tmp_path / "cli.pt")
    with torch.no_grad():
        torch.testing.assert_close(from_cli.image_encoder(x), expected, rtol=1e-5, atol=1e-5)


def test_encoder_only_state_dict_and_widths_of_round_trip(tmp_path: Path) -> None:
    widths = {"embed_dim": 24, "qk_dims": [12, 6], "v_dims": [6, 12], "mlp_dims": [30, 7], "num_heads": [3, 3],
              "attn_scales": [0.5, 0.25], "global_attn_indexes": [1], "window_size": 2}
    model = build_slimsam(widths, img_size=IMG)
    got = widths_of(model)
    assert got == resolve_widths(widths)
    encoder_state = model.image_encoder.state_dict()
    path = write_widths_json(model, tmp_path / "w.json")
    rebuilt = build_slimsam_from_state_dict(encoder_state, read_widths_json(path))
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.equal(rebuilt.image_encoder(x), model.image_encoder(x))


@pytest.mark.parametrize("bad, message", [
    ({"qk_dims": [12], "v_dims": [12, 12], "mlp_dims": [4, 4]}, "v_dims has 2 entries"),
    ({"qk_dims": [10], "v_dims": [12], "mlp_dims": [4]}, "multiples of its 3 heads"),
    ({"qk_dims": [12], "v_dims": [12], "mlp_dims": [0]}, "mlp_dims\\[0\\]"),
    ({"qk_dims": [12], "v_dims": [12], "mlp_dims": [4], "global_attn_indexes": [1]}, "range\\(1\\)"),
    ({"qk_dims": [], "v_dims": [], "mlp_dims": []}, "empty"),
    ({"qk_dims": [12], "v_dims": [12], "mlp_dims": [4], "heads": 3}, "unknown keys"),
])
def test_bad_widths_are_rejected_with_a_named_field(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_widths({"embed_dim": 24, "num_heads": 3, "global_attn_indexes": [], **bad})


def test_inconsistent_split_qkv_is_rejected() -> None:
    state = {"blocks.0.attn.q.weight": torch.zeros(6, 4), "blocks.0.attn.k.weight": torch.zeros(3, 4),
             "blocks.0.attn.v.weight": torch.zeros(6, 4)}
    with pytest.raises(ValueError, match="different shapes"):
        fuse_split_qkv(state)
    with pytest.raises(ValueError, match="k.weight or"):
        fuse_split_qkv({"blocks.0.attn.q.weight": torch.zeros(6, 4)})
