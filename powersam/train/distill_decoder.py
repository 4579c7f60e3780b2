"""Stage 2: prompt-in-the-loop decoder distillation (spec §5.3; EdgeSAM's recipe as PowerSAM configures it).

Per image, up to ``max_prompts`` GT boxes (drawn without replacement) prompt both the student (its frozen prompt
encoder and trained mask decoder on its own embedding) and the teacher (frozen prompt encoder + mask decoder on
the cached teacher embedding). The target is the teacher's mask, binarised at 0; all four mask outputs are
supervised with ``bce_weight``·BCE + ``dice_weight``·Dice, each divided by ``decode_iters``. After each
iteration but the last, one click per prompt is drawn uniformly from the student-vs-teacher error region at
low res (missed → positive, spurious → negative, fewer than ``min_error_pixels`` → a padding point), using
for both the output the teacher's IoU head ranks best; the click is appended, the box kept, and the
previous mask is not fed back.

Frozen: the prompt encoder always; the image encoder by default (the paper; the reference config trains it —
``train_encoder: true``). A frozen encoder runs in eval mode (BatchNorm statistics fixed) under ``no_grad``.
The IoU head is not trained unless ``iou_weight`` > 0 (then MSE toward the teacher's IoU predictions), as in
the reference, where no loss reaches it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..data.prompts import as_numpy_rng, jitter_boxes
from . import distributed as pdist
from .embed_cache import default_cache_dir, ensure_embedding_cache
from .sam_data import (
    SamStageConfig,
    SamTrainDataset,
    build_sam_loader,
    clip_boxes_to_inputs,
    fit_stage,
    init_stage,
    open_stage_dataset,
    refinement_points,
)
from .sam_losses import mask_iou, masked_bce_loss, masked_dice_loss
from .teacher import decode, embed_images, eval_box_miou, load_teacher, sam_state_dict, zero_losses

logger = logging.getLogger("powersam.train")


@dataclass
class DecoderDistillConfig(SamStageConfig):
    """Stage-2 settings; defaults are the reference run (…_enc_dec_4m_ft_bp_iter2b_…_50e.yaml with
    ``--batch-size 3``, spec §5.3), except that the encoder is frozen as the paper says."""

    student_checkpoint: Optional[Path] = None  # stage-1 output
    teacher_checkpoint: Optional[Path] = None  # stage-0 output (its prompt encoder + mask decoder are the teacher)
    teacher_model: Optional[str] = None
    cache_dir: Optional[Path] = None  # default: next to the teacher checkpoint (shared with stage 1)
    cache_batch_size: int = 8
    train_encoder: bool = False
    max_prompts: int = 16
    decode_iters: int = 2
    bce_weight: float = 5.0
    dice_weight: float = 5.0
    iou_weight: float = 0.0
    min_error_pixels: int = 10
    box_noise: float = 0.0  # the reference prompts with exact GT boxes
    eval_images: int = 0  # after training: student box mIoU on this many val images; 0 = skip
    epochs: int = 50
    warmup_epochs: int = 0
    batch_size: int = 3
    lr: float = 3.2e-3
    min_lr: float = 3.2e-4
    warmup_lr: float = 3.2e-5
    scale_lr: bool = True
    weight_decay: float = 0.05
    grad_clip: Optional[float] = 0.01
    output_dir: Path = Path("runs/stage2_decoder")


class DecoderDistillObjective(nn.Module):
    """``forward(batch) -> {"loss", "bce", "dice", "miou"}`` (see the module docstring).

    Args:
        student: the student SAM (its image encoder, prompt encoder and mask decoder).
        teacher_prompt_encoder, teacher_mask_decoder: the teacher head, frozen.
    """

    def __init__(self, student: nn.Module, teacher_prompt_encoder: nn.Module, teacher_mask_decoder: nn.Module,
                 train_encoder: bool = False, decode_iters: int = 2, bce_weight: float = 5.0,
                 dice_weight: float = 5.0, iou_weight: float = 0.0, min_error_pixels: int = 10,
                 box_noise: float = 0.0) -> None:
        super().__init__()
        if decode_iters < 1:
            raise ValueError(f"decode_iters must be >= 1; got {decode_iters}")
        self.student = student
        self.teacher = nn.ModuleDict({"prompt_encoder": teacher_prompt_encoder, "mask_decoder": teacher_mask_decoder})
        self.train_encoder, self.decode_iters = train_encoder, decode_iters
        self.bce_weight, self.dice_weight, self.iou_weight = bce_weight, dice_weight, iou_weight
        self.min_error_pixels, self.box_noise = min_error_pixels, box_noise
        self.teacher.requires_grad_(False)
        student.prompt_encoder.requires_grad_(False)
        if not train_encoder:
            student.image_encoder.requires_grad_(False)
        if iou_weight == 0:
            student.mask_decoder.iou_prediction_head.requires_grad_(False)

    def train(self, mode: bool = True) -> "DecoderDistillObjective":
        super().train(mode)
        self.teacher.eval()
        self.student.prompt_encoder.eval()
        if not self.train_encoder:
            self.student.image_encoder.eval()  # frozen BatchNorm statistics
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        student = self.student
        embeddings = embed_images(student.image_encoder, batch["image"], self.train_encoder)
        owner = batch["prompt_image"]
        count = int(owner.numel())
        if count == 0:
            return zero_losses(self, "bce", "dice", "miou")
        rng = as_numpy_rng(torch.default_generator)
        student_embeddings = embeddings[owner]
        teacher_embeddings = batch["teacher_embedding"][owner].to(student_embeddings.dtype)
        valid = batch["valid_lowres"][owner]
        boxes = batch["boxes"]
        if self.box_noise > 0:
            boxes = jitter_boxes(boxes, rng, noise=self.box_noise, max_noise=20.0 * student.img_size / 1024)
            boxes = clip_boxes_to_inputs(boxes, batch["input_size"][owner])
        rows = torch.arange(count, device=owner.device)
        points = None
        loss = bce_sum = dice_sum = 0.0
        for step in range(self.decode_iters):
            with torch.no_grad():
                teacher_logits, teacher_iou = decode(self.teacher, teacher_embeddings, boxes, points)
            logits, iou_pred = decode(student, student_embeddings, boxes, points)
            target = (teacher_logits > 0).float()
            bce = masked_bce_loss(logits, target, valid)
            dice = masked_dice_loss(logits, target, valid)
            step_loss = self.bce_weight * bce + self.dice_weight * dice
            if self.iou_weight > 0:
                step_loss = step_loss + self.iou_weight * F.mse_loss(iou_pred.float(), teacher_iou.float())
            loss = loss + step_loss / self.decode_iters
            bce_sum, dice_sum = bce_sum + bce.detach(), dice_sum + dice.detach()
            best = teacher_iou.argmax(dim=1)
            if step + 1 < self.decode_iters:
                click, label = refinement_points(logits[rows, best], target[rows, best], valid, rng, self.min_error_pixels)
                if points is None:
                    points = (click[:, None], label[:, None])
                else:
                    points = (torch.cat([points[0], click[:, None]], 1), torch.cat([points[1], label[:, None]], 1))
        agreement = mask_iou(logits[rows, best][:, None], target[rows, best][:, None], valid).mean()
        return {"loss": loss, "bce": bce_sum / self.decode_iters, "dice": dice_sum / self.decode_iters,
                "miou": agreement}


def distill_decoder(cfg: DecoderDistillConfig, resume: bool = False) -> Path:
    """Run stage 2; returns the student checkpoint ``output_dir/<model>_stage2.pt``."""
    from ..checkpoint import read_powersam_checkpoint, save_checkpoint
    from ..models.zoo import build_model
    from .state import seed_everything

    for name in ("student_checkpoint", "teacher_checkpoint"):
        if getattr(cfg, name) is None:
            raise ValueError(f"{name} is required (stage 1 / stage 0 output)")
    info = init_stage(cfg)
    seed_everything(cfg.seed)
    student_config = read_powersam_checkpoint(cfg.student_checkpoint)["model_config"]
    upsample_mode = student_config.get("upsample_mode", "bicubic")
    student = build_model(None, checkpoint=cfg.student_checkpoint, with_detector=False, upsample_mode=upsample_mode)
    name = student.model_name
    if student.img_size != cfg.img_size:
        raise ValueError(f"{cfg.student_checkpoint} was trained at img_size {student.img_size}, not {cfg.img_size}")
    teacher = load_teacher(cfg.teacher_model, cfg.teacher_checkpoint, img_size=cfg.img_size)
    dataset = open_stage_dataset(cfg, load_masks=False)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir is not None else default_cache_dir(cfg.teacher_checkpoint, cfg)
    cache = ensure_embedding_cache(teacher, dataset, cache_dir, cfg.img_size, cfg.cache_batch_size, cfg.num_workers,
                                   rebuild_stale=cfg.cache_dir is None)
    objective = DecoderDistillObjective(
        student, teacher.prompt_encoder, teacher.mask_decoder, train_encoder=cfg.train_encoder,
        decode_iters=cfg.decode_iters, bce_weight=cfg.bce_weight, dice_weight=cfg.dice_weight,
        iou_weight=cfg.iou_weight, min_error_pixels=cfg.min_error_pixels, box_noise=cfg.box_noise,
    )
    del teacher  # only its head is kept; the embeddings come from the cache
    if info.distributed and info.device.type == "cuda" and cfg.train_encoder:
        student.image_encoder = nn.SyncBatchNorm.convert_sync_batchnorm(student.image_encoder)
    train_set = SamTrainDataset(dataset, cfg.img_size, max_prompts=cfg.max_prompts, embedding_cache=cache)
    loader = build_sam_loader(train_set, cfg.batch_size, shuffle=True, num_workers=cfg.num_workers, seed=cfg.seed)
    trainer = fit_stage(cfg, objective, loader, info, resume)

    notes = [f"decoder distilled from {cfg.teacher_checkpoint} into {cfg.student_checkpoint} "
             f"(encoder {'trained' if cfg.train_encoder else 'frozen'}); {trainer.global_step} iterations"]
    meta: dict[str, Any] = {"stage": "decoder_distill", "teacher_checkpoint": str(cfg.teacher_checkpoint),
                            "student_checkpoint": str(cfg.student_checkpoint), "train_encoder": cfg.train_encoder,
                            "summary": notes}
    student.eval()
    path = Path(cfg.output_dir) / f"{name}_stage2.pt"
    if info.is_main:
        if cfg.eval_images > 0:
            meta["val_box_miou"] = eval_box_miou(student, cfg, cfg.eval_images)
            notes.append(f"held-out box mIoU (%) on {cfg.eval_images} val images: {meta['val_box_miou']}")
        save_checkpoint(path, sam_state_dict(student), name,
                        model_config={"img_size": cfg.img_size, "upsample_mode": upsample_mode}, meta=meta)
    pdist.barrier()
    return path
