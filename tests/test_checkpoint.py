"""powersam.checkpoint: safe reading, strict loading, family detection, atomic saving, safe conversion."""
from __future__ import annotations

import importlib
import os
import pickle
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import pytest
import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from powersam.checkpoint import convert as ckpt_convert
from powersam.checkpoint import io as ckpt_io_module
from powersam.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    LoadReport,
    convert_mmengine_checkpoint,
    identify_checkpoint,
    load_state_dict_strict,
    read_checkpoint,
    read_powersam_checkpoint,
    save_checkpoint,
)


class TinyNet(nn.Module):
    """encoder.{0: Linear 4→8, 1: BatchNorm1d 8}, head: Linear 8→2."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, hidden), nn.BatchNorm1d(hidden))
        self.head = nn.Linear(hidden, 2)


class TinyNetWithDetector(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.box_generator = nn.Sequential(nn.Linear(8, 3), nn.Linear(3, 1))


def random_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: torch.randn(v.shape).to(v.dtype) if v.is_floating_point() else v.clone() + 7
            for k, v in model.state_dict().items()}


def assert_loaded(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key].to(value.dtype)), key


# ---------------------------------------------------------------------------------------------- read_checkpoint


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "module_prefix", "model_and_module"])
def test_read_checkpoint_unwraps(tmp_path: Path, wrap: str) -> None:
    state = random_state(TinyNet())
    payload = {
        "plain": state,
        "model": {"model": state, "epoch": 3},
        "state_dict": {"meta": {"epoch": 3}, "state_dict": state, "optimizer": {"lr": 0.1}},
        "module_prefix": {f"module.{k}": v for k, v in state.items()},
        "model_and_module": {"model": {f"module.{k}": v for k, v in state.items()}},
    }[wrap]
    path = tmp_path / "c.pth"
    torch.save(payload, path)
    loaded = read_checkpoint(path)
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_read_checkpoint_keeps_partial_module_prefix(tmp_path: Path) -> None:
    state = {"module.a": torch.ones(1), "b": torch.zeros(1)}
    torch.save(state, tmp_path / "c.pth")
    assert sorted(read_checkpoint(tmp_path / "c.pth")) == ["b", "module.a"]


def test_read_checkpoint_safetensors(tmp_path: Path) -> None:
    state = random_state(TinyNet())
    save_file(state, tmp_path / "c.safetensors")
    loaded = read_checkpoint(tmp_path / "c.safetensors")
    assert all(torch.equal(loaded[k], state[k]) for k in state) and len(loaded) == len(state)


def test_read_checkpoint_safetensors_with_torch_extension(tmp_path: Path) -> None:
    state = random_state(TinyNet())
    save_file(state, tmp_path / "model.bin")
    loaded = read_checkpoint(tmp_path / "model.bin")
    assert sorted(loaded) == sorted(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_read_checkpoint_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        read_checkpoint(tmp_path / "nothing.pth")


@pytest.mark.parametrize("content", ["truncated", "garbage", "random_bytes", "empty"])
def test_read_checkpoint_corrupt(tmp_path: Path, content: str) -> None:
    good = tmp_path / "good.pth"
    torch.save(random_state(TinyNet()), good)
    random_bytes = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    data = {"truncated": good.read_bytes()[:300], "garbage": b"not a checkpoint at all", "empty": b"",
            "random_bytes": random_bytes}[content]
    bad = tmp_path / "bad.pth"
    bad.write_bytes(data)
    with pytest.raises(CheckpointError, match="bad.pth") as info:
        read_checkpoint(bad)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)
    # Random bytes make torch's safe unpickler fail too; that is corruption, not a file that needs `convert`.
    assert "convert" not in str(info.value)


def test_read_checkpoint_corrupt_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        read_checkpoint(path)


@pytest.mark.parametrize("payload", [[torch.zeros(1)], torch.zeros(3), 42])
def test_read_checkpoint_non_dict(tmp_path: Path, payload) -> None:
    torch.save(payload, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=type(payload).__name__):
        read_checkpoint(tmp_path / "c.pth")


def test_read_checkpoint_dict_without_tensors(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="found no state dict.*epoch"):
        read_checkpoint(tmp_path / "c.pth")


def test_read_checkpoint_needs_globals_points_at_convert(tmp_path: Path) -> None:
    torch.save(nn.Linear(2, 3), tmp_path / "whole_model.pth")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path / "whole_model.pth")
    message = str(info.value)
    assert "powersam convert" in message and "torch.nn.modules.linear.Linear" in message


# ---------------------------------------------------------------------------------------------- own format


def test_save_and_read_powersam_checkpoint(tmp_path: Path) -> None:
    model = TinyNet()
    path = tmp_path / "sub" / "model.pth"
    save_checkpoint(path, model.state_dict(), "tiny", model_config={"hidden": 8, "dims": [1, 2]},
                    class_names=["a", "b"], meta={"epoch": 3, "metrics": {"mIoU": 0.5}}, extra={"stage": 2})
    raw = torch.load(path, weights_only=True)  # plain types only
    assert raw["format"] == "powersam" and raw["format_version"] == 1 and raw["stage"] == 2
    loaded = read_powersam_checkpoint(path)
    assert loaded["model_name"] == "tiny" and loaded["model_config"] == {"hidden": 8, "dims": [1, 2]}
    assert loaded["class_names"] == ["a", "b"] and loaded["meta"]["metrics"] == {"mIoU": 0.5}
    assert list(read_checkpoint(path)) == list(model.state_dict())
    assert [p.name for p in path.parent.iterdir()] == ["model.pth"]  # no temp files left


def test_save_checkpoint_stores_views_compactly(tmp_path: Path) -> None:
    big = torch.randn(1000, 100)
    save_checkpoint(tmp_path / "c.pth", {"row": big[0]}, "tiny")
    assert (tmp_path / "c.pth").stat().st_size < 20_000  # not the 400 kB base storage
    assert torch.equal(read_checkpoint(tmp_path / "c.pth")["row"], big[0])


def test_read_powersam_checkpoint_foreign_file(tmp_path: Path) -> None:
    state = random_state(TinyNet())
    torch.save({"model": state}, tmp_path / "c.pth")
    loaded = read_powersam_checkpoint(tmp_path / "c.pth")
    assert loaded["model_name"] is None and loaded["format"] is None and list(loaded["state_dict"]) == list(state)


def test_read_powersam_checkpoint_newer_version(tmp_path: Path) -> None:
    torch.save({"format": "powersam", "format_version": 99, "model_name": "x", "state_dict": {}}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="newer"):
        read_powersam_checkpoint(tmp_path / "c.pth")


@pytest.mark.parametrize("kwargs, error", [
    ({"meta": {"path": Path("/x")}}, TypeError),
    ({"model_config": {"obj": object()}}, TypeError),
    ({"extra": {"state_dict": {}}}, ValueError),
    ({"model_name": ""}, ValueError),
    ({"class_names": [1, 2]}, TypeError),
])
def test_save_checkpoint_rejects_unsafe_content(tmp_path: Path, kwargs, error) -> None:
    args = {"model_name": "tiny", **kwargs}
    with pytest.raises(error):
        save_checkpoint(tmp_path / "c.pth", {"w": torch.ones(1)}, **args)
    assert not any(tmp_path.iterdir())


def test_save_checkpoint_crash_keeps_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "model.pth"
    save_checkpoint(path, {"w": torch.ones(2)}, "old")

    def crash(*_args, **_kwargs):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(ckpt_io_module.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, {"w": torch.zeros(2)}, "new")
    monkeypatch.undo()
    assert read_powersam_checkpoint(path)["model_name"] == "old"
    assert torch.equal(read_checkpoint(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


# ---------------------------------------------------------------------------------------------- strict load


def test_load_strict_loads_everything() -> None:
    model, state = TinyNet(), random_state(TinyNet())
    state["head.weight"] = state["head.weight"].half()
    report = load_state_dict_strict(model, state, source="tiny.pth")
    assert isinstance(report, LoadReport) and report.loaded == len(state)
    assert report.dtype_converted == ["head.weight"]
    assert_loaded(model, state)
    assert "tiny.pth: loaded 9 tensors" in str(report)  # 2 + 5 (BatchNorm) + 2


def test_load_strict_renamed_keys_lists_them_grouped() -> None:
    model = TinyNet()
    state = random_state(model)
    state["encoder.0.kernel"] = state.pop("encoder.0.weight")
    state["decoder.proj.weight"] = state.pop("head.weight")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_strict(model, state, source="renamed.pth")
    message = str(info.value)
    assert "renamed.pth does not fit TinyNet: 2 missing, 2 unexpected" in message
    assert "encoder.0: 1 missing" in message and "encoder.0.weight (8, 4)" in message
    assert "decoder.proj: 1 unexpected" in message and "encoder.0.kernel (8, 4)" in message
    assert sorted(info.value.missing) == ["encoder.0.weight", "head.weight"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing copied


def test_load_strict_wrong_shape_shows_both_shapes() -> None:
    model = TinyNet()
    state = random_state(TinyNet(hidden=16))
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_strict(model, state)
    message = str(info.value)
    assert "encoder.0.weight: file (16, 4) vs model (8, 4)" in message
    assert "head.weight: file (2, 16) vs model (2, 8)" in message
    assert ("encoder.0.weight", (16, 4), (8, 4)) in info.value.wrong_shape


def test_load_strict_prefix_hints() -> None:
    model = TinyNet()
    state = {f"model.{k}": v for k, v in random_state(model).items()}
    with pytest.raises(CheckpointMismatchError, match="9 of the 9 unexpected keys .* extra 'model.' prefix"):
        load_state_dict_strict(model, state)
    wrapper = nn.Module()
    wrapper.image_encoder = TinyNet()
    with pytest.raises(CheckpointMismatchError, match="missing keys are in the file without the prefix "
                                                      "'image_encoder.'"):
        load_state_dict_strict(wrapper, random_state(TinyNet()))
    with pytest.raises(CheckpointMismatchError) as info:  # unrelated names: no hint
        load_state_dict_strict(model, {"x.weight": torch.ones(1)})
    assert "Hint" not in str(info.value)


def test_load_strict_many_keys_are_truncated_per_group() -> None:
    model = nn.Module()
    model.encoder = nn.Module()
    model.encoder.layers = nn.Sequential(*[nn.Linear(2, 2) for _ in range(30)])
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_strict(model, {})
    message = str(info.value)
    assert "encoder.layers: 60 missing" in message and "… and 40 more" in message
    assert message.count("\n") < 30


def test_load_strict_optional_prefix_absent_is_fine() -> None:
    model = TinyNetWithDetector()
    detector_before = {k: v.clone() for k, v in model.box_generator.state_dict().items()}
    state = random_state(TinyNet())
    report = load_state_dict_strict(model, state, optional_prefixes=("box_generator",))
    assert report.absent_optional_prefixes == ["box_generator."]
    assert sorted(report.left_at_init) == sorted(f"box_generator.{k}" for k in detector_before)
    assert "box_generator.* not in checkpoint, left at initialisation (4 tensors)" in str(report)
    assert all(torch.equal(v, detector_before[k]) for k, v in model.box_generator.state_dict().items())
    assert_loaded(model.encoder, {k.removeprefix("encoder."): v for k, v in state.items()})


def test_load_strict_optional_prefix_partly_present_is_an_error() -> None:
    model = TinyNetWithDetector()
    state = random_state(model)
    del state["box_generator.1.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"'box_generator\.' is only partly .*3 of 4"):
        load_state_dict_strict(model, state, optional_prefixes=("box_generator.",))


def test_load_strict_optional_prefix_fully_present_loads() -> None:
    model = TinyNetWithDetector()
    state = random_state(model)
    report = load_state_dict_strict(model, state, optional_prefixes=("box_generator.",))
    assert report.absent_optional_prefixes == [] and report.loaded == len(state)
    assert_loaded(model, state)


def test_load_strict_ignore_prefixes_are_reported() -> None:
    model = TinyNet()
    state = random_state(model)
    state.update({"fpn.0.weight": torch.ones(3), "rpn_head.cls.weight": torch.ones(1), "fpn.1.bias": torch.ones(1)})
    report = load_state_dict_strict(model, state, ignore_prefixes=("fpn.", "rpn_head."))
    assert sorted(report.ignored_keys) == ["fpn.0.weight", "fpn.1.bias", "rpn_head.cls.weight"]
    assert "ignored 3 checkpoint keys: fpn.* (2), rpn_head.* (1)" in str(report)
    with pytest.raises(CheckpointMismatchError, match="rpn_head.cls.weight"):
        load_state_dict_strict(model, state, ignore_prefixes=("fpn.",))


def test_load_strict_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError):
        load_state_dict_strict(TinyNet(), [("a", torch.ones(1))])
    with pytest.raises(TypeError, match="'a'"):
        load_state_dict_strict(TinyNet(), {"a": [1.0]})
    with pytest.raises(ValueError):
        load_state_dict_strict(TinyNet(), {}, optional_prefixes=("",))


# ---------------------------------------------------------------------------------------------- identify


def vit_state(dim: int, depth: int, prefix: str = "image_encoder.", split_qkv: bool = False, mlp_ratio: int = 4):
    """Meta tensors with the identifying keys of a SAM ViT image encoder."""
    meta = {"device": "meta"}
    state = {f"{prefix}patch_embed.proj.weight": torch.empty(dim, 3, 16, 16, **meta),
             f"{prefix}pos_embed": torch.empty(1, 64, 64, dim, **meta)}
    for i in range(depth):
        if split_qkv:
            for name in "qkv":
                state[f"{prefix}blocks.{i}.attn.{name}.weight"] = torch.empty(dim, dim, **meta)
        else:
            state[f"{prefix}blocks.{i}.attn.qkv.weight"] = torch.empty(3 * dim, dim, **meta)
        state[f"{prefix}blocks.{i}.mlp.lin1.weight"] = torch.empty(mlp_ratio * dim, dim, **meta)
    return state


@pytest.mark.parametrize("dim, depth, prefix, expected", [
    (768, 12, "image_encoder.", "sam_vit_b"),
    (1024, 24, "", "sam_vit_l"),
    (1280, 32, "image_encoder.", "sam_vit_h"),
    (384, 12, "image_encoder.", "slimsam"),
    (1024, 12, "", "sam_vit"),
])
def test_identify_sam_vits(dim, depth, prefix, expected) -> None:
    assert identify_checkpoint(vit_state(dim, depth, prefix)) == expected


def test_identify_slimsam_variants() -> None:
    assert identify_checkpoint(vit_state(768, 12, split_qkv=True)) == "slimsam"
    assert identify_checkpoint(vit_state(768, 12, mlp_ratio=2)) == "slimsam"


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def test_identify_repvit_sam_detector_and_sam2() -> None:
    decoder = {"mask_decoder.iou_token.weight": _meta(1, 256)}
    m1 = {"image_encoder.features.0.0.c.weight": _meta(24, 3, 3, 3), **decoder}
    assert identify_checkpoint(m1) == "edgesam/powersam_b"
    assert identify_checkpoint({"features.0.0.c.weight": _meta(20, 3, 3, 3)}) == "powersam_s"
    cls_head = {"bbox_head.multi_level_conv_cls.0.weight": _meta(12, 128, 1, 1)}
    bbpg = {"backbone.features.0.0.c.weight": _meta(20, 3, 3, 3),
            "neck.reduce_layers.0.conv.weight": _meta(160, 320, 1, 1), **cls_head}
    assert identify_checkpoint(bbpg) == "bbpg (m0 backbone, 12 classes)"
    yolox = {"backbone.stem.conv.conv.weight": _meta(32, 12, 3, 3), **cls_head}
    assert identify_checkpoint(yolox) == "yolox_s (stem 32 ch, 12 classes)"
    hieras = [(96, 12, "sam2_hiera_t"), (96, 16, "sam2_hiera_s"), (112, 24, "sam2_hiera_b+"), (144, 48, "sam2_hiera_l")]
    for dim, depth, name in hieras:
        state = {"image_encoder.trunk.patch_embed.proj.weight": _meta(dim, 3, 7, 7)}
        state.update({f"image_encoder.trunk.blocks.{i}.norm1.weight": _meta(dim) for i in range(depth)})
        assert identify_checkpoint(state) == name
    assert identify_checkpoint({"mask_decoder.iou_token.weight": _meta(1, 256)}) == "sam_decoder"
    assert identify_checkpoint({"foo.weight": _meta(3)}) is None
    assert identify_checkpoint({}) is None


class FakeViT(nn.Module):
    """Only the identifying parameters of a SAM ViT (on the meta device), to keep the test cheap."""

    def __init__(self, dim: int, depth: int) -> None:
        super().__init__()
        self.image_encoder = nn.Module()
        self.image_encoder.patch_embed = nn.Module()
        self.image_encoder.patch_embed.proj = nn.Conv2d(3, dim, 16, 16, device="meta")
        self.image_encoder.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.Module()
            block.attn = nn.Module()
            block.attn.qkv = nn.Linear(dim, 3 * dim, device="meta")
            block.mlp = nn.Module()
            block.mlp.lin1 = nn.Linear(dim, 4 * dim, device="meta")
            self.image_encoder.blocks.append(block)


def test_load_strict_names_the_checkpoint_family() -> None:
    model = FakeViT(768, 12)
    state = {k: v for k, v in FakeViT(1280, 32).state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_strict(model, state, source="sam_vit_h_4b8939.pth")
    message = str(info.value)
    assert "looks like a sam_vit_h checkpoint (embed dim 1280, 32 blocks)" in message
    assert "the model is sam_vit_b (embed dim 768, 12 blocks)" in message
    assert "image_encoder.blocks: 80 unexpected" in message  # blocks 12..31, 4 tensors each
    assert "image_encoder.patch_embed.proj.weight: file (1280, 3, 16, 16) vs model (768, 3, 16, 16)" in message


# ---------------------------------------------------------------------------------------------- convert

_FAKE_MMENGINE = textwrap.dedent("""
    import os

    class HistoryBuffer:
        def __init__(self):
            self._log_history = [1.0, 2.0]
            self.max_length = 5

    class CfgNode(dict):
        pass

    class Evil:
        def __init__(self, marker):
            self.marker = marker

        def __reduce__(self):
            return (os.system, (f"touch {self.marker}",))

    class EvilBuiltin:
        def __init__(self, marker):
            self.marker = marker

        def __reduce__(self):
            return (eval, (f"open({self.marker!r}, 'w')",))
