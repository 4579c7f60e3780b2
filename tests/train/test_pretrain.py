"""``powersam train synth-teacher``: teacher pretraining on scenes rendered on the fly."""
from __future__ import annotations

import pytest
import torch

from powersam.checkpoint import read_powersam_checkpoint
from powersam.train.metrics import read_metrics
from powersam.train.pretrain import (OnlineEncoderDistillObjective, SynthStudentConfig, SynthTeacherConfig,
                                     pretrain_student, pretrain_teacher, student_from_training_state,
                                     teacher_from_training_state)
from powersam.train.teacher import TeacherObjective


def tiny_config(out, **overrides) -> SynthTeacherConfig:
    settings = dict(img_size=64, scene_height=64, scene_width=80, max_objects=3, size_jitter=0.0, epochs=2,
                    iters_per_epoch=2, batch_size=2, lr=1e-3, warmup_epochs=0, num_workers=0, progress=False,
                    plot=False, log_every=1, output_dir=out)
    settings.update(overrides)
    return SynthTeacherConfig(**settings)


def test_pretraining_writes_a_teacher_that_records_its_scenes(tmp_path):
    path = pretrain_teacher(tiny_config(tmp_path / "a"))
    payload = read_powersam_checkpoint(path)
    meta = payload["meta"]
    assert payload["model_name"] == "edgesam" and meta["stage"] == "synth_teacher" and meta["from_scratch"]
    assert meta["steps"] == meta["total_steps"] == 4 and meta["next_scene_offset"] == 8
    records = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert len(records) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert meta["zoom_context"] is None


def test_pretraining_with_zoom_in_crops_trains_on_them_and_records_them(tmp_path):
    from powersam.data.zoom_crops import ZoomedStream

    cfg = tiny_config(tmp_path / "z", epochs=1, zoom_context=[2.0, 3.0], zoom_prob=1.0, min_objects=3)
    stream = cfg.scene_stream()
    assert isinstance(stream, ZoomedStream) and stream.context == (2.0, 3.0) and stream.prob == 1.0
    assert not isinstance(tiny_config(tmp_path / "w").scene_stream(), ZoomedStream)
    meta = read_powersam_checkpoint(pretrain_teacher(cfg))["meta"]
    assert meta["zoom_context"] == [2.0, 3.0] and meta["zoom_prob"] == 1.0
    assert len(read_metrics(tmp_path / "z" / "metrics.jsonl")) == 2


def test_a_continued_run_starts_from_the_earlier_teacher_and_counts_its_steps(tmp_path):
    first = pretrain_teacher(tiny_config(tmp_path / "a"))
    again = pretrain_teacher(tiny_config(tmp_path / "b", init_checkpoint=str(first), scene_offset=8, epochs=1,
                                         lr=1e-12, min_lr=1e-12))
    before, after = read_powersam_checkpoint(first), read_powersam_checkpoint(again)
    assert after["meta"]["total_steps"] == 6 and after["meta"]["next_scene_offset"] == 12
    assert not after["meta"]["from_scratch"]
    # a negligible learning rate: the continued teacher is the first one, so it was loaded, not re-initialised
    for key, value in before["state_dict"].items():
        if value.is_floating_point() and "running" not in key:
            assert torch.allclose(value, after["state_dict"][key], atol=1e-5), key


