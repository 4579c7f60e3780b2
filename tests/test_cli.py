"""The ``powersam`` command line: sub-commands, JSON output and exit codes."""
from __future__ import annotations

import json

import pytest
import torch

from powersam.cli import main


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("sam_vit_b", "edgesam", "powersam_s", "powersam_b", "powersam_s_decoupled"):
        assert name in out


def test_models_lists_the_groups(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "table1" in out and "sam_vit_b,sam_vit_h,sam2_hiera_l,slimsam_50,edgesam,powersam_b,powersam_s" in out
    assert "table2" in out and "powersam_s,powersam_b,powersam_s_decoupled,powersam_b_decoupled" in out


def test_info_accepts_groups(capsys, monkeypatch):
    import powersam.utils.model_info as model_info_module

    monkeypatch.setattr(model_info_module, "model_info", lambda name, img_size, det_size: {"model": name})
    assert main(["info", "edgesam,table2", "--json"]) == 0
    names = [info["model"] for info in json.loads(capsys.readouterr().out)]
    assert names == ["edgesam", "powersam_s", "powersam_b", "powersam_s_decoupled", "powersam_b_decoupled"]


def test_info_json(capsys):
    assert main(["info", "powersam_s", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "powersam_s"
    assert info["params_total"] > 9e6 and info["gmacs_total"] > 25
    assert {"image_encoder", "box_generator", "mask_decoder"} <= set(info["components"])


def test_info_unknown_model_exits_1(capsys):
    assert main(["info", "powersam_xxl"]) == 1
    assert "unknown model 'powersam_xxl'" in capsys.readouterr().err


def test_convert_plain_state_dict(tmp_path, capsys):
    src = tmp_path / "bbpg.pth"
    torch.save({"meta": {"epoch": 300}, "state_dict": {"neck.out_convs.0.conv.weight": torch.zeros(128, 80, 1, 1)}}, src)
    assert main(["convert", str(src), str(tmp_path / "plain.pth")]) == 0
    converted = torch.load(tmp_path / "plain.pth", weights_only=True)
    assert list(converted) == ["neck.out_convs.0.conv.weight"]
    assert "1 tensors" in capsys.readouterr().out


def test_convert_missing_file_exits_1(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "none.pth"), str(tmp_path / "out.pth")]) == 1
    assert "none.pth" in capsys.readouterr().err


def test_usage_error_exits_2():
    with pytest.raises(SystemExit) as exc:
        main(["info"])
    assert exc.value.code == 2
