"""Stage 1: encoder-only distillation of the RepViT student from cached teacher embeddings (spec §5.2).

The student image encoder (``powersam_s`` → RepViT m0, ``powersam_b`` → m1) learns to reproduce the teacher's
256×(S/16)² embedding: per-pixel MSE, averaged over channels, over the valid (not padded) cells only. AdamW,
per-iteration warmup + cosine, gradient clipping, no augmentation, as the reference. The teacher embeddings come
from an :class:`~powersam.train.embed_cache.EmbeddingCache` (built here when missing).

The written checkpoint is a whole SAM model (``powersam_s`` / ``powersam_b``, without the box generator): the
trained encoder plus the teacher's prompt encoder and mask decoder, which have the same architecture when the
teacher is a SAM with a 256-d decoder (the reference's INIT_FROM_TEACHER for stage 2).

Optional init from a new-format RepViT ImageNet checkpoint (``repvit_m0_6_distill_300e.pth``, …) is non-strict
by necessity (spec §2.7): it is converted with :func:`~powersam.models.repvit.convert_new_format_repvit` and what
was and was not loaded is logged.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from . import distributed as pdist
from .embed_cache import default_cache_dir, ensure_embedding_cache
from .sam_data import (
    FirstImages,
    SamStageConfig,
    SamTrainDataset,
    build_sam_loader,
    collate_sam_batch,
    fit_stage,
    init_stage,
    open_stage_dataset,
)
from .sam_losses import embedding_mse_loss
from .teacher import load_teacher, sam_state_dict

logger = logging.getLogger("powersam.train")

STUDENT_MODELS = ("powersam_s", "powersam_b", "edgesam")
_NEW_FORMAT_CONV1 = re.compile(r"token_mixer\.0\.conv1\.weight$")


@dataclass
class EncoderDistillConfig(SamStageConfig):
    """Stage-1 settings; the defaults are the reference's (rep_vit_m0_fuse_…_distill_100e.yaml, spec §5.2)."""

    student: str = "powersam_s"
    teacher_checkpoint: Optional[Path] = None  # stage-0 output (or an official SAM file with teacher_model)
    teacher_model: Optional[str] = None
    cache_dir: Optional[Path] = None  # default: next to the teacher checkpoint (see default_cache_dir)
    cache_batch_size: int = 8
    # A student to adapt instead of random weights: a pre-distilled one of the same architecture (a shipped name such
    # as synth_powersam_s, or a `powersam train synth-student` output; loaded strictly), or ImageNet RepViT weights
    # (new format; loaded non-strictly, with a report of what was left at init).
    init_checkpoint: Optional[Path] = None
    upsample_mode: str = "bicubic"
    copy_decoder_from_teacher: bool = True
    eval_images: int = 0  # held-out (val) images for the embedding MSE before/after training; 0 = skip
    epochs: int = 100
    warmup_epochs: int = 5
    batch_size: int = 8
    lr: float = 0.1
    min_lr: float = 5e-6
    warmup_lr: float = 5e-7
    scale_lr: bool = True
    weight_decay: float = 0.01
    grad_clip: Optional[float] = 5.0
    output_dir: Path = Path("runs/stage1_encoder")