def test_interrupted_pretraining_resumes_bit_identically(tmp_path, monkeypatch):
    straight = read_powersam_checkpoint(pretrain_teacher(tiny_config(tmp_path / "straight")))["state_dict"]
    forward, calls = TeacherObjective.forward, []

    def interrupt_at_third_step(self, batch):
        calls.append(1)
        if len(calls) == 3:  # mid-epoch 2: the trainer saves last.pt and stops
            raise KeyboardInterrupt
        return forward(self, batch)

    monkeypatch.setattr(TeacherObjective, "forward", interrupt_at_third_step)
    with pytest.raises(KeyboardInterrupt):  # saved before re-raising
        pretrain_teacher(tiny_config(tmp_path / "resumed"))
    monkeypatch.setattr(TeacherObjective, "forward", forward)
    resumed = read_powersam_checkpoint(pretrain_teacher(tiny_config(tmp_path / "resumed"), resume=True))["state_dict"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_an_interrupted_run_still_yields_a_teacher(tmp_path, monkeypatch):
    forward = TeacherObjective.forward
    calls = []

    def interrupt_at_fourth_step(self, batch):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return forward(self, batch)

    monkeypatch.setattr(TeacherObjective, "forward", interrupt_at_fourth_step)
    with pytest.raises(KeyboardInterrupt):
        pretrain_teacher(tiny_config(tmp_path))
    payload = read_powersam_checkpoint(teacher_from_training_state(tmp_path))
    assert payload["meta"]["steps"] == 3 and payload["meta"]["next_scene_offset"] == 6 and payload["meta"]["partial"]
    assert payload["model_name"] == "edgesam" and all(k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder."))
                                                        for k in payload["state_dict"])


def tiny_student_config(teacher, out, **overrides) -> SynthStudentConfig:
    settings = dict(teacher_checkpoint=str(teacher), img_size=64, scene_height=64, scene_width=80, max_objects=3,
                    size_jitter=0.0, epochs=3, iters_per_epoch=4, batch_size=2, lr=3e-3, warmup_epochs=0,
                    num_workers=0, progress=False, plot=False, log_every=1, output_dir=out)
    settings.update(overrides)
    return SynthStudentConfig(**settings)


def test_student_distillation_on_streamed_scenes_lowers_the_embedding_error(tmp_path):
    teacher = pretrain_teacher(tiny_config(tmp_path / "teacher", epochs=1))
    path = pretrain_student(tiny_student_config(teacher, tmp_path / "student"))
    payload = read_powersam_checkpoint(path)
    assert payload["model_name"] == "powersam_s" and payload["meta"]["steps"] == 12
    teacher_state = read_powersam_checkpoint(teacher)["state_dict"]
    for key, value in payload["state_dict"].items():  # the decoder is the teacher's
        if key.startswith("mask_decoder."):
            assert torch.equal(value, teacher_state[key]), key
    losses = [r["loss"] for r in read_metrics(tmp_path / "student" / "metrics.jsonl")]
    assert sum(losses[-4:]) < sum(losses[:4])


def test_an_interrupted_student_run_still_yields_a_strictly_loadable_student(tmp_path, monkeypatch):
    from powersam.models.zoo import build_model

    teacher = pretrain_teacher(tiny_config(tmp_path / "teacher", epochs=1))
    forward, calls = OnlineEncoderDistillObjective.forward, []

    def interrupt_at_sixth_step(self, batch):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return forward(self, batch)

    monkeypatch.setattr(OnlineEncoderDistillObjective, "forward", interrupt_at_sixth_step)
    with pytest.raises(KeyboardInterrupt):
        pretrain_student(tiny_student_config(teacher, tmp_path / "student"))
    path = student_from_training_state(tmp_path / "student")
    payload = read_powersam_checkpoint(path)
    meta = payload["meta"]
    assert meta["stage"] == "synth_student" and meta["steps"] == 5 and meta["partial"]
    assert meta["next_scene_offset"] == 10
    training = torch.load(tmp_path / "student" / "last.pt", map_location="cpu", weights_only=True)
    for key, value in payload["state_dict"].items():  # the trained encoder of the state, the teacher's decoder
        if key.startswith("image_encoder."):
            assert torch.equal(value, training["model"]["encoder." + key[len("image_encoder."):]]), key
    teacher_state = read_powersam_checkpoint(teacher)["state_dict"]
    assert all(torch.equal(v, teacher_state[k]) for k, v in payload["state_dict"].items() if k.startswith("mask_decoder."))
    model = build_model(checkpoint=path, img_size=64, with_detector=False)
    assert model.load_report.loaded == len(model.state_dict()) and not model.load_report.left_at_init


def test_stage1_starts_from_a_pre_distilled_student_strictly_and_refuses_another_architecture(tmp_path):
    from powersam.models.zoo import build_model
    from powersam.train.distill_encoder import init_student_encoder

    teacher = pretrain_teacher(tiny_config(tmp_path / "teacher", epochs=1))
    student = pretrain_student(tiny_student_config(teacher, tmp_path / "student", epochs=1))
    sam = build_model("powersam_s", img_size=64, with_detector=False)
    note = init_student_encoder(sam, student, "powersam_s", 64, "bicubic")
    assert "strict" in note
    expected = read_powersam_checkpoint(student)["state_dict"]
    assert all(torch.equal(v, expected["image_encoder." + k]) for k, v in sam.image_encoder.state_dict().items())
    with pytest.raises(ValueError, match="holds a edgesam model, but the student is powersam_s"):
        init_student_encoder(sam, teacher, "powersam_s", 64, "bicubic")
    with pytest.raises(ValueError, match="holds a powersam_s model, but the student is powersam_b"):
        init_student_encoder(build_model("powersam_b", img_size=64, with_detector=False), student, "powersam_b", 64,
                             "bicubic")


def test_sigterm_to_the_whole_process_group_still_saves(tmp_path):
    # `kill -TERM -PGID`, a container stop or Ctrl-C reach the DataLoader workers too; before, a worker died first
    # and the run ended with "DataLoader worker is killed by signal" and no save.
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [sys.executable, "-m", "powersam.cli", "train", "synth-teacher", "--set", "img_size=64",
               "--set", "scene_height=64", "--set", "scene_width=80", "--set", "max_objects=3", "--set", "epochs=50",
               "--set", "iters_per_epoch=50", "--set", "batch_size=2", "--set", "num_workers=1",
               "--set", "log_every=1", "--set", "progress=false", "--set", "plot=false", "--set", f"output_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").is_file():
        time.sleep(0.5)
    assert (out / "metrics.jsonl").is_file(), process.communicate()[1][-2000:]
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert "DataLoader worker" not in stderr, stderr[-2000:]
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["global_step"] >= 1
