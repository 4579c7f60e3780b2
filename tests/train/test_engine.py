"""Trainer (bit-exact resume, interrupts, NaN, metrics, curves), EMA, atomic training state, sharding."""
from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import powersam.train.state as state_module
import powersam.train.amp as amp_module
from ddp_toy import build_toy_model, make_dataset, mse_step
from powersam.train import distributed as pdist
from powersam.train.ema import ModelEMA
from powersam.train.engine import Trainer, TrainingInterrupted, move_to_device
from powersam.train.metrics import read_metrics
from powersam.train.schedule import WarmupCosine, build_optimizer
from powersam.train.state import (
    capture_rng_state,
    check_plain,
    load_training_state,
    restore_rng_state,
    save_training_state,
)

EPOCHS, BATCH, N = 4, 6, 48
ITERS = N // BATCH  # 8 steps per epoch


def make_trainer(out_dir, max_epochs=EPOCHS, step_fn=mse_step, ema=True, seed=0, **kwargs) -> tuple[Trainer, DataLoader]:
    model = build_toy_model()
    loader = DataLoader(make_dataset(N), batch_size=BATCH, shuffle=True)  # RandomSampler: global torch RNG
    optimizer = build_optimizer(model, "adamw", lr=1e-2, weight_decay=0.05)
    # The schedule always describes the full 4-epoch run, also for a first leg that stops after 2 epochs.
    schedule = WarmupCosine(1e-2, 1e-4, ITERS, EPOCHS * ITERS, 1e-4)
    options = dict(grad_clip=1.0, log_every=4, progress=False, plot=False, seed=seed)
    options.update(kwargs)
    trainer = Trainer(model, optimizer, schedule, step_fn, output_dir=out_dir, max_epochs=max_epochs,
                      ema=ModelEMA(model, momentum=0.05, gamma=10) if ema else None, **options)
    return trainer, loader


def assert_same_training(a: Trainer, b: Trainer) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    if a.ema is not None:
        ea, eb = a.ema.module.state_dict(), b.ema.module.state_dict()
        assert all(torch.equal(ea[k], eb[k]) for k in ea)
        assert a.ema.updates == b.ema.updates
    oa, ob = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for index in oa:
        for key in oa[index]:
            assert torch.equal(oa[index][key], ob[index][key]), (index, key)
    assert a.global_step == b.global_step


def scramble_rng() -> None:
    """A resumed run normally starts in a new process: make sure nothing leaks through the global generators."""
    import random

    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)


