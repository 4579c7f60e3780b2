"""build_model(..., checkpoint=...) with files laid out like the official ones, and its errors."""
from __future__ import annotations

import pytest
import torch

from powersam.checkpoint import CheckpointError, CheckpointMismatchError, save_checkpoint
from powersam.models.zoo import build_model

IMG = 64


def _sam_state(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("box_generator.")}


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(3)
    return build_model("powersam_s", img_size=IMG)


@pytest.mark.parametrize("wrap", [None, "model", "state_dict"])
def test_official_powersam_layout_loads_strictly(source, tmp_path, wrap):
    state = _sam_state(source)
    assert len(state) == 593
    path = tmp_path / "powersam_s.pth"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    model = build_model("powersam_s", checkpoint=path, img_size=IMG)
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    # The detector is published separately; its absence is reported, not silently hidden.
    assert "box_generator." in model.load_report.absent_optional_prefixes


def test_edgesam_rpn_keys_are_reported_and_ignored(tmp_path):
    torch.manual_seed(4)
    edge = build_model("edgesam", img_size=IMG)
    state = dict(edge.state_dict())
    state["fpn.lateral.0.weight"] = torch.zeros(4, 4)
    state["rpn_head.cls.weight"] = torch.zeros(1, 4)
    path = tmp_path / "edge_sam.pth"
    torch.save(state, path)
    model = build_model("edgesam", checkpoint=path, img_size=IMG)
    assert set(model.load_report.ignored_keys) == {"fpn.lateral.0.weight", "rpn_head.cls.weight"}


def test_wrong_architecture_names_what_the_file_looks_like(source, tmp_path):
    path = tmp_path / "powersam_s.pth"
    torch.save(_sam_state(source), path)
    with pytest.raises(CheckpointMismatchError) as err:
        build_model("powersam_b", checkpoint=path, img_size=IMG)
    message = str(err.value)
    assert "powersam_s" in message and "image_encoder.features" in message


