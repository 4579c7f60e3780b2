"""scripts/ship_student.py: a pre-distilled student becomes package data with a record that says where it came from."""
from __future__ import annotations

import json
import sys

import pytest

import powersam.weights as weights
from powersam.models.zoo import build_model
from powersam.train.pretrain import SynthStudentConfig, SynthTeacherConfig, pretrain_student, pretrain_teacher
from script_loader import load_script

TINY = dict(img_size=64, scene_height=64, scene_width=80, max_objects=3, size_jitter=0.0, epochs=1, iters_per_epoch=2,
            batch_size=2, warmup_epochs=0, num_workers=0, progress=False, plot=False, log_every=1)


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    root = tmp_path_factory.mktemp("ship")
    teacher = pretrain_teacher(SynthTeacherConfig(output_dir=root / "teacher", **TINY))
    return pretrain_student(SynthStudentConfig(teacher_checkpoint=str(teacher), output_dir=root / "student", **TINY))


def test_the_shipped_student_is_float16_hashed_loads_strictly_and_records_its_teacher(tiny_student, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setattr(weights, "_FOLDER", tmp_path)  # never overwrite the package's own files
    monkeypatch.setattr(sys, "argv", ["ship_student.py", str(tiny_student), "--command", "powersam train x",
                                      "--scenes", "2", "--img-sizes", "64"])
    assert load_script("ship_student").main() == 0
    record = json.loads((tmp_path / "synth_powersam_s.json").read_text())
    assert record["name"] == "synth_powersam_s" and record["model"] == "powersam_s" and record["dtype"] == "float16"
    assert record["sha256"] == weights.sha256_file(tmp_path / "synth_powersam_s.safetensors")
    assert record["total_steps"] == 2 and record["runs"][-1]["command"] == "powersam train x"
    result = record["heldout"]["64"]
    assert {"miou", "per_size", "box_as_mask", "teacher_box", "box_vs_teacher"} <= set(result)
    assert result["box_vs_teacher"] == pytest.approx(result["miou"]["box"] / max(result["teacher_box"]["all"], 1e-9))
    model = build_model(checkpoint="synth_powersam_s", img_size=64, with_detector=False)
    assert model.model_name == "powersam_s"
    assert model.load_report.loaded == len(model.state_dict()) and not model.load_report.left_at_init


def test_a_teacher_is_not_shipped_as_a_student(tiny_student, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(weights, "_FOLDER", tmp_path)
    teacher = tiny_student.parent.parent / "teacher" / "teacher.pt"
    monkeypatch.setattr(sys, "argv", ["ship_student.py", str(teacher), "--command", "x"])
    assert load_script("ship_student").main() == 1
    assert "not written by `powersam train synth-student`" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
