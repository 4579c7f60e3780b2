"""Distil a pruned SAM ViT back towards its unpruned teacher, and the ``powersam prune`` command.

:func:`distill_pruned` trains the pruned encoder alone on stage 1's masked embedding MSE against the unpruned
encoder's embeddings (computed on the fly), with the shared :class:`~powersam.train.engine.Trainer` (AdamW,
warmup + cosine per iteration, exact resume, torchrun DDP). SlimSAM's own recipe differs in details that do not
change the idea: Adam at 1e-4 with batch 1 × 4 accumulation, ReduceLROnPlateau on a validation IoU, and an extra
loss on intermediate block outputs early in training (SL:prune_distill_step{1,2}.py). SlimSAM also prunes and
distils twice (embedding first, then the bottlenecks); ``powersam prune`` prunes once and distils once.

The result is a PowerSAM checkpoint with ``model_name="slimsam_custom"`` and ``model_config = {"img_size",
"widths"}``; ``build_slimsam(model_config["widths"], model_config["img_size"])`` rebuilds the architecture and
the state dict loads strictly.

CLI: ``powersam prune --model sam_vit_b --checkpoint sam_vit_b_01ec64.pth --data COCO --ratio 0.5 --out DIR``
(or ``--config configs/paper/prune_vit_b.yaml``). It writes ``pruned.pt`` (before distillation), ``final.pt``
(after), ``last.pt`` / ``metrics.jsonl`` of the run and ``prune_report.json`` (params, GMACs and mIoU of the
teacher, the pruned and the distilled model).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
from torch import nn

from .. import checkpoint as ckpt_io
from ..models.slimsam import build_pruned_image_encoder, widths_of
from ..train.sam_data import SamStageConfig

logger = logging.getLogger("powersam.prune")

__all__ = ["EncoderDistillation", "PruneConfig", "distill_pruned", "model_complexity",
           "prune_and_distill", "PRUNED_MODEL_NAME"]

PRUNED_MODEL_NAME = "slimsam_custom"


@dataclass
class PruneConfig(SamStageConfig):
    """``powersam prune`` settings: the SAM stage fields (data, epochs, lr, …) plus the pruning ones."""

    model: str = "sam_vit_b"  # zoo name of the teacher (a SAM ViT)
    checkpoint: Optional[Path] = None  # its weights (None: random, for smoke tests only)
    ratio: float = 0.5  # share of attention per-head dims and MLP hidden channels removed
    embed_ratio: float = 0.0  # share of embedding channels removed (SlimSAM step 1)
    scope: Literal["local", "global"] = "local"
    importance: Literal["taylor", "magnitude"] = "taylor"
    calib_images: int = 64  # training images for the Taylor pass
    noise_std: float = 0.01
    round_to: int = 12
    eval_split: Optional[str] = "val"  # mIoU before/after on this split ("all": every image; None: no evaluation)
    eval_max_images: Optional[int] = 50
    eval_prompts: str = "box,point"
    batch_size: int = 4
    lr: float = 1e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.0
    output_dir: Path = Path("runs/prune")


class EncoderDistillation(nn.Module):
    """``forward(batch) -> {"loss"}``: masked MSE between the student's and the frozen teacher's embeddings.

    The teacher is deliberately not a registered submodule: the optimizer, DDP and ``last.pt`` see the student only.
    """

    def __init__(self, student_encoder: nn.Module, teacher_encoder: nn.Module) -> None:
        super().__init__()
        self.student = student_encoder
        object.__setattr__(self, "teacher", teacher_encoder.eval().requires_grad_(False))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from ..train.sam_losses import embedding_mse_loss

        images = batch["image"]
        with torch.no_grad():
            target = self.teacher(images)
        return {"loss": embedding_mse_loss(self.student(images), target, batch["valid_embed"])}


def distill_pruned(
    student: nn.Module,
    teacher: nn.Module,
    dataset: Any,
    epochs: int = 1,
    *,
    output_dir: Union[str, Path] = "runs/prune",
    batch_size: int = 1,
    lr: float = 1e-4,
    min_lr: float = 1e-6,
    weight_decay: float = 0.0,
    warmup_epochs: int = 0,
    grad_clip: Optional[float] = None,
    device: Optional[str] = None,
    amp: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    log_every: int = 10,
    progress: bool = True,
    resume: bool = False,
    meta: Optional[dict] = None,
    checkpoint_name: str = "final.pt",
) -> Path:
    """Train ``student.image_encoder`` to reproduce ``teacher.image_encoder``'s embeddings on ``dataset``.

    Args:
        student: the pruned ``Sam`` (trained in place: its encoder gets the distilled weights).
        teacher: the unpruned ``Sam`` (frozen); the same input size as the student.
        dataset: a ``CocoInstances`` (or any sequence of ``Sample``); boxes and masks are not used.
        epochs, batch_size, lr, min_lr, weight_decay, warmup_epochs, grad_clip, amp, seed, num_workers,
        log_every, progress: as in :class:`~powersam.train.sam_data.SamStageConfig`.
        device: ``"cpu"`` / ``"cuda"`` / None (cuda when available).
        resume: continue from ``output_dir/last.pt``.
        meta: extra plain values stored in the checkpoint's ``meta``.
    Returns the path of the written PowerSAM checkpoint (``model_name="slimsam_custom"``, written by rank 0).
    """
    from ..train.sam_data import SamTrainDataset, build_sam_loader, fit_stage, init_stage

    img_size = int(student.image_encoder.img_size)
    if int(teacher.image_encoder.img_size) != img_size:
        raise ValueError(f"student and teacher input sizes differ: {img_size} vs {teacher.image_encoder.img_size}")
    cfg = SamStageConfig(
        img_size=img_size, epochs=epochs, batch_size=batch_size, lr=lr, min_lr=min_lr, warmup_epochs=warmup_epochs,
        weight_decay=weight_decay, grad_clip=grad_clip, num_workers=num_workers, seed=seed, output_dir=Path(output_dir),
        device=device, amp=amp, log_every=log_every, progress=progress,
    )
    info = init_stage(cfg)
    student.to(info.device)
    teacher.to(info.device)
    loader = build_sam_loader(SamTrainDataset(dataset, img_size, with_instances=False), batch_size, shuffle=True,
                              num_workers=num_workers, seed=seed)
    objective = EncoderDistillation(student.image_encoder, teacher.image_encoder)
    trainer = fit_stage(cfg, objective, loader, info, resume, optimizer_model=objective.student)
    path = Path(output_dir) / checkpoint_name
    if info.is_main:
        student.eval()
        record = {"stage": "prune_distill", "epochs": trainer.epoch, "global_step": trainer.global_step, **(meta or {})}
        ckpt_io.save_checkpoint(path, student.state_dict(), PRUNED_MODEL_NAME,
                                model_config={"img_size": img_size, "widths": widths_of(student)}, meta=record)
        logger.info("wrote %s", path)
    return path


def model_complexity(model: nn.Module) -> dict[str, float]:
    """Parameters (M) of the encoder and the whole model, encoder GMACs (paper and full convention) at its size.

    Counted on the meta device from the encoder's widths, so ViT-B at 1024² takes a second on a CPU.
    """
    from ..utils.complexity import count_macs, count_params

    encoder = model.image_encoder
    img_size = int(encoder.img_size)
    with torch.device("meta"):
        meta_encoder = build_pruned_image_encoder(widths_of(encoder), img_size)
    x = torch.zeros(1, 3, img_size, img_size, device="meta")
    return {
        "encoder_params_m": count_params(encoder) / 1e6,
        "params_m": count_params(model) / 1e6,
        "encoder_gmacs_paper": count_macs(meta_encoder, x, mode="paper").total / 1e9,
        "encoder_gmacs_full": count_macs(meta_encoder, x, mode="full").total / 1e9,
        "img_size": img_size,
    }


def _miou(model: nn.Module, dataset: Any, cfg: PruneConfig, device: torch.device) -> Optional[dict]:
    from ..eval.miou import evaluate_miou

    if dataset is None:
        return None
    model.to(device)
    result = evaluate_miou(model, dataset, prompts=cfg.eval_prompts, max_images=cfg.eval_max_images,
                           seed=cfg.seed, progress=cfg.progress)
    return result["miou"]


def prune_and_distill(cfg: PruneConfig, resume: bool = False) -> tuple[Path, Optional[dict[str, Any]]]:
    """Prune the teacher ``cfg.model``, distil the pruned encoder (``cfg.epochs`` > 0) and evaluate each step.

    Writes ``OUT/prune_config.yaml``, ``OUT/pruned.pt`` (then the distilled checkpoint) and ``OUT/prune_report.json``
    → (the final checkpoint, the report on the main process; None on the others)."""
    from ..models.zoo import build_model
    from ..train.config import config_to_dict, dump_config
    from ..train.distributed import cleanup
    from ..train.sam_data import FirstImages, init_stage, open_stage_dataset
    from .prune import prune_vit

    teacher = build_model(cfg.model, checkpoint=cfg.checkpoint, img_size=cfg.img_size or None)
    cfg = dataclasses.replace(cfg, img_size=int(teacher.image_encoder.img_size))
    info = init_stage(cfg)
    try:
        out = Path(cfg.output_dir)
        dump_config(cfg, out / "prune_config.yaml")
        train_set = open_stage_dataset(cfg, load_masks=False)
        eval_set = None
        if cfg.eval_split is not None and info.is_main:
            split = None if cfg.eval_split == "all" else cfg.eval_split
            eval_set = open_stage_dataset(dataclasses.replace(cfg, split=split, max_images=None))
            if getattr(eval_set, "has_masks", True) is False:
                logger.warning("%s has no masks: skipping the mIoU evaluation", cfg.data)
                eval_set = None
        teacher.to(info.device).eval()
        report: dict[str, Any] = {"config": config_to_dict(cfg), "teacher": model_complexity(teacher)}
        report["teacher"]["miou"] = _miou(teacher, eval_set, cfg, info.device)

        calib = FirstImages(train_set, cfg.calib_images)
        pruned = prune_vit(teacher, calib, ratio=cfg.ratio, steps=None, importance=cfg.importance,
                           embed_ratio=cfg.embed_ratio, scope=cfg.scope, round_to=cfg.round_to,
                           noise_std=cfg.noise_std, batch_size=1, seed=cfg.seed)
        widths = widths_of(pruned)
        report["pruned"] = {**model_complexity(pruned), "widths": widths}
        report["pruned"]["miou"] = _miou(pruned, eval_set, cfg, info.device)
        if info.is_main:
            ckpt_io.save_checkpoint(out / "pruned.pt", pruned.state_dict(), PRUNED_MODEL_NAME,
                                    model_config={"img_size": cfg.img_size, "widths": widths},
                                    meta={"stage": "prune", "teacher": cfg.model, "ratio": cfg.ratio})
        final = out / "pruned.pt"
        if cfg.epochs > 0:
            final = distill_pruned(
                pruned, teacher, train_set, cfg.epochs, output_dir=out, batch_size=cfg.batch_size, lr=cfg.lr,
                min_lr=cfg.min_lr, weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs,
                grad_clip=cfg.grad_clip, device=cfg.device, amp=cfg.amp, seed=cfg.seed, num_workers=cfg.num_workers,
                log_every=cfg.log_every, progress=cfg.progress, resume=resume,
                meta={"teacher": cfg.model, "ratio": cfg.ratio, "embed_ratio": cfg.embed_ratio},
            )
            report["distilled"] = {"miou": _miou(pruned, eval_set, cfg, info.device)}
        if info.is_main:
            (out / "prune_report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        return final, (report if info.is_main else None)
    finally:
        cleanup()
