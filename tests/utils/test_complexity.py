"""powersam.utils.complexity: MAC and parameter counts on hand-computable modules and on Meta's SAM."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reference_impls import import_segment_anything

from powersam.utils.complexity import MacReport, count_macs, count_params, format_count


def macs(module: nn.Module, *inputs: torch.Tensor, mode: str = "paper") -> int:
    return count_macs(module, tuple(inputs), mode).total


# ---------------------------------------------------------------------------------------------- tiny modules


@pytest.mark.parametrize("mode", ["paper", "thop", "full"])
def test_conv_linear_macs_agree_across_modes(mode: str) -> None:
    x = torch.randn(1, 3, 10, 10)
    # 8 out channels × 10×10 outputs × 3 in channels × 3×3 kernel; the bias is not counted
    assert macs(nn.Conv2d(3, 8, 3, padding=1), x, mode=mode) == 800 * 3 * 9
    # grouped, strided: 16×5×5 outputs × (8/4) × 3×3
    assert macs(nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4), torch.randn(1, 8, 10, 10), mode=mode) == 400 * 2 * 9
    # depthwise: 8×10×10 outputs × 1 × 3×3
    assert macs(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), torch.randn(1, 8, 10, 10), mode=mode) == 800 * 9
    # linear on a 3-d input: 2×3×7 outputs × 5 inputs each
    assert macs(nn.Linear(5, 7), torch.randn(2, 3, 5), mode=mode) == 42 * 5
    # batch size multiplies everything
    assert macs(nn.Conv2d(3, 8, 3, padding=1), torch.randn(4, 3, 10, 10), mode=mode) == 4 * 800 * 3 * 9


def test_conv_transpose_conventions() -> None:
    conv_t = nn.ConvTranspose2d(4, 6, kernel_size=2, stride=2)
    x = torch.randn(1, 4, 5, 5)
    # thop: output elements (6×10×10) × in_channels × kernel area
    assert macs(conv_t, x, mode="paper") == 600 * 4 * 4
    # true work: input elements (4×5×5) × out_channels × kernel area, 4× less for kernel == stride 2
    assert macs(conv_t, x, mode="full") == 100 * 6 * 4
    grouped = nn.ConvTranspose2d(4, 6, kernel_size=3, stride=1, padding=1, groups=2)
    assert macs(grouped, x, mode="paper") == 6 * 25 * 2 * 9
    assert macs(grouped, x, mode="full") == 4 * 25 * 3 * 9


class AttentionLike(nn.Module):
    """proj (Linear 8→8) then functional matmuls that only the "full" mode sees."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.proj(x)  # B×N×8
        scores = q @ q.transpose(-1, -2)  # B×N×N: N·N·8 MACs per batch
        mixed = torch.einsum("bnm,bmc->bnc", scores.softmax(-1), q)  # N·N·8 more
        attended = F.scaled_dot_product_attention(q[:, None], q[:, None], q[:, None])  # 2·N·N·8
        return mixed + attended[:, 0]


def test_attention_matmuls_only_in_full_mode() -> None:
    x = torch.randn(2, 6, 8)
    linear = 2 * 6 * 8 * 8
    assert macs(AttentionLike(), x, mode="paper") == linear
    assert macs(AttentionLike(), x, mode="full") == linear + 2 * (6 * 6 * 8) * 2 + 2 * (2 * 6 * 6 * 8)


