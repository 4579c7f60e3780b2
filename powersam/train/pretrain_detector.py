"""Pretraining the box-prompt generator (stage 3's head) on procedural scenes rendered on the fly.

``powersam train synth-detector --config configs/pretrain/synth_detector.yaml`` trains the YOLOX-style head of
PowerSAM-S/-B on the frozen backbone of a pre-distilled student (``backbone_checkpoint``, default the shipped
``synth_powersam_s``), with every step on scenes nobody rendered before (:mod:`powersam.data.synth_stream`) and
box AP measured on held-out scenes of another seed. The output is the whole integrated model (backbone, prompt
encoder, mask decoder as loaded; the trained head), so ``scripts/ship_student.py`` can ship it as the release's
PowerSAM-S and the demo's stage 3 adapts a trained head (``head_checkpoint``) instead of a random one.

Why: 14 epochs of 20 steps on the demo's 128 images leave the head far from converged (bbox AP50 0.09), and the
frozen backbone makes each step cheap, so a head trained once on unlimited scenes is a far better start.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..data.synth_stream import ConsecutiveSampler, SceneSpec, SceneStream
from .bbpg import BBPGConfig, fit_bbpg

logger = logging.getLogger("powersam.train")

__all__ = ["SynthDetectorConfig", "pretrain_detector"]


@dataclass
class SynthDetectorConfig(BBPGConfig):
    """:class:`BBPGConfig` on streamed scenes: ``data`` is unused; an epoch is ``iters_per_epoch`` fresh steps."""

    backbone_checkpoint: Optional[Path] = Path("synth_powersam_s")
    img_size: Optional[int] = 256
    iters_per_epoch: int = 100
    scene_seed: int = 3000  # not the teacher's (1000) nor the student's (2000) stream, nor the held-out seed
    scene_offset: int = 0
    scene_height: int = 256
    scene_width: int = 320
    min_objects: int = 2
    max_objects: int = 6
    size_jitter: float = 0.15
    val_scenes: int = 50  # held-out scenes (seed HELDOUT_SEED) for box AP; 0 = none
    augment: bool = False  # every scene is new: no augmentation needed (and no feature cache possible)
    output_dir: Path = Path("runs/pretrain/detector")

    def validate(self, needs_data: bool = False) -> None:
        super().validate(needs_data=needs_data)
        if self.iters_per_epoch < 1:
            raise ValueError(f"iters_per_epoch must be >= 1, got {self.iters_per_epoch}")
        if self.cache_features:
            raise ValueError("cache_features cannot be used on streamed scenes (every scene is seen once)")

    def scene_spec(self) -> SceneSpec:
        return SceneSpec(self.scene_height, self.scene_width, self.min_objects, self.max_objects, self.size_jitter)


def head_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The head's own training record in a checkpoint's ``meta``: a ``synth-detector`` run's meta itself; for a
    shipped model (whose top-level steps are its encoder's) its ``detector`` section."""
    return meta if meta.get("stage") == "synth_detector" else dict(meta.get("detector") or {})


def pretrain_detector(cfg: SynthDetectorConfig, resume: bool = False) -> Path:
    """Train the head on streamed scenes; returns ``output_dir/final.pt`` (the integrated model, whose meta records
    the steps and the scenes used, so a continued run can start past them)."""
    from ..checkpoint import read_powersam_checkpoint
    from ..eval.scenes import HELDOUT_SEED, heldout_scenes
    from .distributed import init_distributed

    cfg.validate()
    stream = SceneStream(cfg.scene_seed, cfg.scene_spec())
    val = heldout_scenes(cfg.val_scenes, HELDOUT_SEED, cfg.scene_spec()) if cfg.val_scenes > 0 else None
    if val is not None:
        val.load_masks = False  # the head alone gives boxes: box AP only
    info = init_distributed(use_cuda=None if cfg.device is None else cfg.device.startswith("cuda"))  # idempotent
    world = info.world_size
    sampler = ConsecutiveSampler(cfg.iters_per_epoch * cfg.batch_size * world, offset=cfg.scene_offset,
                                 rank=info.rank, world_size=world)
    previous: dict[str, Any] = {}
    if cfg.head_checkpoint is not None:
        previous = head_meta(read_powersam_checkpoint(cfg.head_checkpoint).get("meta") or {})
    steps = cfg.epochs * cfg.iters_per_epoch
    scenes = steps * cfg.batch_size * world
    meta = {"stage": "synth_detector", "steps": steps, "total_steps": int(previous.get("total_steps", 0)) + steps,
            "scene_seed": cfg.scene_seed, "scene_offset": cfg.scene_offset,
            "next_scene_offset": cfg.scene_offset + scenes, "img_size": cfg.img_size,
            "summary": [f"box-prompt generator trained {steps} steps on {scenes} fresh scenes of stream "
                        f"{cfg.scene_seed} on the frozen backbone of {cfg.backbone_checkpoint}"]}
    return fit_bbpg(cfg, stream, val, resume, sampler=sampler, meta=meta)