class EncoderDistillObjective(nn.Module):
    """``forward(batch) -> {"loss"}``: masked embedding MSE of ``encoder(image)`` against the cached teacher."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        student = self.encoder(batch["image"])
        return {"loss": embedding_mse_loss(student, batch["teacher_embedding"], batch["valid_embed"])}


def load_repvit_init(encoder: nn.Module, checkpoint: Path) -> dict[str, Any]:
    """Load ImageNet RepViT weights into ``encoder`` non-strictly and report what happened.

    New-format files are converted first (spec §2.7). Keys with a ``image_encoder.`` or ``backbone.`` prefix on
    every key (a SAM or detector checkpoint) are accepted too. Returns ``{"loaded", "missing", "unexpected",
    "wrong_shape"}`` key lists; the counts and the missing groups are logged."""
    from ..checkpoint import read_checkpoint
    from ..models.repvit import convert_new_format_repvit

    state = read_checkpoint(checkpoint)
    if any(k.startswith("image_encoder.") for k in state) and any(k.startswith("mask_decoder.") for k in state):
        state = {k: v for k, v in state.items() if k.startswith("image_encoder.")}  # a whole SAM: its encoder
    for prefix in ("image_encoder.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if any(_NEW_FORMAT_CONV1.search(k) for k in state):
        state = convert_new_format_repvit(state)
    expected = encoder.state_dict()
    wrong_shape = [k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    usable = {k: v for k, v in state.items() if k in expected and k not in wrong_shape}
    if not usable:
        raise ValueError(f"{checkpoint} shares no weights with the {type(encoder).__name__} student "
                         f"(first keys: {list(state)[:5]})")
    result = encoder.load_state_dict(usable, strict=False)
    report = {"loaded": sorted(usable), "missing": sorted(result.missing_keys),
              "unexpected": sorted(k for k in state if k not in expected), "wrong_shape": wrong_shape}
    logger.info("init from %s: left at init: %s; unexpected: %s; wrong shape: %s", checkpoint, report["missing"],
                report["unexpected"], wrong_shape)
    groups = sorted({".".join(k.split(".")[:2]) for k in report["missing"]})
    logger.warning(
        "init from %s (non-strict): loaded %d of %d encoder tensors; left at init: %d (%s); ignored from the file: "
        "%d unexpected, %d with the wrong shape", checkpoint, len(usable), len(expected), len(report["missing"]),
        ", ".join(groups[:12]) + (" …" if len(groups) > 12 else ""), len(report["unexpected"]), len(wrong_shape),
    )
    return report


def init_student_encoder(sam: nn.Module, checkpoint: Union[str, Path], student: str, img_size: int,
                         upsample_mode: str) -> str:
    """Start ``sam``'s encoder from ``checkpoint`` instead of random weights; returns a note for the summary.

    A PowerSAM checkpoint (or shipped name) of ``student``'s architecture, e.g. a pre-distilled
    ``synth_powersam_s``, is loaded strictly (a key diff is an error); one of another architecture is refused
    (its tensors do not fit); anything else is ImageNet RepViT weights, loaded non-strictly with a report."""
    from ..checkpoint import read_powersam_checkpoint
    from ..models.zoo import build_model

    architecture = read_powersam_checkpoint(checkpoint)["model_name"]
    if architecture is None:
        report = load_repvit_init(sam.image_encoder, Path(checkpoint))
        return (f"encoder init from {checkpoint}: {len(report['loaded'])} tensors loaded, "
                f"{len(report['missing'])} left at init")
    if architecture != student:
        raise ValueError(f"init_checkpoint {checkpoint} holds a {architecture} model, but the student is {student}: "
                         f"pass a {student} checkpoint (shipped: synth_{student}, if it exists), ImageNet RepViT "
                         "weights, or null to start from random weights")
    pretrained = build_model(student, checkpoint=checkpoint, img_size=img_size, with_detector=False,
                             upsample_mode=upsample_mode)
    sam.image_encoder.load_state_dict(pretrained.image_encoder.state_dict())  # same architecture: strict
    return f"encoder init from the pre-distilled {student} {checkpoint} (strict)"


@torch.no_grad()
def heldout_embedding_mse(encoder: nn.Module, teacher: nn.Module, dataset: Any, img_size: int,
                          batch_size: int = 8) -> float:
    """Mean masked embedding MSE of ``encoder`` vs ``teacher`` (both in eval mode) over ``dataset``'s images."""
    images = SamTrainDataset(dataset, img_size, with_instances=False)
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    teacher_encoder = teacher.image_encoder.to(device).eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(images), batch_size):
            batch = collate_sam_batch([images[i] for i in range(start, min(start + batch_size, len(images)))])
            x, valid = batch["image"].to(device), batch["valid_embed"].to(device)
            per_image = embedding_mse_loss(encoder(x), teacher_encoder(x), valid, reduction="none")
            total, count = total + float(per_image.sum()), count + len(per_image)
    finally:
        encoder.train(was_training)
    return total / max(count, 1)