def test_thop_mode_counts_norms_pools_upsampling_softmax() -> None:
    x = torch.randn(1, 8, 10, 10)
    assert macs(nn.BatchNorm2d(8), x, mode="thop") == 4 * 800
    assert macs(nn.BatchNorm2d(8, affine=False), x, mode="thop") == 2 * 800
    assert macs(nn.LayerNorm(10), x, mode="thop") == 4 * 800
    assert macs(nn.Upsample(scale_factor=2, mode="bilinear"), x, mode="thop") == 11 * 3200
    assert macs(nn.Upsample(scale_factor=2, mode="nearest"), x, mode="thop") == 3200
    assert macs(nn.AdaptiveAvgPool2d(1), x, mode="thop") == (100 + 1) * 8
    assert macs(nn.AvgPool2d(2), x, mode="thop") == 200
    assert macs(nn.Softmax(dim=1), x, mode="thop") == 100 * (3 * 8 - 1)
    for module in (nn.BatchNorm2d(8), nn.Upsample(scale_factor=2), nn.Softmax(dim=1)):
        assert macs(module, x, mode="paper") == 0 and macs(module, x, mode="full") == 0


class TwoStage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])  # called element by element
        self.head = nn.Linear(4, 2)
        self.unused = nn.Linear(100, 100)

    def forward(self, x: torch.Tensor, repeat: int = 1) -> torch.Tensor:
        y = self.stem(x).flatten(2).transpose(1, 2)  # 1×25×4
        for _ in range(repeat):
            for block in self.blocks:
                y = block(y)
        y = y @ torch.ones(4, 4)  # work of the root itself: 25·4·4
        return self.head(y)


@pytest.mark.parametrize("mode", ["paper", "full"])
def test_breakdown_by_top_level_child(mode: str) -> None:
    x = torch.randn(1, 3, 5, 5)
    report = count_macs(TwoStage(), (x,), mode)
    stem, block, head, root = 25 * 4 * 3, 25 * 4 * 4, 25 * 2 * 4, 25 * 4 * 4
    expected = {"stem": stem, "blocks": 2 * block, "head": head}
    if mode == "full":
        expected["(self)"] = root
    assert report.by_child == expected and report.total == sum(expected.values())
    assert isinstance(report, MacReport) and report.mode == mode
    assert str(report).startswith(f"{format_count(report.total)}") and "blocks" in str(report)
    # keyword inputs, and modules called several times count every call
    twice = count_macs(TwoStage(), {"x": x, "repeat": 2}, mode)
    assert twice.by_child["blocks"] == 4 * block


def test_count_macs_restores_training_flags_and_buffers() -> None:
    model = TwoStage().train()
    model.stem[1].eval()  # e.g. a frozen BatchNorm inside a training model
    running_mean = model.stem[1].running_mean.clone()
    count_macs(model, torch.randn(1, 3, 5, 5), "full")
    assert model.training and model.head.training and not model.stem[1].training
    assert torch.equal(model.stem[1].running_mean, running_mean)
    assert all(not h for m in model.modules() for h in (m._forward_hooks, m._forward_pre_hooks))


def test_count_macs_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        count_macs(nn.Linear(2, 2), (torch.randn(1, 2),), "flops")
    with pytest.raises(TypeError, match="inputs"):
        count_macs(nn.Linear(2, 2), [torch.randn(1, 2)])
    with pytest.raises(TypeError, match="nn.Module"):
        count_macs(lambda x: x, (torch.randn(1, 2),))
    assert count_macs(nn.Identity(), torch.randn(3)).total == 0  # no counted layers at all


class WithBareParameter(nn.Module):
    """A non-leaf module holding a bare parameter (like SAM's pos_embed) and a shared (tied) layer."""

    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 10))
        self.a = nn.Linear(10, 10)  # 110
        self.b = self.a  # tied: counted once
        self.c = nn.Sequential(nn.Linear(10, 2, bias=False))  # 20


def test_count_params_full_and_leaf_only() -> None:
    model = WithBareParameter()
    assert count_params(model) == 10 + 110 + 20
    assert count_params(model, leaf_only=True) == 110 + 20
    assert count_params(nn.Linear(3, 4), leaf_only=True) == 16  # the root itself is a leaf
    assert count_params(nn.Sequential()) == 0
    with pytest.raises(TypeError):
        count_params("model")


