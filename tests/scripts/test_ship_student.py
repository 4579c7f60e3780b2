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


def test_a_pretrained_head_turns_the_shipped_student_into_the_integrated_model(tiny_student, tmp_path, monkeypatch):
    from powersam.data.synth_scene import SYNTH_CLASSES
    from powersam.train.pretrain_detector import SynthDetectorConfig, pretrain_detector

    monkeypatch.setattr(weights, "_FOLDER", tmp_path)
    monkeypatch.setattr(sys, "argv", ["ship_student.py", str(tiny_student), "--command", "x", "--scenes", "1",
                                      "--img-sizes", "64"])
    assert load_script("ship_student").main() == 0
    head = pretrain_detector(SynthDetectorConfig(
        backbone_checkpoint="synth_powersam_s", output_dir=tmp_path / "detector", epochs=1, warmup_epochs=0,
        no_aug_epochs=0, val_scenes=0, precise_bn_batches=0,
        **{k: v for k, v in TINY.items() if k not in ("epochs", "warmup_epochs")}))
    monkeypatch.setattr(sys, "argv", ["ship_detector.py", str(head), "--command", "powersam train synth-detector",
                                      "--scenes", "2"])
    assert load_script("ship_detector").main() == 0
    record = weights.shipped_teacher_record("synth_powersam_s")
    assert record["class_names"] == list(SYNTH_CLASSES) and record["detector"]["steps"] == 2
    assert record["total_steps"] == 2 and "bbox" in record["detector"]["heldout"]  # the student's part is kept
    model = build_model(checkpoint="synth_powersam_s", img_size=64)
    assert model.class_names == list(SYNTH_CLASSES)
    assert model.load_report.loaded == len(model.state_dict()) and not model.load_report.left_at_init


def test_a_head_on_another_backbone_is_not_shipped(tiny_student, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(weights, "_FOLDER", tmp_path)
    monkeypatch.setattr(sys, "argv", ["ship_detector.py", str(tiny_student), "--command", "x"])
    assert load_script("ship_detector").main() == 1
    assert "not a `powersam train synth-detector` head" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["ship_student.py", str(tiny_student), "--command", "x", "--scenes", "1",
                                      "--img-sizes", "64"])
    assert load_script("ship_student").main() == 0
    capsys.readouterr()
    other = build_model("powersam_s", img_size=64, class_names=["x"])  # a head on a backbone that was not shipped
    path = tmp_path / "other.pt"
    from powersam.checkpoint import save_checkpoint

    save_checkpoint(path, other.state_dict(), "powersam_s", model_config=other.model_config, class_names=["x"],
                    meta={"stage": "synth_detector"})
    monkeypatch.setattr(sys, "argv", ["ship_detector.py", str(path), "--command", "x"])
    assert load_script("ship_detector").main() == 1
    assert "its backbone differs from the shipped synth_powersam_s" in capsys.readouterr().err


def test_a_continued_student_records_the_run_it_continued(tiny_student, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_FOLDER", tmp_path)
    teacher = tiny_student.parent.parent / "teacher" / "teacher.pt"
    again = pretrain_student(SynthStudentConfig(teacher_checkpoint=str(teacher), init_checkpoint=str(tiny_student),
                                                scene_offset=4, output_dir=tmp_path / "again", **TINY))
    monkeypatch.setattr(sys, "argv", ["ship_student.py", str(again), "--command", "continued", "--scenes", "1",
                                      "--img-sizes", "64"])
    assert load_script("ship_student").main() == 0
    record = json.loads((tmp_path / "synth_powersam_s.json").read_text())
    assert record["total_steps"] == 4 and [r["steps"] for r in record["runs"]] == [2, 2]
    assert record["runs"][0]["next_scene_offset"] == 4 and record["runs"][-1]["command"] == "continued"
