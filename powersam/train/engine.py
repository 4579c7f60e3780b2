"""The shared epoch/iteration training loop used by every PowerSAM training stage.

A stage supplies a model, an optimizer (:func:`powersam.train.schedule.build_optimizer`), a per-iteration LR
schedule and a ``step_fn(model, batch) -> {"loss": tensor, **scalars}``; :class:`Trainer` does the rest:
sampler epochs, LR per iteration, backward, gradient clipping, optimizer step, EMA, ``metrics.jsonl``, curves,
and an atomic ``last.pt`` that a run resumes from **bit-exactly** (same weights as an uninterrupted run on
the CPU), at an epoch boundary or in the middle of an epoch.

Resume contract: the data order of an epoch must be a function of the RNG state at the start of the epoch
and of ``sampler.set_epoch`` (true for ``DataLoader(shuffle=True)``, ``DistributedSampler`` and
:class:`~powersam.train.distributed.ShardSampler`, with or without worker processes, but not with
``persistent_workers=True``). A mid-epoch resume re-creates the epoch's loader and skips the batches already
trained on (they are loaded and discarded). Under DDP every rank's RNG state is saved; the EMA is rank 0's,
so other ranks restart theirs from it, which is exact unless BatchNorm statistics differ between ranks
(plain BatchNorm instead of SyncBatchNorm).

Interrupts: on SIGINT / SIGTERM the loop finishes the current iteration, all ranks agree to stop, ``last.pt``
is written and :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) is raised. A second Ctrl-C aborts at once;
if that lands in the middle of a parameter update nothing is saved (the state would be torn), otherwise the
state after the last completed iteration is saved. A non-finite loss raises ``FloatingPointError`` naming
the epoch and iteration *before* the update, and no checkpoint is written from it.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import torch
from torch import nn

from . import distributed as pdist
from .amp import amp_pays_off
from .checkpointing import ResumableTraining
from .distributed import move_to_device, set_loader_epoch, unwrap_model
from .ema import ModelEMA
from .metrics import MetricsLogger, plot_curves
from .schedule import set_lr
from .signals import StopRequests
from .state import capture_rng_state, restore_rng_state, seed_everything

logger = logging.getLogger("powersam.train")

StepFn = Callable[[nn.Module, Any], Mapping[str, Any]]
EpochHook = Callable[["Trainer", int], None]


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after a signal-requested stop once ``last.pt`` has been written."""