@pytest.mark.parametrize("n, unit, text", [
    (2_942_916, None, "2.94 M"),
    (10.99e9, None, "10.99 G"),
    (368.7e9, "G", "368.70 G"),
    (1_812_351_488, "M", "1812.35 M"),
    (512, None, "512.00"),
    (0, None, "0.00"),
    (-2_500, None, "-2.50 K"),
    (3.2e12, None, "3.20 T"),
])
def test_format_count(n, unit, text) -> None:
    assert format_count(n, unit) == text


def test_format_count_rejects_unknown_unit() -> None:
    with pytest.raises(ValueError, match="unit"):
        format_count(1, "B")


# ---------------------------------------------------------------------------------------------- SAM (Meta)


def vit_paper_macs(dim: int, depth: int, global_blocks: set[int], grid: int, window: int, out: int) -> int:
    """Linear+Conv MACs of SAM's ImageEncoderViT: windowed blocks run qkv/proj on the zero-padded grid."""
    padded = -(-grid // window) * window
    tokens, window_tokens = grid * grid, padded * padded
    total = tokens * dim * 3 * 16 * 16  # patch embedding
    for i in range(depth):
        total += (tokens if i in global_blocks else window_tokens) * 4 * dim * dim  # qkv + proj
        total += tokens * 8 * dim * dim  # MLP 4× expansion
    return total + tokens * out * dim + tokens * out * out * 9  # neck 1×1 and 3×3 convs


def vit_attention_macs(dim: int, depth: int, global_blocks: set[int], grid: int, window: int) -> int:
    """QKᵀ, attn·V and the two decomposed relative-position einsums, over all heads."""
    padded = -(-grid // window) * window
    total = 0
    for i in range(depth):
        side, count = (grid, 1) if i in global_blocks else (window, (padded // window) ** 2)
        n = side * side
        total += count * dim * (2 * n * n + n * 2 * side)
    return total


def test_small_sam_vit_encoder_matches_analytic_counts() -> None:
    import_segment_anything()
    from segment_anything.modeling import ImageEncoderViT

    dim, depth, global_blocks, out = 64, 2, {1}, 32
    encoder = ImageEncoderViT(img_size=256, embed_dim=dim, depth=depth, num_heads=2, out_chans=out,
                              use_rel_pos=True, window_size=14, global_attn_indexes=tuple(global_blocks))
    x = torch.randn(1, 3, 256, 256)
    paper = vit_paper_macs(dim, depth, global_blocks, grid=16, window=14, out=out)
    assert count_macs(encoder, (x,), "paper").total == paper
    layer_norms = depth * 2 * (16 * 16 * dim) * 4  # thop counts nn.LayerNorm (affine) as 4 ops per element
    assert count_macs(encoder, (x,), "thop").total == paper + layer_norms
    full = count_macs(encoder, (x,), "full")
    assert full.total == paper + vit_attention_macs(dim, depth, global_blocks, grid=16, window=14)
    assert set(full.by_child) == {"patch_embed", "blocks", "neck"}


def test_analytic_formula_reproduces_spec_vit_b_numbers() -> None:
    """The formulas the small test checks give the spec's ViT-B numbers at 1024 (368.7 G / 486.0 G)."""
    paper = vit_paper_macs(768, 12, {2, 5, 8, 11}, grid=64, window=14, out=256)
    full = paper + vit_attention_macs(768, 12, {2, 5, 8, 11}, grid=64, window=14)
    assert paper == pytest.approx(368.7e9, abs=0.05e9)
    assert full == pytest.approx(486.0e9, abs=0.05e9)


class PromptedDecoder(nn.Module):
    """SAM's prompt encoder + mask decoder for one image embedding and a batch of box prompts."""

    def __init__(self) -> None:
        super().__init__()
        import_segment_anything()
        from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

        self.prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                            input_image_size=(1024, 1024), mask_in_chans=16)
        self.mask_decoder = MaskDecoder(
            transformer_dim=256, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8))

    def forward(self, image_embedding: torch.Tensor, boxes: torch.Tensor):
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        return self.mask_decoder(image_embedding, self.prompt_encoder.get_dense_pe(), sparse, dense,
                                 multimask_output=False)


def decoder_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, 256, 64, 64), torch.tensor([[10.0, 20.0, 300.0, 400.0]])


def test_sam_decoder_one_box_prompt() -> None:
    decoder = PromptedDecoder()
    full = count_macs(decoder, decoder_inputs(), "full")
    assert full.total == pytest.approx(1.81e9, abs=0.005e9)  # spec §2.5: 1.81 G per box prompt
    paper = count_macs(decoder, decoder_inputs(), "paper")
    # thop's transposed-conv convention counts the two 2×2/s2 upscaling convs 4× (spec §9.7 reconciliation)
    assert paper.total == pytest.approx(2.974e9, rel=1e-3)
    assert set(paper.by_child) == {"mask_decoder"}  # the box path of the prompt encoder has no Linear/Conv


def test_sam_vit_b_parameter_counts() -> None:
    sa = import_segment_anything()
    with torch.device("meta"):
        sam = sa.build_sam_vit_b()
    assert count_params(sam.image_encoder) == 89_670_912  # 89.67 M
    assert count_params(sam) == 93_735_472  # 93.74 M
    # thop-style: pos_embed (3.146 M) and rel_pos (0.093 M) held by non-leaf modules drop out → 90.50 M,
    # which + YOLOX-S 8.94 M gives the paper's 99.43 M for "ViT-B D" (spec §9.7)
    assert count_params(sam, leaf_only=True) == 90_497_072


@pytest.mark.parametrize("variant, paper, full, table2", [
    ("vit_b", 368.70e9, 486.04e9, 406.27),
    ("vit_h", 2732.30e9, None, 2770.90),
])
def test_sam_encoders_at_1024_on_meta_device(variant, paper, full, table2) -> None:
    """Full-size counts on the meta device (shapes only, no compute), against the spec and paper Table 2."""
    sa = import_segment_anything()
    with torch.device("meta"):
        sam = sa.sam_model_registry[variant]()
        decoder = PromptedDecoder()
    x = torch.zeros(1, 3, 1024, 1024, device="meta")
    embedding, boxes = (t.to("meta") for t in decoder_inputs())
    assert count_macs(sam.image_encoder, (x,), "paper").total == pytest.approx(paper, abs=0.01e9)
    if full is not None:
        assert count_macs(sam.image_encoder, (x,), "full").total == pytest.approx(full, abs=0.01e9)
    # Table 2 "ViT-B/H D" GFLOPs = SAM (thop, one box prompt) + YOLOX-S 34.28 G (spec §9.7)
    sam_thop = count_macs(sam.image_encoder, (x,), "thop").total + count_macs(decoder, (embedding, boxes), "thop").total
    assert (sam_thop + 34.28e9) / 1e9 == pytest.approx(table2, abs=0.01)


def test_real_tensors_count_what_the_meta_device_counts() -> None:
    """The full-size counts above come from the meta device (shapes only); running real tensors through the same
    counter must give the same totals. Checked on Meta's ViT-B blocks (width, heads, window, rel-pos) at a 256 input,
    where a forward takes a second instead of a minute."""
    from functools import partial

    import_segment_anything()
    from segment_anything.modeling import ImageEncoderViT

    def encoder():
        return ImageEncoderViT(
            img_size=256, embed_dim=768, depth=4, num_heads=12, global_attn_indexes=(1, 3), window_size=14,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, qkv_bias=True, out_chans=256)

    with torch.device("meta"):
        on_meta = encoder()
    real = encoder()
    for mode in ("paper", "full"):
        want = count_macs(on_meta, (torch.zeros(1, 3, 256, 256, device="meta"),), mode).total
        got = count_macs(real, (torch.randn(1, 3, 256, 256),), mode).total
        assert got == want > 0, mode