def copy_decoder(sam: nn.Module, teacher: nn.Module) -> None:
    for part in ("prompt_encoder", "mask_decoder"):
        try:
            getattr(sam, part).load_state_dict(getattr(teacher, part).state_dict())
        except RuntimeError as err:
            raise ValueError(f"cannot copy the teacher's {part} into the student (is the teacher a SAM with a 256-d "
                             f"decoder?): {str(err).splitlines()[0]}") from None


def distill_encoder(cfg: EncoderDistillConfig, resume: bool = False) -> Path:
    """Run stage 1; returns the student checkpoint ``output_dir/<student>_stage1.pt``."""
    from ..checkpoint import save_checkpoint
    from ..models.zoo import build_model
    from .state import seed_everything

    if cfg.student not in STUDENT_MODELS:
        raise ValueError(f"student must be one of {STUDENT_MODELS}; got {cfg.student!r}")
    if cfg.teacher_checkpoint is None:
        raise ValueError("teacher_checkpoint is required (the stage-0 output, e.g. runs/teacher/teacher.pt)")
    info = init_stage(cfg)
    teacher = load_teacher(cfg.teacher_model, cfg.teacher_checkpoint, img_size=cfg.img_size)
    dataset = open_stage_dataset(cfg, load_masks=False)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir is not None else default_cache_dir(cfg.teacher_checkpoint, cfg)
    cache = ensure_embedding_cache(teacher, dataset, cache_dir, cfg.img_size, cfg.cache_batch_size, cfg.num_workers,
                                   rebuild_stale=cfg.cache_dir is None)

    seed_everything(cfg.seed)
    sam = build_model(cfg.student, img_size=cfg.img_size, with_detector=False, upsample_mode=cfg.upsample_mode)
    notes = [f"student {cfg.student} distilled from {getattr(teacher, 'model_name', '?')} ({cfg.teacher_checkpoint})"]
    if cfg.init_checkpoint is not None:
        notes.append(init_student_encoder(sam, cfg.init_checkpoint, cfg.student, cfg.img_size, cfg.upsample_mode))
    if cfg.copy_decoder_from_teacher:
        copy_decoder(sam, teacher)
        notes.append("prompt encoder and mask decoder copied from the teacher")
    sam.to(info.device)
    heldout = None
    if cfg.eval_images > 0 and info.is_main:
        heldout = open_stage_dataset(cfg, load_masks=False, split="val")
        heldout = FirstImages(heldout, cfg.eval_images)
        if not resume:
            mse = heldout_embedding_mse(sam.image_encoder, teacher, heldout, cfg.img_size)
            notes.append(f"held-out embedding MSE before: {mse:.5f} ({len(heldout)} val images)")

    if info.distributed and info.device.type == "cuda":
        sam.image_encoder = nn.SyncBatchNorm.convert_sync_batchnorm(sam.image_encoder)
    train_set = SamTrainDataset(dataset, cfg.img_size, with_instances=False, embedding_cache=cache)
    loader = build_sam_loader(train_set, cfg.batch_size, shuffle=True, num_workers=cfg.num_workers, seed=cfg.seed)
    trainer = fit_stage(cfg, EncoderDistillObjective(sam.image_encoder), loader, info, resume)
    notes.append(f"trained {trainer.global_step} iterations ({cfg.epochs} epochs of {len(loader)})")
    meta: dict[str, Any] = {"stage": "encoder_distill", "teacher_checkpoint": str(cfg.teacher_checkpoint),
                            "teacher_fingerprint": cache.teacher.get("fingerprint"), "summary": notes}
    sam.eval()
    path = Path(cfg.output_dir) / f"{cfg.student}_stage1.pt"
    if info.is_main:
        if heldout is not None:
            mse = heldout_embedding_mse(sam.image_encoder, teacher, heldout, cfg.img_size)
            notes.append(f"held-out embedding MSE after: {mse:.5f}")
            meta["heldout_mse"] = mse
        save_checkpoint(path, sam_state_dict(sam), cfg.student,
                        model_config={"img_size": cfg.img_size, "upsample_mode": cfg.upsample_mode}, meta=meta)
    pdist.barrier()
    return path