def comparable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "timestamp")} for r in records]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted 4-epoch run that the resume tests compare against."""
    trainer, loader = make_trainer(tmp_path_factory.mktemp("full"))
    trainer.fit(loader)
    return trainer


# -------------------------------------------------------------------------------------- resume
def test_resume_at_epoch_boundary_is_bitwise_identical(full_run, tmp_path):
    first, loader = make_trainer(tmp_path, max_epochs=2)
    first.fit(loader)
    assert load_training_state(tmp_path / "last.pt")["epoch"] == 2
    scramble_rng()
    second, loader = make_trainer(tmp_path)
    second.fit(loader, resume=True)
    assert_same_training(full_run, second)
    assert comparable(read_metrics(tmp_path / "metrics.jsonl")) == comparable(read_metrics(full_run.metrics.path))
    # the comparison can fail: another seed gives other weights
    other, loader = make_trainer(tmp_path / "other", max_epochs=1, seed=1)
    other.fit(loader)
    assert not torch.equal(other.model[0].weight, full_run.model[0].weight)


def test_resume_from_explicit_path_and_missing_path(full_run, tmp_path):
    first, loader = make_trainer(tmp_path / "a", max_epochs=2)
    first.fit(loader)
    second, loader = make_trainer(tmp_path / "b")
    second.fit(loader, resume=tmp_path / "a" / "last.pt")
    assert_same_training(full_run, second)
    third, loader = make_trainer(tmp_path / "c")
    with pytest.raises(FileNotFoundError):
        third.fit(loader, resume=tmp_path / "nope.pt")


def test_resume_true_without_checkpoint_starts_fresh(full_run, tmp_path):
    trainer, loader = make_trainer(tmp_path)
    trainer.fit(loader, resume=True)
    assert_same_training(full_run, trainer)


class RaiseAt:
    """Step function that raises ``exc`` when called for the ``at``-th time (0-based), once."""

    def __init__(self, at: int, exc: BaseException) -> None:
        self.at, self.exc, self.calls = at, exc, 0

    def __call__(self, model, batch):
        self.calls += 1
        if self.calls - 1 == self.at:
            raise self.exc
        return mse_step(model, batch)


def test_keyboard_interrupt_mid_epoch_saves_and_resumes_exactly(full_run, tmp_path):
    trainer, loader = make_trainer(tmp_path, step_fn=RaiseAt(13, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(loader)
    state = load_training_state(tmp_path / "last.pt")
    assert (state["epoch"], state["iter_in_epoch"], state["global_step"]) == (1, 5, 13)
    assert state["epoch_start_rng"] is not None
    scramble_rng()
    resumed, loader = make_trainer(tmp_path)
    resumed.fit(loader, resume=True)
    assert_same_training(full_run, resumed)
    assert comparable(read_metrics(tmp_path / "metrics.jsonl")) == comparable(read_metrics(full_run.metrics.path))


class SignalAt(RaiseAt):
    def __call__(self, model, batch):
        self.calls += 1
        if self.calls - 1 == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return mse_step(model, batch)


@pytest.mark.parametrize("at", [10, ITERS - 1])  # mid-epoch, and the last step of the first epoch
def test_sigint_finishes_the_step_saves_and_resumes_exactly(full_run, tmp_path, at):
    previous = signal.getsignal(signal.SIGINT)
    trainer, loader = make_trainer(tmp_path, step_fn=SignalAt(at, None))
    with pytest.raises(TrainingInterrupted, match="resume from"):
        trainer.fit(loader)
    assert signal.getsignal(signal.SIGINT) is previous  # handler restored
    state = load_training_state(tmp_path / "last.pt")
    assert state["global_step"] == at + 1  # the signalled step was completed, not torn
    scramble_rng()
    resumed, loader = make_trainer(tmp_path)
    resumed.fit(loader, resume=True)
    assert_same_training(full_run, resumed)
    assert comparable(read_metrics(tmp_path / "metrics.jsonl")) == comparable(read_metrics(full_run.metrics.path))


def test_crash_resumes_from_last_epoch_checkpoint_without_duplicate_records(full_run, tmp_path):
    trainer, loader = make_trainer(tmp_path, step_fn=RaiseAt(13, RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(loader)  # not an interrupt: nothing saved, last.pt stays at the end of epoch 0
    assert load_training_state(tmp_path / "last.pt")["global_step"] == ITERS
    assert [r["global_step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [4, 8, 12]
    scramble_rng()
    resumed, loader = make_trainer(tmp_path)
    resumed.fit(loader, resume=True)
    assert_same_training(full_run, resumed)
    assert comparable(read_metrics(tmp_path / "metrics.jsonl")) == comparable(read_metrics(full_run.metrics.path))


class NoisyDataset(torch.utils.data.Dataset):
    """Random augmentation inside ``__getitem__`` (runs in the worker processes)."""

    def __init__(self) -> None:
        self.base = make_dataset(N)

    def __len__(self) -> int:
        return N

    def __getitem__(self, index: int):
        x, y = self.base[index]
        return x + 0.1 * torch.randn(4) + float(np.random.rand()), y


def test_mid_epoch_resume_is_exact_with_worker_processes(tmp_path):
    def loader() -> DataLoader:
        return DataLoader(NoisyDataset(), batch_size=BATCH, shuffle=True, num_workers=1)

    full, _ = make_trainer(tmp_path / "full", max_epochs=2)
    full.fit(loader())
    interrupted, _ = make_trainer(tmp_path / "run", max_epochs=2, step_fn=RaiseAt(11, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(loader())
    scramble_rng()
    resumed, _ = make_trainer(tmp_path / "run", max_epochs=2)
    resumed.fit(loader(), resume=True)
    assert_same_training(full, resumed)


class RecordingSampler(pdist.ShardSampler):
    def __init__(self, n: int, calls: list) -> None:
        super().__init__(n, shuffle=True, seed=5)
        self.calls = calls

    def set_epoch(self, epoch: int) -> None:
        self.calls.append(epoch)
        super().set_epoch(epoch)


def test_sampler_epoch_is_set_and_resumed(tmp_path):
    calls: list = []

    def run(max_epochs: int, resume: bool) -> Trainer:
        trainer, _ = make_trainer(tmp_path / "shard", max_epochs=max_epochs)
        loader = DataLoader(make_dataset(N), batch_size=BATCH, sampler=RecordingSampler(N, calls))
        trainer.fit(loader, resume=resume)
        return trainer

    first = run(2, False)
    assert calls == [0, 1]
    calls.clear()
    scramble_rng()
    resumed = run(EPOCHS, True)
    assert calls == [2, 3]
    full, _ = make_trainer(tmp_path / "shard_full")
    full.fit(DataLoader(make_dataset(N), batch_size=BATCH, sampler=RecordingSampler(N, [])))
    assert_same_training(full, resumed)
    assert first.global_step == 2 * ITERS


def test_resume_with_other_schedule_is_refused(tmp_path):
    first, loader = make_trainer(tmp_path, max_epochs=1)
    first.fit(loader)
    second, loader = make_trainer(tmp_path)
    second.schedule = WarmupCosine(1e-2, 1e-4, ITERS, 2 * EPOCHS * ITERS, 1e-4)
    with pytest.raises(ValueError, match="total_iters"):
        second.fit(loader, resume=True)


def test_resume_ema_mismatch_is_refused(tmp_path):
    first, loader = make_trainer(tmp_path, max_epochs=1)
    first.fit(loader)
    second, loader = make_trainer(tmp_path, ema=False)
    with pytest.raises(ValueError, match="EMA"):
        second.fit(loader, resume=True)


# ------------------------------------------------------------------------------- atomic checkpoints
def test_checkpoint_contents_and_no_temp_files(full_run):
    out = full_run.output_dir
    assert sorted(p.name for p in out.iterdir()) == ["last.pt", "metrics.jsonl"]
    state = load_training_state(out / "last.pt")
    assert (state["epoch"], state["iter_in_epoch"], state["global_step"]) == (EPOCHS, 0, EPOCHS * ITERS)
    assert state["epoch_start_rng"] is None and len(state["rng"]) == 1
    assert set(state) >= {"model", "optimizer", "schedule", "ema", "rng", "world_size"}
    check_plain(state)
    # the EMA was updated after every step and lags behind the model
    assert full_run.ema.updates == EPOCHS * ITERS == state["ema"]["updates"]
    assert not torch.equal(full_run.ema.module[0].weight, full_run.model[0].weight)
    assert not torch.equal(full_run.ema.module[0].weight, build_toy_model()[0].weight)


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = save_training_state(tmp_path / "last.pt", {"step": 1, "w": torch.arange(3.0)})
    real_save = torch.save

    def crashing_save(obj, handle, *args, **kwargs):
        handle.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(state_module.torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_training_state(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.setattr(state_module.torch, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_training_state(path, {"step": 3})
    monkeypatch.setattr(state_module.torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind
    state = load_training_state(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(3.0))


def test_save_rejects_non_plain_state_naming_the_key(tmp_path):
    with pytest.raises(TypeError, match=r"state\['extra'\]\['arr'\].*ndarray"):
        save_training_state(tmp_path / "x.pt", {"extra": {"arr": np.zeros(2)}})
    with pytest.raises(TypeError):
        save_training_state(tmp_path / "x.pt", [1, 2])
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(FileNotFoundError):
        load_training_state(tmp_path / "x.pt")


def test_rng_state_round_trip(tmp_path):
    import random

    saved = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2))
    path = save_training_state(tmp_path / "rng.pt", {"rng": saved})
    restore_rng_state(load_training_state(path)["rng"])
    second = (random.random(), np.random.rand(), torch.rand(2))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


# ------------------------------------------------------------------------------------- NaN handling
class NanAt(RaiseAt):
    def __call__(self, model, batch):
        self.calls += 1
        out = mse_step(model, batch)
        if self.calls - 1 == self.at:
            out["loss"] = out["loss"] * float("nan")
        return out


def remember_weights_at_epoch_end(trainer) -> dict:
    """A dict that holds a copy of the model's weights as they were at the last epoch end."""
    weights: dict = {}

    def remember(t, epoch):
        weights.clear()
        weights.update({k: v.clone() for k, v in t.model.state_dict().items()})

    trainer.on_epoch_end = remember
    return weights