class Trainer(ResumableTraining):
    """Epoch-based trainer; see the module docstring. Subclass and override :meth:`train_step`,
    :meth:`set_train_mode` or :meth:`extra_state` / :meth:`load_extra_state` where a stage needs to.

    Args:
        model: the model to train (plain or already DDP-wrapped; :func:`powersam.train.distributed.wrap_ddp`).
        optimizer: optimizer over the model's trainable parameters.
        schedule: ``schedule(k) -> lr`` for the k-th step (0-based), applied with :func:`set_lr`; ``None`` keeps
            the optimizer's LR.
        step_fn: ``step_fn(model, batch) -> {"loss": scalar tensor, **other scalars}`` (the batch is already on
            ``device``). Required unless :meth:`train_step` is overridden.
        output_dir: where ``last.pt``, ``metrics.jsonl`` and ``curves.png`` go (written by rank 0 only).
        max_epochs: number of epochs of the whole run.
        iters_per_epoch: steps per epoch; default ``len(train_loader)``.
        grad_clip: max global L2 norm of the gradients, or ``None`` for no clipping.
        ema: a :class:`ModelEMA` updated after every step, saved and resumed with the run.
        seed: runs start from ``seed + rank`` on every generator (spec §5.0: "seed 0+rank").
        log_every: write a ``metrics.jsonl`` record every this many steps.
        checkpoint_every: write ``last.pt`` every this many epochs (and always after the last one).
        amp: autocast the step (float16 + GradScaler on CUDA, bfloat16 on the CPU unless ``amp_dtype``).
        on_epoch_start, on_epoch_end: ``hook(trainer, epoch)``, run on **every** rank; ``on_epoch_end`` runs
            before the epoch's checkpoint (use :meth:`log_metrics` for validation scores).
        device: where batches go; default the device of the model's first parameter.
        progress: show a tqdm bar on rank 0.
        plot: redraw ``curves.png`` from ``metrics.jsonl`` at every checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Optional[Callable[[int], float]] = None,
        step_fn: Optional[StepFn] = None,
        *,
        output_dir: Union[str, Path],
        max_epochs: int,
        iters_per_epoch: Optional[int] = None,
        grad_clip: Optional[float] = None,
        ema: Optional[ModelEMA] = None,
        seed: int = 0,
        log_every: int = 10,
        checkpoint_every: int = 1,
        amp: bool = False,
        amp_dtype: Optional[torch.dtype] = None,
        on_epoch_start: Optional[EpochHook] = None,
        on_epoch_end: Optional[EpochHook] = None,
        device: Optional[Union[str, torch.device]] = None,
        progress: bool = True,
        plot: bool = True,
    ) -> None:
        for name, value in (("max_epochs", max_epochs), ("log_every", log_every), ("checkpoint_every", checkpoint_every)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if iters_per_epoch is not None and (not isinstance(iters_per_epoch, int) or iters_per_epoch < 1):
            raise ValueError(f"iters_per_epoch must be a positive int or None, got {iters_per_epoch!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip!r}")
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.step_fn = step_fn
        self.output_dir = Path(output_dir)
        self.max_epochs = max_epochs
        self.iters_per_epoch = iters_per_epoch
        self.grad_clip = grad_clip
        self.ema = ema
        self.seed = seed
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every
        self.on_epoch_start = on_epoch_start
        self.on_epoch_end = on_epoch_end
        self.progress = progress
        self.plot = plot
        first_param = next(unwrap_model(model).parameters(), None)
        self.device = torch.device(device) if device is not None else (first_param.device if first_param is not None else torch.device("cpu"))
        self.dist = pdist.get_dist_info(self.device)
        self.amp_dtype = amp_dtype or (torch.float16 if self.device.type == "cuda" else torch.bfloat16)
        self.amp = amp and amp_pays_off(self.device, self.amp_dtype)
        use_scaler = amp and self.amp_dtype == torch.float16
        if hasattr(torch.amp, "GradScaler"):
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        else:  # torch < 2.3
            self.scaler = torch.cuda.amp.GradScaler(enabled=use_scaler)
        self.metrics = MetricsLogger(self.output_dir / "metrics.jsonl", enabled=self.dist.is_main)
        self.checkpoint_path = self.output_dir / "last.pt"
        self.curves_path = self.output_dir / "curves.png"
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        # Progress counters: completed epochs, completed steps in the current epoch, completed steps overall.
        self.epoch = 0
        self.iter_in_epoch = 0
        self.global_step = 0
        self._stop = StopRequests()
        self._updating = False
        self._rng_after_commit: Optional[dict] = None
        self._epoch_start_rng: Optional[dict] = None
        self._resume_rngs: Optional[tuple[Optional[dict], Optional[dict]]] = None
        # Scalars summed since the last metrics record; saved per rank so a resumed run logs the same values.
        self._window: dict = {"sums": {}, "count": 0}
        self._window_start = time.perf_counter()

    # ------------------------------------------------------------------ hooks a stage may override
    def train_step(self, batch: Any) -> Mapping[str, Any]:
        if self.step_fn is None:
            raise TypeError("pass step_fn to Trainer or override Trainer.train_step")
        return self.step_fn(self.model, batch)

    def set_train_mode(self) -> None:
        """Called at the start of every epoch (a stage with frozen BatchNorm re-freezes it here)."""
        self.model.train()

    def extra_state(self) -> dict:
        """Additional plain state a subclass wants in ``last.pt``."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # ------------------------------------------------------------------ public API
    def log_metrics(self, record: Mapping[str, Any], kind: str = "val") -> None:
        """Append ``record`` (plus ``kind``, ``epoch``, ``global_step``) to ``metrics.jsonl`` on rank 0."""
        self.metrics.log({"kind": kind, "epoch": self.epoch, "global_step": self.global_step, **record})

    def fit(self, train_loader: Any, resume: Union[bool, str, Path] = False) -> Path:
        """Train until ``max_epochs``; returns the path of ``last.pt``.

        ``resume=True`` continues from ``output_dir/last.pt`` if it exists (and starts afresh otherwise, which
        suits preemptible jobs); a path resumes from that file. ``resume=False`` starts afresh and drops the
        training records of an earlier run from ``metrics.jsonl``.
        """
        if self.iters_per_epoch is not None:
            iters = self.iters_per_epoch
        else:
            try:
                iters = len(train_loader)
            except TypeError:
                raise ValueError("train_loader has no len(); pass iters_per_epoch") from None
            if iters == 0:
                raise ValueError("train_loader is empty")
        total = getattr(self.schedule, "total_iters", None)
        if total is not None and total < self.max_epochs * iters:
            logger.warning("the LR schedule covers %d steps but the run has %d", total, self.max_epochs * iters)

        path = self.checkpoint_path if resume is True else (Path(resume) if resume else None)
        self._stop.requested = self._updating = False
        self._window, self._window_start = {"sums": {}, "count": 0}, time.perf_counter()
        if path is not None and (resume is not True or path.is_file()):
            self.load_state(path)
            self.metrics.truncate_after(self.global_step)
        else:
            if self.checkpoint_path.is_file():
                logger.warning("starting afresh: %s of an earlier run will be overwritten", self.checkpoint_path)
            seed_everything(self.seed + self.dist.rank)
            self.metrics.truncate_after(-1)
        self._rng_after_commit = capture_rng_state()
        with self._stop.installed():
            try:
                self._run(train_loader, iters)
            except TrainingInterrupted:
                raise
            except KeyboardInterrupt:
                if self._updating:
                    logger.error("interrupted in the middle of a parameter update; not saving a torn state")
                else:
                    logger.warning("interrupted at epoch %d, step %d: saving %s", self.epoch, self.global_step, self.checkpoint_path)
                    self.save_state(collective=False)
                raise
        return self.checkpoint_path

    # ------------------------------------------------------------------ loop
    def _run(self, loader: Any, iters: int) -> None:
        while self.epoch < self.max_epochs:
            epoch = self.epoch
            skip = self.iter_in_epoch
            if skip == 0:
                self._epoch_start_rng = capture_rng_state()
            else:  # mid-epoch resume: replay the epoch's start so that the loader yields the same batches
                self._epoch_start_rng = self._resume_rngs[0]
                restore_rng_state(self._epoch_start_rng)
            if self.on_epoch_start is not None:
                self.on_epoch_start(self, epoch)
            set_loader_epoch(loader, epoch)
            self.set_train_mode()
            # (a stop after the epoch's last step resumes straight into the epoch end: no batches to skip)
            batches = iter(loader) if skip < iters else iter(())
            for _ in range(skip if skip < iters else 0):
                self._next_batch(batches, epoch, iters)
            if skip:
                restore_rng_state(self._resume_rngs[1])
            bar = self._progress_bar(epoch, iters, skip)
            try:
                for index in range(skip, iters):
                    batch = self._next_batch(batches, epoch, iters)
                    scalars, instant, stop = self._train_iteration(batch, epoch, index)
                    self._rng_after_commit = capture_rng_state()
                    sums = self._window["sums"]
                    for key, value in scalars.items():
                        sums[key] = sums.get(key, 0.0) + value
                    self._window["count"] += 1
                    if bar is not None:
                        bar.update(1)
                    if self.global_step % self.log_every == 0:
                        record = self._log_window(instant, epoch, index)
                        if bar is not None:
                            bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.3g}", refresh=False)
                    if stop:
                        self.save_state()
                        raise TrainingInterrupted(f"training stopped by a signal at epoch {epoch}, step {self.global_step}; "
                                                  f"resume from {self.checkpoint_path}")
            finally:
                if bar is not None:
                    bar.close()
            self.epoch, self.iter_in_epoch = epoch + 1, 0
            if self.on_epoch_end is not None:
                self.on_epoch_end(self, epoch)
            self._rng_after_commit = capture_rng_state()
            if self.epoch % self.checkpoint_every == 0 or self.epoch == self.max_epochs:
                self.save_state()

    def _next_batch(self, batches: Iterator, epoch: int, iters: int) -> Any:
        try:
            return next(batches)
        except StopIteration:
            raise RuntimeError(f"the train loader ran out of batches in epoch {epoch} before iters_per_epoch={iters}") from None

    def _train_iteration(self, batch: Any, epoch: int, index: int) -> tuple[dict[str, float], dict[str, float], bool]:
        """One optimizer step. Returns the step function's scalars (averaged over the log window), the
        instantaneous ``lr`` / ``grad_norm``, and whether all ranks agreed to stop after this step."""
        lr = None
        if self.schedule is not None:
            lr = float(self.schedule(self.global_step))
            set_lr(self.optimizer, lr)
        batch = move_to_device(batch, self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            out = self.train_step(batch)
        if not isinstance(out, Mapping) or "loss" not in out:
            raise TypeError(f"the step function must return a dict with a 'loss' entry, got {type(out).__name__}")
        loss = out["loss"]
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError("the step function's 'loss' must be a one-element tensor")
        scalars = {"loss": float(loss.detach())}
        nonfinite, stop = not math.isfinite(scalars["loss"]), self._stop.requested
        if self.dist.distributed:  # every rank must take the same branch, or the others hang in all-reduce
            flags = pdist.all_reduce_max(torch.tensor([float(nonfinite), float(stop)], device=self.device))
            nonfinite, stop = bool(flags[0] > 0), bool(flags[1] > 0)
        if nonfinite:
            raise FloatingPointError(
                f"non-finite loss ({scalars['loss']}) at epoch {epoch}, iteration {index} (global step {self.global_step}); "
                f"stopped before the update, {self.checkpoint_path} was not overwritten"
            )
        for key, value in out.items():
            if key != "loss":
                scalars[key] = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)

        self.optimizer.zero_grad(set_to_none=True)
        self._updating = True
        self.scaler.scale(loss).backward()
        grad_norm = None
        logging_now = (self.global_step + 1) % self.log_every == 0
        self.scaler.unscale_(self.optimizer)  # a no-op without float16 loss scaling
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        elif grads:
            grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        # With loss scaling an inf gradient is routine (the scaler skips that step); without it, one non-finite
        # gradient would silently turn every weight into NaN. Gradients are all-reduced, so all ranks agree.
        if not self.scaler.is_enabled() and grad_norm is not None and not bool(torch.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self._updating = False
            raise FloatingPointError(
                f"non-finite gradient (norm {float(grad_norm)}) at epoch {epoch}, iteration {index} (global step "
                f"{self.global_step}) although the loss was finite ({scalars['loss']:.4g}); the update was not applied "
                f"and {self.checkpoint_path} was not overwritten. Resume with a lower lr, a longer warmup or "
                "grad_clip set."
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        self.global_step += 1
        self.iter_in_epoch = index + 1
        self._updating = False
        instant = {"lr": lr if lr is not None else float(self.optimizer.param_groups[0]["lr"])}
        if logging_now and grad_norm is not None:
            instant["grad_norm"] = float(grad_norm)  # identical on all ranks: the gradients are all-reduced
        return scalars, instant, stop

    def _log_window(self, instant: dict, epoch: int, index: int) -> dict:
        sums, count = self._window["sums"], self._window["count"]
        seconds = time.perf_counter() - self._window_start
        self._window, self._window_start = {"sums": {}, "count": 0}, time.perf_counter()
        keys = sorted(sums)
        means = torch.tensor([sums[k] / count for k in keys], dtype=torch.float64)
        if self.dist.distributed:
            means = pdist.all_reduce_mean(means.to(self.device)).cpu()
        record = {"kind": "train", "epoch": epoch, "iter": index + 1, "global_step": self.global_step, **instant,
                  **{k: float(v) for k, v in zip(keys, means)}, "time": seconds / count, "timestamp": time.time()}
        self.metrics.log(record)
        return record

    def _progress_bar(self, epoch: int, iters: int, initial: int):
        if not (self.progress and self.dist.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=iters, initial=initial, desc=f"epoch {epoch + 1}/{self.max_epochs}", mininterval=2.0,
                    dynamic_ncols=True, leave=False, file=sys.stderr)

    def _plot(self) -> None:
        try:
            if self.metrics.path.is_file():
                plot_curves(self.metrics.path, self.curves_path)
        except Exception as error:  # a plotting problem must never cost a training run
            logger.warning("could not plot %s: %s", self.curves_path, error)
