"""scripts/ship_teacher.py: a pretrained teacher becomes package data whose record keeps its lineage, so a student
distilled from an earlier shipped teacher still names an ancestor of the shipped one."""
from __future__ import annotations

import json
import sys

import powersam.weights as weights
from powersam.models.zoo import build_model
from powersam.train.pretrain import SynthTeacherConfig, pretrain_teacher
from script_loader import load_script

TINY = dict(img_size=64, scene_height=64, scene_width=80, max_objects=3, size_jitter=0.0, epochs=1, iters_per_epoch=2,
            batch_size=2, warmup_epochs=0, num_workers=0, progress=False, plot=False, log_every=1)


def ship(teacher, monkeypatch, command):
    monkeypatch.setattr(sys, "argv", ["ship_teacher.py", str(teacher), "--command", command, "--scenes", "2",
                                      "--img-sizes", "64"])
    assert load_script("ship_teacher").main() == 0
    return weights.shipped_teacher_record("synth")


def test_a_continued_teacher_records_the_shipped_teachers_it_continues(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_FOLDER", tmp_path)  # never overwrite the package's own files
    first = ship(pretrain_teacher(SynthTeacherConfig(output_dir=tmp_path / "t1", **TINY)), monkeypatch, "run 1")
    assert first["earlier_sha256"] == [] and first["total_steps"] == 2 and len(first["runs"]) == 1
    assert first["sha256"] == weights.sha256_file(tmp_path / "synth_teacher.safetensors")

    continued = pretrain_teacher(SynthTeacherConfig(output_dir=tmp_path / "t2", init_checkpoint="synth",
                                                    scene_offset=first["next_scene_offset"], **TINY))
    second = ship(continued, monkeypatch, "run 2")
    assert second["earlier_sha256"] == [first["sha256"]] and second["sha256"] != first["sha256"]
    assert second["total_steps"] == 4 and [r["command"] for r in second["runs"]] == ["run 1", "run 2"]
    assert json.loads((tmp_path / "synth_teacher.json").read_text())["img_size"] == 64
    model = build_model(checkpoint="synth", with_detector=False)
    assert model.img_size == 64 and model.load_report.loaded == len(model.state_dict())