def test_nan_loss_stops_with_epoch_and_iteration_and_keeps_checkpoint(tmp_path):
    trainer, loader = make_trainer(tmp_path, step_fn=NanAt(ITERS + 5, RuntimeError("unused")))
    weights_before = remember_weights_at_epoch_end(trainer)
    with pytest.raises(FloatingPointError, match=r"epoch 1, iteration 5 \(global step 13\)"):
        trainer.fit(loader)
    saved = load_training_state(tmp_path / "last.pt")
    assert saved["epoch"] == 1 and saved["global_step"] == ITERS  # the epoch-0 checkpoint, untouched
    assert all(torch.equal(saved["model"][k], weights_before[k]) for k in weights_before)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # stopped before the update


class InfGradAt(RaiseAt):
    """A finite loss whose gradient is inf at one call (exp() overflowing inside the backward, in effect)."""

    def __call__(self, model, batch):
        self.calls += 1
        out = mse_step(model, batch)
        if self.calls - 1 == self.at:
            out["loss"].register_hook(lambda grad: grad * float("inf"))
        return out


@pytest.mark.parametrize("grad_clip", [1.0, None])
def test_non_finite_gradient_stops_before_the_update(tmp_path, grad_clip):
    trainer, loader = make_trainer(tmp_path, step_fn=InfGradAt(ITERS + 2, RuntimeError("unused")),
                                   grad_clip=grad_clip)
    weights_before = remember_weights_at_epoch_end(trainer)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient .* epoch 1, iteration 2 .*loss was finite"):
        trainer.fit(loader)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the poisoned update was not applied
    model_now = trainer.model.state_dict()
    saved = load_training_state(tmp_path / "last.pt")
    assert saved["global_step"] == ITERS and all(torch.equal(saved["model"][k], weights_before[k]) for k in saved["model"])
    assert any(not torch.equal(model_now[k], weights_before[k]) for k in model_now)  # iterations 0–1 did update