def test_renamed_and_truncated_keys_are_listed(source, tmp_path):
    state = _sam_state(source)
    state["mask_decoder.iou_token.weight_renamed"] = state.pop("mask_decoder.iou_token.weight")
    del state["prompt_encoder.no_mask_embed.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as err:
        build_model("powersam_s", checkpoint=path, img_size=IMG)
    message = str(err.value)
    assert "mask_decoder.iou_token.weight" in message
    assert "prompt_encoder.no_mask_embed.weight" in message
    assert "iou_token.weight_renamed" in message


def test_truncated_file_is_named(source, tmp_path):
    path = tmp_path / "truncated.pth"
    torch.save(_sam_state(source), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        build_model("powersam_s", checkpoint=path, img_size=IMG)


def test_non_dict_pickle_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(CheckpointError, match="list"):
        build_model("powersam_s", checkpoint=path, img_size=IMG)


def test_own_checkpoint_records_its_model(source, tmp_path):
    path = save_checkpoint(
        tmp_path / "trained.pt",
        source.state_dict(),
        model_name="powersam_s",
        model_config={"img_size": IMG},
        class_names=[f"c{i}" for i in range(12)],
    )
    model = build_model(checkpoint=path)
    assert model.class_names[0] == "c0" and model.img_size == IMG
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(ValueError, match="written for model 'powersam_s'"):
        build_model("powersam_b", checkpoint=path)


def test_detector_checkpoint_in_mmdet_layout(source, tmp_path):
    """The converted official BBPG file: backbone.* (a RepViT copy), neck.*, bbox_head.*."""
    sam_path = tmp_path / "powersam_s.pth"
    torch.save(_sam_state(source), sam_path)
    detector = {f"backbone.{k}": v for k, v in source.image_encoder.state_dict().items()}
    for key, value in source.box_generator.state_dict().items():
        detector[key] = value + 1.0 if value.is_floating_point() else value
    det_path = tmp_path / "bbpg_plain.pth"
    torch.save(detector, det_path)
    model = build_model("powersam_s", checkpoint=sam_path, detector_checkpoint=det_path, img_size=IMG)
    for key, value in source.box_generator.state_dict().items():
        expected = value + 1.0 if value.is_floating_point() else value
        assert torch.equal(model.box_generator.state_dict()[key], expected), key

    broken = dict(detector)
    broken.pop("bbox_head.multi_level_conv_obj.0.weight")
    torch.save(broken, det_path)
    with pytest.raises(CheckpointMismatchError, match="multi_level_conv_obj.0.weight"):
        build_model("powersam_s", checkpoint=sam_path, detector_checkpoint=det_path, img_size=IMG)


def test_detector_checkpoint_needs_a_detector(tmp_path):
    with pytest.raises(ValueError, match="no detector"):
        build_model("edgesam", detector_checkpoint=tmp_path / "x.pth", img_size=IMG)


def test_pruned_vit_rebuilds_from_a_plain_state_dict_and_from_its_own_checkpoint(tmp_path):
    from powersam.models.slimsam import build_slimsam

    widths = {
        "embed_dim": 32, "qk_dims": [24, 12], "v_dims": [24, 36], "mlp_dims": [40, 72], "num_heads": [3, 3],
        "global_attn_indexes": [1], "window_size": 2, "patch_size": 16, "use_rel_pos": True, "qkv_bias": True,
    }
    torch.manual_seed(5)
    pruned = build_slimsam(widths, img_size=IMG)
    plain = tmp_path / "slim_plain.pth"
    torch.save(pruned.state_dict(), plain)
    model = build_model("slimsam_custom", checkpoint=plain)
    assert model.img_size == IMG
    assert [b.mlp.lin1.out_features for b in model.image_encoder.blocks] == [40, 72]
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(model.image_encoder(x), pruned.image_encoder(x))

    own = save_checkpoint(tmp_path / "slim.pt", model.state_dict(), "slimsam_custom", model_config=model.model_config)
    again = build_model(checkpoint=own)
    with torch.no_grad():
        torch.testing.assert_close(again.image_encoder(x), pruned.image_encoder(x))
    with pytest.raises(ValueError, match="needs per-block widths"):
        build_model("slimsam_custom", img_size=IMG)


def test_a_detect_and_segment_checkpoint_loads_as_its_interactive_part(source, tmp_path):
    # The README's interactive example on a checkpoint the pipeline writes (it holds the box generator too).
    path = save_checkpoint(tmp_path / "trained.pt", source.state_dict(), model_name="powersam_s",
                           model_config={"img_size": IMG})
    model = build_model("powersam_s", checkpoint=path, with_detector=False)
    assert not hasattr(model, "box_generator")
    assert any(k.startswith("box_generator.") for k in model.load_report.ignored_keys)
    for key, value in _sam_state(source).items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("bad_value", [float("inf"), float("nan"), 3.4e38])
def test_damaged_weights_are_refused_naming_the_tensor(source, tmp_path, bad_value):
    state = {k: v.clone() for k, v in _sam_state(source).items()}
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    state[key].view(-1)[17] = bad_value  # what 4 KB of random bytes written into a .pt file does
    torch.save(state, tmp_path / "damaged.pth")
    with pytest.raises(CheckpointError, match=r"damaged.*iou_prediction_head\.layers\.0\.weight"):
        build_model("powersam_s", checkpoint=tmp_path / "damaged.pth", img_size=IMG)


def test_an_asked_input_size_is_honoured_and_the_recorded_one_is_the_default(tmp_path):
    # build_model used to replace an explicit img_size by the one the checkpoint records: asked for 512, a model
    # trained at 256 silently ran at 256 (a held-out evaluation "at 512" was the 256 one again).
    from powersam.checkpoint import save_checkpoint

    model = build_model("powersam_s", img_size=64, with_detector=False)
    path = tmp_path / "at64.pt"
    save_checkpoint(path, model.state_dict(), "powersam_s", model_config=model.model_config)
    assert build_model(checkpoint=path, with_detector=False).img_size == 64
    bigger = build_model(checkpoint=path, img_size=128, with_detector=False)
    assert bigger.img_size == 128 and bigger.image_encoder.img_size == 128
    assert bigger.load_report.loaded == len(bigger.state_dict())
    assert build_model("powersam_s", with_detector=False).img_size == 1024
