"""SAM v1 (powersam.models.sam): checkpoint layout and numerical equivalence with Meta's segment-anything."""
from __future__ import annotations

import copy
import importlib
import math
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:  # tests/ holds reference_impls.py; a tests/conftest.py may add it too
    sys.path.insert(0, _TESTS_DIR)

from reference_impls import import_segment_anything  # noqa: E402

from powersam.models.sam import (  # noqa: E402
    SAM_VIT_CONFIGS,
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    build_mask_decoder,
    build_prompt_encoder,
    build_sam_vit,
)
from powersam.models.sam import image_encoder as our_image_encoder  # noqa: E402

SMALL_IMG = 256  # 16×16 tokens: windows of 14 need padding to 28, global rel-pos tables have 31 rows
TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def assert_close_scaled(ours: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> None:
    """max |ours − ref| <= tol · max(1, max |ref|): absolute for O(1) outputs, relative for large logits."""
    assert ours.shape == ref.shape, f"shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(ours).all()
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    error = (ours - ref).abs().max().item() if ref.numel() else 0.0
    assert error <= tol * scale, f"max abs error {error:.3g} > {tol:g} × scale {scale:.3g}"


def randomize_(module: nn.Module, seed: int) -> None:
    """Give every parameter a non-trivial random value (SAM zero-initialises pos_embed and rel_pos).

    Weight matrices get std 1/sqrt(fan_in) so activations stay O(1); embeddings, positional tables, biases and norm
    affines get std 0.5 so they visibly change the outputs.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for submodule in module.modules():
            for name, param in submodule.named_parameters(recurse=False):
                is_table = isinstance(submodule, nn.Embedding) or name in ("pos_embed", "rel_pos_h", "rel_pos_w")
                std = 0.5 if is_table or param.ndim < 2 else 1.0 / math.sqrt(param[0].numel())
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def reference_modeling():
    """``segment_anything.modeling`` (imported by name: after the torchvision stand-in retry the package object
    may lack the ``modeling`` attribute although the submodule is loaded)."""
    import_segment_anything()
    return importlib.import_module("segment_anything.modeling")


def reference_sam(img_size: int, vit: dict):
    """Meta's Sam with the given ViT encoder config (SAM's fixed settings otherwise) at any input size."""
    sa_modeling = reference_modeling()
    grid = img_size // 16
    return sa_modeling.Sam(
        image_encoder=sa_modeling.ImageEncoderViT(
            img_size=img_size,
            patch_size=16,
            embed_dim=vit["embed_dim"],
            depth=vit["depth"],
            num_heads=vit["num_heads"],
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(vit["global_attn_indexes"]),
            window_size=14,
            out_chans=256,
        ),
        prompt_encoder=sa_modeling.PromptEncoder(
            embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=16
        ),
        mask_decoder=sa_modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=sa_modeling.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    ).eval()


# A shallow ViT for tests that exercise the prompt side and the Sam glue rather than the encoder.
TINY_VIT = dict(embed_dim=96, depth=2, num_heads=2, global_attn_indexes=(1,))


def build_pair(img_size: int, vit: dict, seed: int = 0):
    """(ours, Meta's) with identical random weights: Meta's state dict loaded into ours with strict=True."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        ref = reference_sam(img_size, vit)
        randomize_(ref, seed)
        ours = build_sam_vit(vit, img_size=img_size)
        ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


@pytest.fixture(scope="module")
def pair():
    return build_pair(SMALL_IMG, TINY_VIT)


@pytest.fixture(scope="module")
def vit_b_pair():
    return build_pair(SMALL_IMG, SAM_VIT_CONFIGS["vit_b"])


# ---------------------------------------------------------------------------------------------- checkpoint layout


@pytest.mark.parametrize("variant,expected_keys", [("vit_b", 314), ("vit_l", 482), ("vit_h", 594)])
def test_state_dict_layout_matches_segment_anything(variant, expected_keys):
    sa = import_segment_anything()
    reference_builder = {"vit_b": sa.build_sam_vit_b, "vit_l": sa.build_sam_vit_l, "vit_h": sa.build_sam_vit_h}
    with torch.device("meta"):  # shapes only: no memory, no init cost
        ours = build_sam_vit(variant)
        ref = reference_builder[variant]()
    ours_layout = [(k, tuple(v.shape)) for k, v in ours.state_dict().items()]
    ref_layout = [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]
    assert len(ours_layout) == expected_keys
    assert ours_layout == ref_layout
    keys = dict(ours_layout)
    assert "pixel_mean" not in keys and "pixel_std" not in keys
    assert keys["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] == (2, 128)
    assert keys["mask_decoder.mask_tokens.weight"] == (4, 256)
    assert ours.img_size == 1024


def test_vit_b_encoder_key_count_and_buffers():
    with torch.device("meta"):
        sam = build_sam_vit("vit_b")
    state = sam.state_dict()
    assert sum(k.startswith("image_encoder.") for k in state) == 177
    assert sum(k.startswith("prompt_encoder.") for k in state) == 17
    assert sum(k.startswith("mask_decoder.") for k in state) == 120
    buffers = dict(sam.named_buffers())
    assert "pixel_mean" in buffers and "pixel_mean" not in state  # registered, but non-persistent


def test_small_img_size_changes_grid_dependent_shapes():
    with torch.device("meta"):
        sam = build_sam_vit("vit_b", img_size=SMALL_IMG)
    state = sam.state_dict()
    assert state["image_encoder.pos_embed"].shape == (1, 16, 16, 768)
    assert state["image_encoder.blocks.2.attn.rel_pos_h"].shape == (31, 64)  # global block: 2·16−1
    assert state["image_encoder.blocks.0.attn.rel_pos_h"].shape == (27, 64)  # windowed block: 2·14−1
    assert sam.prompt_encoder.image_embedding_size == (16, 16)
    assert sam.prompt_encoder.mask_input_size == (64, 64)
    assert sam.img_size == SMALL_IMG


def test_slimsam_uniform_rows_use_mlp_dim():
    with torch.device("meta"):
        sam = build_sam_vit("vit_p50")
    state = sam.state_dict()
    assert state["image_encoder.blocks.0.mlp.lin1.weight"].shape == (1536, 384)
    assert state["image_encoder.blocks.0.attn.qkv.weight"].shape == (1152, 384)
    assert len(state) == 314
    custom = dict(SAM_VIT_CONFIGS["vit_b"], mlp_dim=100)
    with torch.device("meta"):
        encoder = build_sam_vit(custom).image_encoder
    assert encoder.blocks[5].mlp.lin2.weight.shape == (768, 100)


# ---------------------------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("which,batch", [("vit_b", 1), ("tiny", 2)])
def test_image_encoder_matches_reference(request, which, batch):
    ours, ref = request.getfixturevalue("vit_b_pair" if which == "vit_b" else "pair")
    images = torch.randn(batch, 3, SMALL_IMG, SMALL_IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref.image_encoder(images)
        got = ours.image_encoder(images)
    assert got.shape == (batch, 256, 16, 16)
    assert expected.std() > 0.1  # the random weights give a non-trivial embedding
    assert_close_scaled(got, expected)


def _prompt_cases(img_size: int, batch: int = 3):
    generator = torch.Generator().manual_seed(2)
    coords = torch.rand(batch, 4, 2, generator=generator) * img_size
    labels = torch.tensor([[1, 0, -1, 1], [0, 0, 1, -1], [1, 1, 1, 1]])[:batch]
    corners = torch.rand(batch, 2, 2, generator=generator).sort(dim=1).values * img_size
    boxes = corners.reshape(batch, 4)
    masks = torch.randn(batch, 1, img_size // 4, img_size // 4, generator=generator) * 5
    return {
        "points": dict(points=(coords, labels), boxes=None, masks=None),
        "boxes": dict(points=None, boxes=boxes, masks=None),
        "points_boxes": dict(points=(coords, labels), boxes=boxes, masks=None),
        "masks": dict(points=None, boxes=None, masks=masks),
        "points_masks": dict(points=(coords, labels), boxes=None, masks=masks),
        "all": dict(points=(coords, labels), boxes=boxes, masks=masks),
        "nothing": dict(points=None, boxes=None, masks=None),
        "single_point": dict(points=(coords[:1, :1], torch.ones(1, 1)), boxes=None, masks=None),
    }


@pytest.mark.parametrize("case", list(_prompt_cases(SMALL_IMG)))
def test_prompt_encoder_matches_reference(pair, case):
    ours, ref = pair
    prompts = _prompt_cases(SMALL_IMG)[case]
    with torch.no_grad():
        ref_sparse, ref_dense = ref.prompt_encoder(**prompts)
        sparse, dense = ours.prompt_encoder(**prompts)
    assert sparse.shape == ref_sparse.shape and dense.shape == ref_dense.shape
    assert_close_scaled(sparse, ref_sparse)
    assert_close_scaled(dense, ref_dense)


def test_prompt_encoder_padding_rule(pair):
    ours, _ = pair
    coords = torch.tensor([[[10.0, 20.0], [30.0, 40.0]]])
    labels = torch.tensor([[1, -1]])
    box = torch.tensor([[5.0, 5.0, 50.0, 60.0]])
    with torch.no_grad():
        sparse_no_box, _ = ours.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        sparse_box, _ = ours.prompt_encoder(points=(coords, labels), boxes=box, masks=None)
    assert sparse_no_box.shape == (1, 3, 256)  # 2 points + 1 padding point
    assert sparse_box.shape == (1, 4, 256)  # 2 points + 2 box corners, no padding
    not_a_point = ours.prompt_encoder.not_a_point_embed.weight[0]
    torch.testing.assert_close(sparse_no_box[0, 1], not_a_point)  # label −1: position dropped
    torch.testing.assert_close(sparse_no_box[0, 2], not_a_point)  # the appended padding point
    assert not torch.allclose(sparse_no_box[0, 0], not_a_point)


def test_prompt_encoder_ignored_label_and_corner_labels(pair):
    ours, _ = pair
    box = torch.tensor([[12.0, 30.0, 100.0, 90.0]])
    coords = box.reshape(1, 2, 2)
    with torch.no_grad():
        ignored, _ = ours.prompt_encoder(points=(coords, torch.tensor([[-2, 1]])), boxes=None, masks=None)
        as_points, _ = ours.prompt_encoder(points=(coords, torch.tensor([[2, 3]])), boxes=None, masks=None)
        as_box, _ = ours.prompt_encoder(points=None, boxes=box, masks=None)
    assert torch.count_nonzero(ignored[0, 0]) == 0  # EdgeSAM's "ignored click" label −2
    # Labels 2/3 are the box-corner embeddings, the way SAM's ONNX export encodes boxes.
    assert_close_scaled(as_points[:, :2], as_box)


def test_dense_pe_matches_reference(pair):
    ours, ref = pair
    got = ours.prompt_encoder.get_dense_pe()
    expected = ref.prompt_encoder.get_dense_pe()
    assert got.shape == (1, 256, 16, 16)
    assert_close_scaled(got, expected)


def _decoder_inputs(sam, prompts_case: str = "all"):
    prompts = _prompt_cases(SMALL_IMG)[prompts_case]
    embedding = torch.randn(1, 256, 16, 16, generator=torch.Generator().manual_seed(3))
    sparse, dense = sam.prompt_encoder(**prompts)
    return dict(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )


@pytest.mark.parametrize("prompts_case", ["points", "points_boxes", "all", "nothing"])
def test_mask_decoder_matches_reference(pair, prompts_case):
    ours, ref = pair
    with torch.no_grad():
        inputs = _decoder_inputs(ref, prompts_case)
        ref_all_masks, ref_all_iou = ref.mask_decoder.predict_masks(**inputs)
        all_masks, all_iou = ours.mask_decoder.predict_masks(**inputs)
        assert all_masks.shape == (ref_all_masks.shape[0], 4, 64, 64) and all_iou.shape == (all_masks.shape[0], 4)
        assert_close_scaled(all_masks, ref_all_masks)
        assert_close_scaled(all_iou, ref_all_iou)
        for multimask in (True, False):
            ref_masks, ref_iou = ref.mask_decoder(**inputs, multimask_output=multimask)
            masks, iou = ours.mask_decoder(**inputs, multimask_output=multimask)
            assert_close_scaled(masks, ref_masks)
            assert_close_scaled(iou, ref_iou)


@pytest.mark.parametrize("prompts_case", ["points", "points_boxes", "all"])
def test_mask_decoder_inference_shortcuts_equal_the_training_path(pair, prompts_case):
    """Under no_grad the decoder attends over shared keys once, runs the image→token attention as dense products
    and upscales in slices; with autograd on it runs SAM's op sequence. Both must give the same masks."""
    ours, _ = pair
    inputs = _decoder_inputs(ours, prompts_case)
    for multimask in (False, True):
        with torch.no_grad():
            fast, fast_iou = ours.mask_decoder(**inputs, multimask_output=multimask)
        plain, plain_iou = ours.mask_decoder(**inputs, multimask_output=multimask)
        assert plain.requires_grad  # the plain path really ran
        assert_close_scaled(fast, plain.detach())
        assert_close_scaled(fast_iou, plain_iou.detach())


def test_inference_leaves_the_callers_embeddings_unchanged(pair):
    """Inference accumulates the second layer's image→token output into its own image tokens in place; the
    caller's embeddings (one shared, one per prompt, one already laid out token-major) must stay as they were."""
    transformer = pair[0].mask_decoder.transformer
    generator = torch.Generator().manual_seed(6)
    pe = torch.randn(1, 256, 16, 16, generator=generator)
    tokens = torch.randn(3, 7, 256, generator=generator)
    shared = torch.randn(1, 256, 16, 16, generator=generator)
    per_prompt = torch.randn(3, 256, 16, 16, generator=generator)
    token_major_layout = torch.randn(3, 16, 16, 256, generator=generator).permute(0, 3, 1, 2)  # no copy is made
    for image in (shared, per_prompt, token_major_layout):
        before = image.clone()
        with torch.no_grad():
            fast_tokens, fast_keys = transformer(image, pe, tokens)
        torch.testing.assert_close(image, before, rtol=0, atol=0)
        plain_tokens, plain_keys = transformer(image, pe, tokens)  # autograd: SAM's op sequence
        torch.testing.assert_close(fast_keys, plain_keys.detach(), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast_tokens, plain_tokens.detach(), rtol=1e-4, atol=1e-4)


def test_final_attention_on_the_read_tokens_only_equals_their_rows(pair):
    """At inference only the tokens the decoder reads go through the final attention; they come out as the full
    run's rows (each token attends on its own there)."""
    transformer = pair[0].mask_decoder.transformer
    generator = torch.Generator().manual_seed(5)
    image, pe = torch.randn(1, 256, 16, 16, generator=generator), torch.randn(1, 256, 16, 16, generator=generator)
    tokens = torch.randn(3, 7, 256, generator=generator)
    with torch.no_grad():
        full, keys = transformer(image, pe, tokens)
        read, read_keys = transformer(image, pe, tokens, final_tokens=[0, 3])
    assert read.shape == (3, 2, 256)
    torch.testing.assert_close(read, full[:, [0, 3]], rtol=0, atol=1e-5)
    torch.testing.assert_close(read_keys, keys, rtol=0, atol=0)
    subset, _ = transformer(image, pe, tokens, final_tokens=[0, 3])  # with autograd: ignored, all tokens
    assert subset.shape == (3, 7, 256)


def test_token_major_is_the_plain_transpose_with_gradients():
    from powersam.models.sam.transformer import token_major

    x = torch.randn(3, 8, 5, 7, requires_grad=True)
    expected = x.flatten(2).transpose(1, 2)
    tokens = token_major(x)
    assert tokens.is_contiguous() and torch.equal(tokens, expected)
    tokens.square().sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach())
    laid_out = torch.randn(1, 5, 7, 8).permute(0, 3, 1, 2)  # already token-major in memory: no copy
    assert token_major(laid_out).data_ptr() == laid_out.data_ptr()


def test_dense_pe_reused_at_inference_follows_the_gaussian_matrix(pair):
    encoder = copy.deepcopy(pair[0].prompt_encoder)  # the fixture is shared: change a copy
    with torch.no_grad():
        first = encoder.get_dense_pe()
        assert encoder.get_dense_pe() is first  # reused
        state = {k: v.clone() for k, v in encoder.state_dict().items()}
        state["pe_layer.positional_encoding_gaussian_matrix"] *= 2
        encoder.load_state_dict(state)
        changed = encoder.get_dense_pe()
    torch.testing.assert_close(changed, encoder.get_dense_pe().detach())  # the same as computed afresh
    assert not torch.allclose(changed, first)
    with torch.no_grad():
        assert encoder.double().get_dense_pe().dtype == torch.float64  # a converted module does not reuse it


def test_mask_decoder_int_multimask_selects_tokens(pair):
    ours, _ = pair
    with torch.no_grad():
        inputs = _decoder_inputs(ours, "points")
        all_masks, all_iou = ours.mask_decoder.predict_masks(**inputs)
        # A list, not a dict: True == 1 as a dict key.
        expected_tokens = [(1, [0]), (3, [1, 2, 3]), (4, [0, 1, 2, 3]), (False, [0]), (True, [1, 2, 3])]
        for multimask, tokens in expected_tokens:
            masks, iou = ours.mask_decoder(**inputs, multimask_output=multimask)
            torch.testing.assert_close(masks, all_masks[:, tokens], rtol=0, atol=1e-6)
            torch.testing.assert_close(iou, all_iou[:, tokens], rtol=0, atol=1e-6)


def test_mask_decoder_one_embedding_per_prompt(pair):
    """A B×C×h×w image batch pairs embedding i with prompt i (vs. broadcasting a batch of 1)."""
    ours, _ = pair
    with torch.no_grad():
        inputs = _decoder_inputs(ours, "points_boxes")
        embeddings = torch.randn(3, 256, 16, 16, generator=torch.Generator().manual_seed(4))
        batched, batched_iou = ours.mask_decoder(**{**inputs, "image_embeddings": embeddings}, multimask_output=4)
        for i in range(3):
            single, single_iou = ours.mask_decoder(
                image_embeddings=embeddings[i : i + 1],
                image_pe=inputs["image_pe"],
                sparse_prompt_embeddings=inputs["sparse_prompt_embeddings"][i : i + 1],
                dense_prompt_embeddings=inputs["dense_prompt_embeddings"][i : i + 1],
                multimask_output=4,
            )
            assert_close_scaled(batched[i : i + 1], single)
            assert_close_scaled(batched_iou[i : i + 1], single_iou)
        # The prompts really see different images.
        assert not torch.allclose(batched[0], batched[1])


def test_get_rel_pos_interpolation_matches_reference():
    import_segment_anything()  # makes segment_anything importable
    table = torch.randn(27, 8, generator=torch.Generator().manual_seed(5))
    for q_size, k_size in [(14, 14), (20, 20), (7, 7), (10, 20), (20, 10)]:
        expected = importlib.import_module("segment_anything.modeling.image_encoder").get_rel_pos(q_size, k_size, table)
        got = our_image_encoder.get_rel_pos(q_size, k_size, table)
        assert got.shape == (q_size, k_size, 8)
        assert_close_scaled(got, expected)


def test_preprocess_and_postprocess_match_reference(pair):
    ours, ref = pair
    generator = torch.Generator().manual_seed(6)
    image = torch.rand(3, 200, 256, generator=generator) * 255
    expected = ref.preprocess(image)
    got = ours.preprocess(image)
    assert got.shape == (3, SMALL_IMG, SMALL_IMG)
    assert_close_scaled(got, expected)
    assert torch.count_nonzero(got[:, 200:]) == 0  # zero padding after normalisation
    batched = ours.preprocess(torch.stack([image, image]))
    assert_close_scaled(batched, torch.stack([expected, expected]))
    logits = torch.randn(2, 3, 64, 64, generator=generator)
    assert_close_scaled(
        ours.postprocess_masks(logits, (200, 256), (400, 512)), ref.postprocess_masks(logits, (200, 256), (400, 512))
    )


def test_sam_forward_matches_reference(pair):
    ours, ref = pair
    generator = torch.Generator().manual_seed(7)
    cases = _prompt_cases(SMALL_IMG, batch=2)
    batched_input = [
        {
            "image": torch.rand(3, 256, 192, generator=generator) * 255,
            "original_size": (512, 384),
            "point_coords": cases["points"]["points"][0],
            "point_labels": cases["points"]["points"][1],
            "boxes": cases["boxes"]["boxes"],
        },
        {
            "image": torch.rand(3, 160, 256, generator=generator) * 255,
            "original_size": (300, 480),
            "mask_inputs": cases["masks"]["masks"],
        },
    ]
    expected = ref(batched_input, multimask_output=True)
    got = ours(batched_input, multimask_output=3)  # the int form of SAM's multimask_output=True
    for got_item, expected_item in zip(got, expected):
        assert_close_scaled(got_item["low_res_logits"], expected_item["low_res_logits"])
        assert_close_scaled(got_item["iou_predictions"], expected_item["iou_predictions"])
        assert got_item["masks"].dtype == torch.bool and got_item["masks"].shape == expected_item["masks"].shape
        disagreement = (got_item["masks"] != expected_item["masks"]).float().mean().item()
        assert disagreement < 1e-3  # only pixels whose logit is ~0 may flip
    assert got[0]["masks"].shape == (2, 3, 512, 384) and got[1]["masks"].shape == (2, 3, 300, 480)


@pytest.mark.slow
def test_vit_b_at_1024_matches_reference():
    """ViT-B's width, heads and window at the official 1024 input: the 64×64 token grid, windows of 14 padded to 70,
    global attention with 64-long relative positions. Four blocks (two windowed, two global) cover every code path
    of the twelve at a third of the cost; the whole twelve-block ViT-B is compared at 256 above."""
    vit = dict(SAM_VIT_CONFIGS["vit_b"], depth=4, global_attn_indexes=(1, 3))
    ours, ref = build_pair(1024, vit, seed=11)
    image = torch.rand(3, 1024, 768, generator=torch.Generator().manual_seed(12)) * 255
    with torch.no_grad():
        expected = ref.image_encoder(ref.preprocess(image)[None])
        got = ours.image_encoder(ours.preprocess(image)[None])
    assert got.shape == (1, 256, 64, 64)
    assert_close_scaled(got, expected)


# ---------------------------------------------------------------------------------------------- behaviour


def test_encoder_accepts_another_token_grid(pair):
    ours, _ = pair
    with torch.no_grad():
        out = ours.image_encoder(torch.randn(1, 3, 320, 192))
    assert out.shape == (1, 256, 20, 12)  # pos_embed and global rel-pos tables are resampled
    assert torch.isfinite(out).all()


def test_forward_backward_small():
    torch.manual_seed(0)
    sam = build_sam_vit(dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=3), img_size=64)
    sam.train()
    images = torch.rand(2, 3, 64, 64) * 255
    embeddings = sam.image_encoder(sam.preprocess(images))  # 2×256×4×4
    coords = torch.rand(2, 3, 2) * 64
    labels = torch.tensor([[1, 0, -1], [1, 1, 0]])
    boxes = torch.tensor([[4.0, 4.0, 40.0, 50.0], [10.0, 0.0, 63.0, 30.0]])
    sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=boxes, masks=torch.randn(2, 1, 16, 16))
    masks, iou = sam.mask_decoder(embeddings, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=4)
    assert masks.shape == (2, 4, 16, 16) and iou.shape == (2, 4)
    loss = masks.sigmoid().mean() + iou.pow(2).mean()
    loss.backward()
    grads = {name: p.grad for name, p in sam.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    for name in (
        "image_encoder.patch_embed.proj.weight",
        "image_encoder.pos_embed",
        "image_encoder.blocks.0.attn.rel_pos_h",
        "image_encoder.blocks.1.attn.rel_pos_w",
        "prompt_encoder.point_embeddings.3.weight",
        "prompt_encoder.not_a_point_embed.weight",
        "prompt_encoder.mask_downscaling.0.weight",
        "mask_decoder.mask_tokens.weight",
        "mask_decoder.output_hypernetworks_mlps.0.layers.0.weight",
    ):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


def test_degenerate_prompt_counts(pair):
    ours, ref = pair
    dense_pe = ours.prompt_encoder.get_dense_pe()
    with torch.no_grad():
        # No prompt at all: zero sparse tokens, the decoder still predicts from its output tokens.
        sparse, dense = ours.prompt_encoder(points=None, boxes=None, masks=None)
        assert sparse.shape == (1, 0, 256) and dense.shape == (1, 256, 16, 16)
        masks, iou = ours.mask_decoder(torch.randn(1, 256, 16, 16), dense_pe, sparse, dense, True)
        assert masks.shape == (1, 3, 64, 64) and torch.isfinite(masks).all()
        # Zero objects: empty outputs rather than an error.
        sparse, dense = ours.prompt_encoder(points=(torch.zeros(0, 2, 2), torch.zeros(0, 2)), boxes=None, masks=None)
        assert sparse.shape == (0, 3, 256) and dense.shape == (0, 256, 16, 16)
        masks, iou = ours.mask_decoder(torch.randn(1, 256, 16, 16), dense_pe, sparse, dense, 1)
        assert masks.shape == (0, 1, 64, 64) and iou.shape == (0, 1)
        # Points exactly on the image border and zero-area boxes stay finite.
        edge = torch.tensor([[[0.0, 0.0], [SMALL_IMG - 1.0, SMALL_IMG - 1.0]]])
        box = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
        sparse, _ = ours.prompt_encoder(points=(edge, torch.ones(1, 2)), boxes=box, masks=None)
        ref_sparse, _ = ref.prompt_encoder(points=(edge, torch.ones(1, 2)), boxes=box, masks=None)
        assert_close_scaled(sparse, ref_sparse)


@pytest.mark.parametrize("bad", [2, 0, 5, -1, 3.0, "3", None])
def test_bad_multimask_output_raises(pair, bad):
    ours, _ = pair
    inputs = _decoder_inputs(ours, "points")
    with pytest.raises(ValueError, match="multimask_output"):
        ours.mask_decoder(**inputs, multimask_output=bad)
    with pytest.raises(ValueError, match="multimask_output"):
        ours([{"image": torch.zeros(3, 64, 64), "original_size": (64, 64)}], multimask_output=bad)


def test_bad_prompt_shapes_raise(pair):
    encoder = pair[0].prompt_encoder
    coords = torch.rand(2, 3, 2)
    cases = [
        (dict(points=(coords, torch.ones(2, 4)), boxes=None, masks=None), "labels"),
        (dict(points=(coords, torch.ones(3, 3)), boxes=None, masks=None), "labels"),
        (dict(points=(torch.rand(2, 3), torch.ones(2, 3)), boxes=None, masks=None), "coords"),
        (dict(points=(torch.rand(2, 3, 3), torch.ones(2, 3)), boxes=None, masks=None), "coords"),
        (dict(points=coords, boxes=None, masks=None), "points"),
        (dict(points=None, boxes=torch.rand(2, 2, 4), masks=None), "boxes"),
        (dict(points=None, boxes=torch.rand(2, 5), masks=None), "boxes"),
        (dict(points=(coords, torch.ones(2, 3)), boxes=torch.rand(3, 4), masks=None), "batch"),
        (dict(points=None, boxes=None, masks=torch.rand(2, 1, 32, 32)), "masks"),
        (dict(points=None, boxes=None, masks=torch.rand(2, 64, 64)), "masks"),
        (dict(points=(coords, torch.ones(2, 3)), boxes=None, masks=torch.rand(3, 1, 64, 64)), "masks"),
    ]
    for kwargs, word in cases:
        with pytest.raises(ValueError, match=word):
            encoder(**kwargs)


def test_bad_decoder_inputs_raise(pair):
    ours, _ = pair
    inputs = _decoder_inputs(ours, "points")  # 3 prompts
    bad = [
        dict(image_embeddings=torch.randn(2, 256, 16, 16)),  # neither 1 nor 3 images
        dict(image_embeddings=torch.randn(1, 128, 16, 16)),
        dict(image_pe=torch.randn(1, 256, 8, 8)),
        dict(dense_prompt_embeddings=torch.randn(2, 256, 16, 16)),
        dict(sparse_prompt_embeddings=torch.randn(3, 2, 128)),
    ]
    for override in bad:
        with pytest.raises(ValueError, match="MaskDecoder"):
            ours.mask_decoder(**{**inputs, **override}, multimask_output=True)


def test_bad_builder_and_sam_arguments_raise(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="vit_x"):
        build_sam_vit("vit_x")
    with pytest.raises(ValueError, match="multiple of 16"):
        build_prompt_encoder(img_size=100)
    with pytest.raises(ValueError, match="missing"):
        build_sam_vit(dict(embed_dim=64, depth=2))
    with pytest.raises(ValueError, match="divisible"):
        ImageEncoderViT(img_size=64, embed_dim=30, depth=1, num_heads=4)
    with pytest.raises(ValueError, match="global_attn_indexes"):
        ImageEncoderViT(img_size=64, embed_dim=32, depth=2, num_heads=4, global_attn_indexes=(2,))
    with pytest.raises(ValueError, match="larger than"):
        ours.preprocess(torch.zeros(3, SMALL_IMG + 16, 100))
    with pytest.raises(ValueError, match="3×h×w"):
        ours.preprocess(torch.zeros(1, SMALL_IMG, SMALL_IMG))
    with pytest.raises(ValueError, match="ImageEncoderViT"):
        ours.image_encoder(torch.zeros(1, 1, SMALL_IMG, SMALL_IMG))
    with pytest.raises(ValueError, match="point_labels"):
        ours([{"image": torch.zeros(3, 64, 64), "original_size": (64, 64), "point_coords": torch.zeros(1, 1, 2)}], True)
    with pytest.raises(ValueError, match="original_size"):
        ours([{"image": torch.zeros(3, 64, 64)}], True)


def test_sam_attributes(pair):
    ours, _ = pair
    assert isinstance(ours, Sam) and isinstance(ours.prompt_encoder, PromptEncoder)
    assert isinstance(ours.mask_decoder, MaskDecoder) and isinstance(build_mask_decoder(), MaskDecoder)
    assert ours.mask_threshold == 0.0 and ours.image_format == "RGB"
    assert ours.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])
    assert ours.pixel_std.flatten().tolist() == pytest.approx([58.395, 57.12, 57.375])
    assert not ours.training  # builders return eval mode, like segment-anything's
