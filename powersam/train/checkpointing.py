"""The resumable state of a :class:`~powersam.train.engine.Trainer`: what ``last.pt`` holds and how a run picks it
up again (weights, optimizer, schedule, EMA, GradScaler, every rank's RNG states, the open metrics window and a
stage's extra state). The file format and its atomic write live in :mod:`powersam.train.state`; this mixin knows
which of the trainer's attributes make a resume bit-exact.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional, Union

import torch

from . import distributed as pdist
from .distributed import unwrap_model
from .state import capture_rng_state, load_training_state, restore_rng_state, save_training_state, seed_everything

logger = logging.getLogger("powersam.train")

STATE_FORMAT = "powersam.training_state"


class ResumableTraining:
    """Mixin of :class:`~powersam.train.engine.Trainer`: :meth:`save_state` writes ``last.pt``, :meth:`load_state`
    restores it. Relies on the trainer's ``model``, ``optimizer``, ``schedule``, ``ema``, ``scaler``, ``dist``,
    ``seed``, progress counters, RNG snapshots and ``extra_state`` / ``load_extra_state`` hooks."""

    def save_state(self, collective: bool = True) -> Optional[Path]:
        """Write ``last.pt`` (rank 0). ``collective``: all ranks call this (their RNG states are gathered)."""
        model = unwrap_model(self.model)
        # Checked on every rank (DDP keeps the parameters identical), so all ranks raise together.
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.is_floating_point()):
            raise FloatingPointError(f"refusing to save non-finite weights to {self.checkpoint_path}")
        mine = (self._rng_after_commit, self._epoch_start_rng, self._window)
        per_rank = pdist.all_gather_objects(mine) if collective else [mine]
        written = None
        if self.dist.is_main:
            state = {
                "format": STATE_FORMAT,
                "version": 1,
                "epoch": self.epoch,
                "iter_in_epoch": self.iter_in_epoch,
                "global_step": self.global_step,
                "world_size": self.dist.world_size,
                "model": model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict() if hasattr(self.schedule, "state_dict") else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "rng": [r[0] for r in per_rank],
                "epoch_start_rng": [r[1] for r in per_rank] if self.iter_in_epoch else None,
                "log_window": [r[2] for r in per_rank],
                "extra": self.extra_state(),
            }
            written = save_training_state(self.checkpoint_path, state)
            if self.plot:
                self._plot()
        if collective:
            pdist.barrier()
        return written

    def load_state(self, path: Union[str, Path]) -> None:
        """Restore everything :meth:`save_state` wrote; every rank reads the same file."""
        state = load_training_state(path, map_location="cpu")
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not a PowerSAM training state (format={state.get('format')!r})")
        unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("schedule") is not None and hasattr(self.schedule, "load_state_dict"):
            self.schedule.load_state_dict(state["schedule"])
        if (state.get("ema") is None) != (self.ema is None):
            raise ValueError(f"{path} was saved {'without' if state.get('ema') is None else 'with'} an EMA, this run is the opposite")
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if state.get("scaler") is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.iter_in_epoch, self.global_step = int(state["epoch"]), int(state["iter_in_epoch"]), int(state["global_step"])
        rank = self.dist.rank

        def mine(per_rank: Optional[list]) -> Optional[dict]:
            return per_rank[rank] if per_rank is not None and rank < len(per_rank) and per_rank[rank] is not None else None

        rng, start_rng = mine(state["rng"]), mine(state.get("epoch_start_rng"))
        if rng is None or (self.iter_in_epoch and start_rng is None) or int(state["world_size"]) != self.dist.world_size:
            logger.warning("%s (saved with %s ranks) has no RNG state for rank %d of %d: reseeding, so the resumed "
                           "run is not bit-identical", path, state["world_size"], rank, self.dist.world_size)
            seed_everything(self.seed + rank + 1_000_003 * self.global_step)
            rng = start_rng = capture_rng_state()
        restore_rng_state(rng)
        self._resume_rngs = (start_rng, rng)
        window = mine(state.get("log_window"))
        self._window = {"sums": dict(window["sums"]), "count": int(window["count"])} if window else {"sums": {}, "count": 0}
        self._window_start = time.perf_counter()
        self.load_extra_state(state.get("extra") or {})
        logger.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.global_step)
