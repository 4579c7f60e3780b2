"""Pretraining a SAM-architecture teacher on procedural substation scenes, for users without a SAM checkpoint.

``powersam train synth-teacher --config configs/pretrain/synth_teacher.yaml`` trains the teacher of
:mod:`powersam.train.teacher` (same objective: jittered boxes and single points, refinement clicks from the
error region, the IoU head) on scenes rendered on the fly (:mod:`powersam.data.synth_stream`): every step sees
scenes nobody rendered before, nothing is written to disk, and a resumed run sees exactly the scenes it would
have seen. ``init_checkpoint`` continues from an earlier teacher (``synth`` = the one shipped in the package);
``scene_offset`` then starts past the scenes that run used, so nothing is seen twice.

The run ends with ``teacher.pt`` (PowerSAM format); ``scripts/ship_teacher.py`` turns it into the
package's float16 safetensors with its recipe JSON. A run stopped early still yields one:
:func:`teacher_from_training_state` reads its ``last.pt``.

``powersam train synth-student`` distils a student encoder (PowerSAM-S/-B) from such a teacher on streamed
scenes the same way (the teacher's embeddings computed online), so the pipeline's stage 1 can start from a
distilled backbone instead of random weights.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.synth_stream import ConsecutiveSampler, SceneSpec, SceneStream
from .signals import ignore_stop_signals
from .sam_data import SamStageConfig, SamTrainDataset, collate_sam_batch, fit_stage, init_stage
from .teacher import TeacherConfig, TeacherObjective, load_teacher, sam_state_dict

logger = logging.getLogger("powersam.train")


@dataclass
class StreamedStageConfig(SamStageConfig):
    """What a stage trained on streamed scenes adds to :class:`SamStageConfig` (no ``data``: scenes are rendered)."""

    iters_per_epoch: int = 100  # an "epoch" is this many steps of fresh scenes (checkpoints, logs, resume)
    scene_seed: int = 1000  # stream of training scenes; held-out evaluations use other seeds
    scene_offset: int = 0  # first scene index (continue past an earlier run's scenes)
    scene_height: int = 256
    scene_width: int = 320
    min_objects: int = 2
    max_objects: int = 6
    size_jitter: float = 0.15
    # With zoom_context (inherited: [min, max] window side / box side) this share of the scenes becomes a zoom-in
    # crop around one of its instances (powersam.data.zoom_crops.ZoomedStream), the inputs zoom-in prompting gives.
    zoom_prob: float = 0.5

    def scene_spec(self) -> SceneSpec:
        return SceneSpec(self.scene_height, self.scene_width, self.min_objects, self.max_objects, self.size_jitter)

    def scene_stream(self) -> Any:
        """The training scenes: the stream of ``scene_seed``, with zoom-in crops when ``zoom_context`` is set."""
        stream = SceneStream(self.scene_seed, self.scene_spec())
        if self.zoom_context is None:
            return stream
        from ..data.zoom_crops import ZoomedStream

        return ZoomedStream(stream, self.zoom_context, prob=self.zoom_prob, seed=self.scene_seed)


@dataclass
class SynthTeacherConfig(TeacherConfig, StreamedStageConfig):
    """:class:`TeacherConfig` on streamed scenes (module docstring); ``data`` and ``checkpoint`` are unused."""

    model: str = "edgesam"
    init_checkpoint: Optional[str] = None  # a teacher to continue from: a path, or "synth" (the shipped one)
    output_dir: Path = Path("runs/pretrain/teacher")


def pretrain_teacher(cfg: SynthTeacherConfig, resume: bool = False) -> Path:
    """Run the pretraining; returns ``output_dir/teacher.pt`` (PowerSAM format, records steps and scenes)."""
    from ..models.zoo import build_model
    from .state import seed_everything

    if cfg.iters_per_epoch < 1:
        raise ValueError(f"iters_per_epoch must be a positive int; got {cfg.iters_per_epoch}")
    info = init_stage(cfg)
    seed_everything(cfg.seed)
    previous: dict[str, Any] = {}
    if cfg.init_checkpoint is None:
        sam = build_model(cfg.model, img_size=cfg.img_size, with_detector=False)
        logger.warning("pretraining a %s teacher from random weights", cfg.model)
    else:
        from ..checkpoint import read_powersam_checkpoint
        from ..weights import resolve_teacher_checkpoint

        source = resolve_teacher_checkpoint(cfg.init_checkpoint)
        sam = load_teacher(cfg.model, source, img_size=cfg.img_size)
        previous = read_powersam_checkpoint(source).get("meta") or {}  # its steps count toward the total
    dataset = SamTrainDataset(cfg.scene_stream(), cfg.img_size, max_prompts=cfg.max_prompts)
    scenes_per_epoch = cfg.iters_per_epoch * cfg.batch_size * info.world_size
    sampler = ConsecutiveSampler(scenes_per_epoch, offset=cfg.scene_offset)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=collate_sam_batch, drop_last=True, worker_init_fn=ignore_stop_signals)
    objective = TeacherObjective(sam, train_encoder=True, point_prob=cfg.point_prob, box_noise=cfg.box_noise,
                                 decode_iters=cfg.decode_iters, bce_weight=cfg.bce_weight,
                                 dice_weight=cfg.dice_weight, iou_weight=cfg.iou_weight,
                                 min_error_pixels=cfg.min_error_pixels)
    trainer = fit_stage(cfg, objective, loader, info, resume)
    sam.eval()
    path = Path(cfg.output_dir) / "teacher.pt"
    if info.is_main:
        save_pretrained_teacher(path, sam_state_dict(sam), getattr(sam, "model_name", cfg.model), cfg,
                                trainer.global_step, info.world_size, previous)
        logger.info("teacher written to %s", path)
    return path


def save_pretrained_teacher(path: Path, state: dict[str, Any], model_name: str, cfg: SynthTeacherConfig, steps: int,
                            world_size: int, previous: dict[str, Any], partial: bool = False) -> Path:
    """Write a pretrained teacher (PowerSAM format) whose meta records its steps and the scenes it used.

    ``previous``: the meta of the teacher it continued from (its steps count toward ``total_steps``)."""
    from ..checkpoint import save_checkpoint

    scenes_used = steps * cfg.batch_size * world_size
    meta = {
        "stage": "synth_teacher", "from_scratch": cfg.init_checkpoint is None,
        "init_checkpoint": cfg.init_checkpoint, "steps": steps,
        "total_steps": int(previous.get("total_steps", 0)) + steps,
        "scene_seed": cfg.scene_seed, "scene_offset": cfg.scene_offset,
        "next_scene_offset": cfg.scene_offset + scenes_used, "img_size": cfg.img_size, "partial": partial,
        "zoom_context": None if cfg.zoom_context is None else [float(c) for c in cfg.zoom_context],
        "zoom_prob": cfg.zoom_prob if cfg.zoom_context is not None else None,
        "summary": [f"pretrained {steps} steps on {scenes_used} fresh scenes of stream {cfg.scene_seed}"
                    + (f" (stopped before its {cfg.epochs * cfg.iters_per_epoch} steps)" if partial else "")],
    }
    return save_checkpoint(path, state, model_name, model_config={"img_size": cfg.img_size}, meta=meta)


def teacher_from_training_state(run_dir: Path) -> Path:
    """``run_dir/teacher.pt`` from the ``last.pt`` of an unfinished (or finished) pretraining run, so a run that
    must stop early (a session's end) still yields a teacher; a later ``--resume`` continues the run itself."""
    run_dir = Path(run_dir)
    cfg, training, state, previous = _training_state(run_dir, SynthTeacherConfig, "sam.")
    keep = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
    state = {k: v for k, v in state.items() if k.startswith(keep)}
    steps = int(training["global_step"])
    return save_pretrained_teacher(run_dir / "teacher.pt", state, cfg.model, cfg, steps,
                                   int(training.get("world_size", 1)), previous,
                                   partial=steps < cfg.epochs * cfg.iters_per_epoch)


# ---------------------------------------------------------------------------------------------- student


@dataclass
class SynthStudentConfig(StreamedStageConfig):
    """Stage-1 distillation on streamed scenes: the student encoder learns the (frozen) teacher's embeddings,
    computed online, so nothing is cached or written but the student. The output is a whole SAM (student
    encoder + the teacher's prompt encoder and mask decoder), as stage 1 writes it."""

    student: str = "powersam_s"
    teacher_checkpoint: str = "synth"  # a teacher checkpoint path, or "synth" (the shipped one)
    upsample_mode: str = "bicubic"
    init_checkpoint: Optional[str] = None  # a student to continue from (path or shipped name, e.g. synth_powersam_s)
    scene_seed: int = 2000
    lr: float = 1e-3
    weight_decay: float = 0.05
    grad_clip: Optional[float] = 5.0
    output_dir: Path = Path("runs/pretrain/student")


class OnlineEncoderDistillObjective(nn.Module):
    """``forward(batch) -> {"loss"}``: masked embedding MSE of the student against the teacher, run now."""

    def __init__(self, encoder: nn.Module, teacher_encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.teacher_encoder = teacher_encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "OnlineEncoderDistillObjective":
        super().train(mode)
        self.teacher_encoder.eval()  # frozen BatchNorm statistics: the teacher is a fixed target
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from .sam_losses import embedding_mse_loss

        with torch.no_grad():
            target = self.teacher_encoder(batch["image"])
        return {"loss": embedding_mse_loss(self.encoder(batch["image"]), target, batch["valid_embed"])}


def pretrain_student(cfg: SynthStudentConfig, resume: bool = False) -> Path:
    """Distil ``cfg.student``'s encoder from the teacher on streamed scenes; returns ``<student>_synth.pt``."""
    from ..checkpoint import read_powersam_checkpoint
    from ..models.zoo import build_model
    from ..weights import resolve_teacher_checkpoint
    from .distill_encoder import STUDENT_MODELS, copy_decoder
    from .state import seed_everything

    if cfg.student not in STUDENT_MODELS:
        raise ValueError(f"student must be one of {STUDENT_MODELS}; got {cfg.student!r}")
    info = init_stage(cfg)
    teacher = load_teacher(None, resolve_teacher_checkpoint(cfg.teacher_checkpoint), img_size=cfg.img_size)
    seed_everything(cfg.seed)
    previous: dict[str, Any] = {}
    if cfg.init_checkpoint is None:
        sam = build_model(cfg.student, img_size=cfg.img_size, with_detector=False, upsample_mode=cfg.upsample_mode)
    else:
        source = resolve_teacher_checkpoint(cfg.init_checkpoint)
        sam = build_model(cfg.student, checkpoint=source, img_size=cfg.img_size, with_detector=False)
        previous = read_powersam_checkpoint(source).get("meta") or {}
    copy_decoder(sam, teacher)
    dataset = SamTrainDataset(cfg.scene_stream(), cfg.img_size, with_instances=False)
    sampler = ConsecutiveSampler(cfg.iters_per_epoch * cfg.batch_size * info.world_size, offset=cfg.scene_offset)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=collate_sam_batch, drop_last=True, worker_init_fn=ignore_stop_signals)
    objective = OnlineEncoderDistillObjective(sam.image_encoder, teacher.image_encoder)
    trainer = fit_stage(cfg, objective, loader, info, resume, optimizer_model=sam.image_encoder)
    sam.eval()
    path = Path(cfg.output_dir) / f"{cfg.student}_synth.pt"
    if info.is_main:
        save_pretrained_student(path, sam, cfg, trainer.global_step, info.world_size, previous)
        logger.info("student written to %s", path)
    return path


def save_pretrained_student(path: Path, sam: nn.Module, cfg: SynthStudentConfig, steps: int, world_size: int,
                            previous: dict[str, Any], partial: bool = False) -> Path:
    """Write a pre-distilled student (a whole SAM: its encoder + the teacher's prompt encoder and mask decoder)
    whose meta records its steps and the scenes it used; ``previous``: the meta of the student it continued from."""
    from ..checkpoint import save_checkpoint

    scenes_used = steps * cfg.batch_size * world_size
    meta = {"stage": "synth_student", "teacher_checkpoint": str(cfg.teacher_checkpoint),
            "init_checkpoint": cfg.init_checkpoint, "steps": steps,
            "total_steps": int(previous.get("total_steps", 0)) + steps, "scene_seed": cfg.scene_seed,
            "scene_offset": cfg.scene_offset, "next_scene_offset": cfg.scene_offset + scenes_used,
            "img_size": cfg.img_size, "partial": partial,
            "summary": [f"student {cfg.student} distilled {steps} steps on {scenes_used} fresh scenes from "
                        f"teacher {cfg.teacher_checkpoint}"
                        + (f" (stopped before its {cfg.epochs * cfg.iters_per_epoch} steps)" if partial else "")]}
    return save_checkpoint(path, sam_state_dict(sam), cfg.student,
                           model_config={"img_size": cfg.img_size, "upsample_mode": cfg.upsample_mode}, meta=meta)


def student_from_training_state(run_dir: Path) -> Path:
    """``run_dir/<student>_synth.pt`` from the ``last.pt`` of an unfinished (or finished) ``synth-student`` run:
    the trained encoder from the training state, the prompt encoder and mask decoder from its teacher."""
    from ..models.zoo import build_model
    from ..weights import resolve_teacher_checkpoint
    from .distill_encoder import copy_decoder

    run_dir = Path(run_dir)
    cfg, training, encoder_state, previous = _training_state(run_dir, SynthStudentConfig, "encoder.")
    sam = build_model(cfg.student, img_size=cfg.img_size, with_detector=False, upsample_mode=cfg.upsample_mode)
    sam.image_encoder.load_state_dict(encoder_state)  # strict: a key diff is an error
    copy_decoder(sam, load_teacher(None, resolve_teacher_checkpoint(cfg.teacher_checkpoint), img_size=cfg.img_size))
    sam.eval()
    steps = int(training["global_step"])
    return save_pretrained_student(run_dir / f"{cfg.student}_synth.pt", sam, cfg, steps,
                                   int(training.get("world_size", 1)), previous,
                                   partial=steps < cfg.epochs * cfg.iters_per_epoch)


def _training_state(run_dir: Path, config_class: type, prefix: str) -> tuple[Any, dict, dict, dict]:
    """What a stopped streamed run left: ``(its config, the training state of last.pt, the model weights under
    prefix with it stripped, the meta of the checkpoint it continued from ({} when none))``."""
    from ..checkpoint import read_powersam_checkpoint
    from ..weights import resolve_teacher_checkpoint
    from .config import load_config

    cfg = load_config(run_dir / "config.yaml", config_class)
    training = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    if training.get("format") != "powersam.training_state":
        raise ValueError(f"{run_dir / 'last.pt'} is not a PowerSAM training state")
    state = {k[len(prefix):]: v for k, v in training["model"].items() if k.startswith(prefix)}
    previous = {}
    if cfg.init_checkpoint is not None:
        previous = read_powersam_checkpoint(resolve_teacher_checkpoint(cfg.init_checkpoint)).get("meta") or {}
    return cfg, training, state, previous