""")


@pytest.fixture
def fake_mmengine(tmp_path: Path):
    """(module, forget): a module importable while a checkpoint is written; ``forget()`` makes it
    unimportable again, as mmengine/yacs are on a machine without them."""
    module_dir = str(tmp_path / "fake_pkgs")
    os.mkdir(module_dir)
    Path(module_dir, "fake_mmengine_ps.py").write_text(_FAKE_MMENGINE)
    sys.path.insert(0, module_dir)

    def forget() -> None:
        if module_dir in sys.path:
            sys.path.remove(module_dir)
        sys.modules.pop("fake_mmengine_ps", None)

    try:
        yield importlib.import_module("fake_mmengine_ps"), forget
    finally:
        forget()


def test_convert_mmengine_checkpoint(tmp_path: Path, fake_mmengine) -> None:
    fake_mmengine, forget = fake_mmengine
    state = OrderedDict(random_state(TinyNet()))
    state._metadata = {"": {"version": 1}}  # like nn.Module.state_dict()
    marker, marker2 = tmp_path / "pwned", tmp_path / "pwned2"
    cfg = fake_mmengine.CfgNode(lr=0.1, nested=fake_mmengine.CfgNode(x=1))
    payload = {
        "meta": {"epoch": 300, "cfg": "model = dict(...)", "evil": fake_mmengine.Evil(str(marker))},
        "state_dict": state,
        "message_hub": {"log_scalars": {"loss": fake_mmengine.HistoryBuffer()}},
        "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]},
        "config": cfg,
        "hook": fake_mmengine.EvilBuiltin(str(marker2)),
    }
    src = tmp_path / "epoch_300.pth"
    torch.save(payload, src)
    forget()

    with pytest.raises(CheckpointError, match="powersam convert") as info:
        read_checkpoint(src)
    assert "fake_mmengine_ps" in str(info.value) or "posix.system" in str(info.value)

    dst = tmp_path / "converted" / "bbpg.pth"
    converted = convert_mmengine_checkpoint(src, dst)
    assert not marker.exists() and not marker2.exists()  # the malicious reductions never ran
    assert "fake_mmengine_ps" not in sys.modules
    assert list(converted) == list(state)
    assert all(torch.equal(converted[k], state[k]) for k in state)
    reread = read_checkpoint(dst)
    assert all(torch.equal(reread[k], state[k]) for k in state) and len(reread) == len(state)
    assert [p.name for p in dst.parent.iterdir()] == ["bbpg.pth"]


def test_convert_yacs_style_model_key_and_shared_storage(tmp_path: Path, fake_mmengine) -> None:
    fake_mmengine, forget = fake_mmengine
    base = torch.arange(12.0)
    tied = torch.randn(3)
    state = {"a": base[:6].view(2, 3), "b": base[6:], "c": torch.tensor([1, 2], dtype=torch.int64),
             "tied1": tied, "tied2": tied}
    torch.save({"model": state, "config": fake_mmengine.CfgNode(arch="m0"), "epoch": 99}, tmp_path / "stage1.pth")
    forget()
    converted = convert_mmengine_checkpoint(tmp_path / "stage1.pth", tmp_path / "stage1.safetensors")
    reread = read_checkpoint(tmp_path / "stage1.safetensors")
    for key in state:
        assert torch.equal(converted[key], state[key]) and torch.equal(reread[key], state[key])
        assert reread[key].dtype == state[key].dtype


class WrappedEncoderModel(nn.Module):
    """Like SlimSAM's globally pruned checkpoints: a whole model with a DataParallel image encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = nn.DataParallel(TinyNet())
        self.register_buffer("pixel_mean", torch.ones(3), persistent=False)