def test_refuses_to_save_non_finite_weights(tmp_path):
    trainer, _ = make_trainer(tmp_path)
    with torch.no_grad():
        trainer.model[0].weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite weights"):
        trainer.save_state()
    assert not (tmp_path / "last.pt").exists()


# ------------------------------------------------------------------------------- metrics and curves
def test_metrics_hooks_progress_and_curves(tmp_path):
    calls = []

    def on_epoch_end(trainer, epoch):
        calls.append(epoch)
        trainer.log_metrics({"val_mae": 1.0 / (epoch + 1)})

    trainer, loader = make_trainer(tmp_path, max_epochs=2, progress=True, plot=True, on_epoch_end=on_epoch_end,
                                   on_epoch_start=lambda t, e: calls.append(-1 - e))
    trainer.fit(loader)
    assert calls == [-1, 0, -2, 1]
    train = read_metrics(tmp_path / "metrics.jsonl", kind="train")
    val = read_metrics(tmp_path / "metrics.jsonl", kind="val")
    assert len(train) == 2 * ITERS // 4 and len(val) == 2
    assert [r["global_step"] for r in train] == [4, 8, 12, 16]
    assert [(r["epoch"], r["iter"]) for r in train] == [(0, 4), (0, 8), (1, 4), (1, 8)]
    for record in train:
        assert {"lr", "loss", "mae", "grad_norm", "time", "timestamp"} <= set(record)
        assert math.isfinite(record["loss"]) and record["loss"] > 0
    assert train[0]["lr"] == pytest.approx(trainer.schedule(3))  # the lr of the logged step itself
    assert val[1] == {**val[1], "val_mae": 0.5, "epoch": 2, "global_step": 16}
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_fresh_run_drops_old_metrics(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "global_step": 99, "loss": 1.0}\n')
    trainer, loader = make_trainer(tmp_path, max_epochs=1)
    trainer.fit(loader)
    assert [r["global_step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [4, 8]


# ------------------------------------------------------------------------------ input validation
def test_loader_shorter_than_iters_per_epoch(tmp_path):
    trainer, loader = make_trainer(tmp_path, iters_per_epoch=ITERS + 1)
    with pytest.raises(RuntimeError, match="ran out of batches in epoch 0"):
        trainer.fit(loader)


def test_step_fn_must_return_loss_dict(tmp_path):
    trainer, loader = make_trainer(tmp_path, step_fn=lambda m, b: m(b[0]).sum())
    with pytest.raises(TypeError, match="'loss'"):
        trainer.fit(loader)


@pytest.mark.parametrize("kwargs", [dict(max_epochs=0), dict(log_every=0), dict(grad_clip=0.0), dict(iters_per_epoch=0)])
def test_trainer_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_trainer(tmp_path, **kwargs)


def test_bf16_autocast_on_cpu_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(amp_module, "cpu_has_native_bf16", lambda: True)  # exercise the bf16 path on any CPU
    trainer, loader = make_trainer(tmp_path, max_epochs=1, amp=True)
    assert trainer.amp
    trainer.fit(loader)
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl"))


def test_amp_falls_back_to_float32_on_cpus_without_native_bf16(tmp_path, monkeypatch, caplog):
    # emulated bf16 made the demo teacher's step 13x slower than float32 on an AVX2-only CPU
    monkeypatch.setattr(amp_module, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="powersam.train"):
        trainer, _ = make_trainer(tmp_path, max_epochs=1, amp=True)
    assert not trainer.amp and "no native bfloat16" in caplog.text


def test_move_to_device_nested():
    batch = {"x": torch.ones(1), "pair": (torch.zeros(1), [torch.ones(2)]), "name": "a"}
    moved = move_to_device(batch, torch.device("cpu"))
    assert moved["name"] == "a" and isinstance(moved["pair"], tuple) and torch.equal(moved["pair"][1][0], torch.ones(2))


# ------------------------------------------------------------------------------------------- EMA
def test_ema_momentum_schedule_values():
    ema = ModelEMA(nn.Linear(2, 2))  # momentum 1e-4, gamma 2000 (spec §4.4)
    assert ema.momentum_at(0) == pytest.approx((1 - 1e-4) * math.exp(-1 / 2000) + 1e-4)
    assert ema.momentum_at(1999) == pytest.approx(0.36794265, abs=1e-8)  # (1-1e-4)/e + 1e-4
    assert ema.momentum_at(10**6) == pytest.approx(1e-4)


def test_ema_update_rule_by_hand():
    model = nn.Linear(1, 1, bias=False)
    ema = ModelEMA(model, momentum=0.5, gamma=1.0)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model)  # update 0 copies
    assert ema.module.weight.item() == 2.0
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update(model)
    m1 = 0.5 * math.exp(-2.0) + 0.5
    assert ema.module.weight.item() == pytest.approx((1 - m1) * 2.0 + m1 * 4.0)
    assert ema.updates == 2 and not ema.module.weight.requires_grad
    assert model.weight.item() == 4.0  # the model is untouched


def test_ema_of_constant_model_equals_model():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    model[1].running_mean.uniform_()
    ema = ModelEMA(model, momentum=0.3, gamma=3)
    for _ in range(5):
        ema.update(model)
    for (name, a), b in zip(ema.module.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_ema_buffers_copied_when_not_averaged_and_state_round_trip():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = ModelEMA(model, momentum=0.1, gamma=1.0, update_buffers=False)
    ema.update(model)
    model(torch.randn(4, 3))  # changes running stats and num_batches_tracked
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert ema.module[1].num_batches_tracked.item() == 1
    assert not torch.equal(ema.module[0].weight, model[0].weight)
    clone = ModelEMA(model)
    clone.load_state_dict(ema.state_dict())
    assert clone.updates == 2 and clone.momentum == 0.1 and not clone.update_buffers
    assert torch.equal(clone.module[0].weight, ema.module[0].weight)
    with pytest.raises(ValueError):
        ModelEMA(model, momentum=0.0)


# --------------------------------------------------------------------------------- distributed helpers
@pytest.mark.parametrize("n", [0, 1, 5, 10, 11])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_shard_indices_match_distributed_sampler(n, world, drop_last, shuffle):
    for rank in range(world):
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=7, drop_last=drop_last)
        sampler.set_epoch(3)
        assert pdist.shard_indices(n, 3, 7, rank, world, shuffle, drop_last) == list(sampler)


def test_shard_indices_cover_everything_and_change_per_epoch():
    shards = [pdist.shard_indices(10, 0, 0, r, 3) for r in range(3)]
    assert sorted(set(sum(shards, []))) == list(range(10)) and all(len(s) == 4 for s in shards)
    assert pdist.shard_indices(10, 0, 0, 0, 1) != pdist.shard_indices(10, 1, 0, 0, 1)
    with pytest.raises(ValueError):
        pdist.shard_indices(10, 0, 0, 2, 2)


def test_single_process_helpers_are_no_ops():
    info = pdist.init_distributed(use_cuda=False)
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    model = nn.Linear(2, 2)
    assert pdist.wrap_ddp(model) is model
    t = torch.tensor([1.0, 3.0])
    out = pdist.all_reduce_mean(t)
    assert torch.equal(out, t) and out is not t
    assert pdist.is_main() and pdist.all_gather_objects("x") == ["x"]
    pdist.barrier()
    pdist.cleanup()
    sampler = pdist.ShardSampler(10, seed=1)
    sampler.set_epoch(2)
    assert len(sampler) == 10 and list(sampler) == pdist.shard_indices(10, 2, 1, 0, 1)
