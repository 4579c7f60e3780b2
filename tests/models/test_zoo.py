"""Every registered model: builds, runs forward + backward at a small size without NaN, and has the official
checkpoint layout (key counts from spec §2.5/§3.4/§10)."""
from __future__ import annotations

import pytest
import torch

from powersam.models.zoo import MODEL_GROUPS, MODEL_SPECS, build_model, expand_model_names, get_spec, list_models

# Keys of the SAM part (image_encoder + prompt_encoder + mask_decoder) = the official checkpoint files.
SAM_KEY_COUNTS = {
    "sam2_hiera_t": 311, "sam2_hiera_s": 359, "sam2_hiera_b+": 455, "sam2_hiera_l": 743,
    "vit_t": 230, "vit_p50": 314, "vit_p77": 314, "vit_b": 314, "vit_l": 482, "vit_h": 594, "m0": 593, "m1": 821}
# mmdet YOLOX-PAFPN + head (12 classes) keys under box_generator. / YOLOX-S detector keys under detector.
DETECTOR_KEY_COUNTS = {"bbpg": 252, "yolox_s": 462}


# Models whose architecture comes from their checkpoint (per-block widths) are built in their own tests.
BUILDABLE = [name for name in list_models() if get_spec(name).encoder != "pruned_vit"]


@pytest.mark.parametrize("name", BUILDABLE)
def test_state_dict_layout(name):
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_model(name)
    keys = list(model.state_dict())
    detector_prefixes = ("box_generator.", "detector.")
    sam_keys = [k for k in keys if not k.startswith(detector_prefixes)]
    assert len(sam_keys) == SAM_KEY_COUNTS[spec.encoder]
    assert {k.split(".")[0] for k in sam_keys} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert "pixel_mean" not in keys and "pixel_std" not in keys
    if spec.detector is None:
        assert len(keys) == len(sam_keys)
    else:
        assert len(keys) - len(sam_keys) == DETECTOR_KEY_COUNTS[spec.detector]


# Like timm's model tests: a backward pass through the encoder only for encoders up to this size. ViT-L/H and
# Hiera-L (0.2-0.6 G parameters) cost minutes of CI for weight gradients that ViT-B / Hiera-B+ cover with the same
# code; they still run forward, and the backward through their decoder (and detector).
MAX_BACKWARD_ENCODER_PARAMS = 150e6


@pytest.mark.parametrize("name", BUILDABLE)
def test_forward_backward_small(name):
    img_size = 128
    model = build_model(name, img_size=img_size).train()
    encoder_params = sum(p.numel() for p in model.image_encoder.parameters())
    encoder_backward = encoder_params <= MAX_BACKWARD_ENCODER_PARAMS
    if not encoder_backward:
        model.image_encoder.requires_grad_(False)
    x = torch.randn(2, 3, img_size, img_size)
    embedding = model.image_encoder(x)
    assert embedding.shape == (2, 256, img_size // 16, img_size // 16)
    boxes = torch.tensor([[10.0, 12.0, 80.0, 90.0], [0.0, 0.0, 127.0, 127.0]])
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
    logits, iou = model.mask_decoder(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=4,
    )
    assert logits.shape == (2, 4, img_size // 4, img_size // 4) and iou.shape == (2, 4)
    loss = logits.mean() + iou.mean()
    if hasattr(model, "box_generator"):
        outputs = model.box_generator(model.image_encoder.forward_stages(x))
        loss = loss + sum(level.mean() for per_kind in outputs for level in per_kind)
    if hasattr(model, "detector"):
        outputs = model.detector(x.clamp(-3, 3) * 40 + 120)
        loss = loss + sum(level.mean() for per_kind in outputs for level in per_kind)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    # The decoder and encoder both learn from this loss.
    assert model.mask_decoder.iou_token.weight.grad.abs().sum() > 0
    first_encoder_param = next(model.image_encoder.parameters())
    if encoder_backward:
        assert first_encoder_param.grad is not None and first_encoder_param.grad.abs().sum() > 0
    else:
        assert name.startswith(("sam_vit_l", "sam_vit_h", "sam2_hiera_l")), f"{name}: {encoder_params / 1e6:.0f} M encoder parameters"


def test_models_are_built_in_eval_mode():
    assert not build_model("powersam_s", img_size=64).training


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'powersam_xl'.*powersam_s"):
        build_model("powersam_xl")


def test_name_required_without_checkpoint():
    with pytest.raises(ValueError, match="needs a model name"):
        build_model()


def test_class_names_set_detector_width():
    model = build_model("powersam_s", img_size=64, class_names=["insulator", "bushing"])
    assert model.class_names == ["insulator", "bushing"]
    assert model.box_generator.bbox_head.multi_level_conv_cls[0].out_channels == 2


def test_every_spec_has_a_description():
    for spec in MODEL_SPECS.values():
        assert spec.description, spec.name


def test_model_groups_hold_known_models():
    assert MODEL_GROUPS["table1"] == (
        "sam_vit_b", "sam_vit_h", "sam2_hiera_l", "slimsam_50", "edgesam", "powersam_b", "powersam_s")
    from powersam.bench.suite import DEFAULT_MODELS

    assert list(MODEL_GROUPS["table2"]) == DEFAULT_MODELS.split(",")  # the bench's default rows = Table 2
    for group, members in MODEL_GROUPS.items():
        assert group not in MODEL_SPECS, "a group must not shadow a model name"
        assert members and set(members) <= set(MODEL_SPECS) and len(set(members)) == len(members)


def test_expand_model_names_mixes_groups_and_models():
    assert expand_model_names("edgesam") == ["edgesam"]
    assert expand_model_names(" edgesam , table2,powersam_s,edgesam,") == [
        "edgesam", "powersam_s", "powersam_b", "powersam_s_decoupled", "powersam_b_decoupled"]
    assert expand_model_names(["table1", "sam_vit_b,sam_vit_t"]) == [*MODEL_GROUPS["table1"], "sam_vit_t"]
    assert expand_model_names("table2,table2") == list(MODEL_GROUPS["table2"])


def test_expand_model_names_errors_name_unknown_entries_and_list_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'powersam_xl'; known groups: table1, table2; "
                                         r"known models: sam_vit_b, .*powersam_s"):
        expand_model_names("edgesam,powersam_xl")
    with pytest.raises(ValueError, match=r"unknown models 'tabel1', 'sam3'; known groups"):
        expand_model_names("tabel1,edgesam,sam3,tabel1")
    with pytest.raises(ValueError, match="no model given; known groups: table1"):
        expand_model_names(" , ")