def test_convert_whole_pickled_module_with_data_parallel(tmp_path: Path) -> None:
    model = WrappedEncoderModel()
    torch.save(model, tmp_path / "slimsam_global.pth")
    converted = convert_mmengine_checkpoint(tmp_path / "slimsam_global.pth", tmp_path / "out.pth")
    expected = {f"image_encoder.{k}": v for k, v in model.image_encoder.module.state_dict().items()}
    assert sorted(converted) == sorted(expected)  # DataParallel level dropped, non-persistent buffer too
    assert all(torch.equal(converted[k], expected[k]) for k in expected)


def test_convert_rejects_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.pth"):
        convert_mmengine_checkpoint(tmp_path / "bad.pth", tmp_path / "out.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="list"):
        convert_mmengine_checkpoint(tmp_path / "list.pth", tmp_path / "out.pth")
    with pytest.raises(FileNotFoundError):
        convert_mmengine_checkpoint(tmp_path / "none.pth", tmp_path / "out.pth")
    torch.save({"w": torch.ones(1)}, tmp_path / "same.pth")
    with pytest.raises(ValueError, match="overwrite"):
        convert_mmengine_checkpoint(tmp_path / "same.pth", tmp_path / "same.pth")
    assert not (tmp_path / "out.pth").exists()


def test_restricted_unpickler_refuses_globals_without_importing(tmp_path: Path) -> None:
    """A pickle stream naming an unimported module must not import it."""
    stream = pickle.dumps(os.system, protocol=2)  # GLOBAL posix/nt system
    unpickler = ckpt_convert._RestrictedUnpickler(__import__("io").BytesIO(stream), lambda *a: None)
    result = unpickler.load()
    assert isinstance(result, type) and issubclass(result, ckpt_convert._Placeholder)
    assert any(name.endswith(".system") for name in unpickler.refused_globals)


def test_a_writer_killed_mid_write_leaves_no_temp_file_after_the_next_save(tmp_path: Path) -> None:
    import subprocess

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited: its temp file is an orphan of a `kill -9`
    orphan = tmp_path / f".last.pt.{dead_pid}.0123456789ab.tmp"
    orphan.write_bytes(b"")
    other_target = tmp_path / f".other.pt.{dead_pid}.0123456789ab.tmp"
    other_target.write_bytes(b"")
    live = tmp_path / f".last.pt.{os.getppid()}.0123456789ab.tmp"  # a live writer's file is left alone
    live.write_bytes(b"")
    ckpt_io_module.atomic_write(tmp_path / "last.pt", lambda handle: handle.write(b"x"))
    assert (tmp_path / "last.pt").read_bytes() == b"x"
    assert not orphan.exists() and live.exists() and other_target.exists()
