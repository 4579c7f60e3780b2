"""Stage 0: the teacher SAM whose image embeddings and masks the student is distilled from.

Two ways to get one (spec §5.1; the reference's SlimSAM teacher adapted to substation data is unreleased):

* **from an official checkpoint** (``model`` = ``sam_vit_b`` … + ``checkpoint``): ``finetune: none`` converts it to
  a PowerSAM checkpoint at ``img_size`` (position embeddings resized when ``img_size`` is not the checkpoint's),
  ``decoder`` trains the mask decoder on the dataset's masks, ``all`` trains every weight;
* **from scratch** (no ``checkpoint``): trains a zoo SAM (by default the small ``sam_vit_t``) on the dataset's
  masks, all weights. This is a stand-in for users without SAM weights; it is logged as a warning.

Training recipe (our choice; the reference has none): per image up to ``max_prompts`` GT instances (drawn
without replacement), each prompted by its jittered GT box or, with probability ``point_prob``, one random
point inside its mask; ``decode_iters − 1`` refinement iterations add one click from the current error region
(as in stage 2, but against the GT). Loss = ``bce_weight``·BCE + ``dice_weight``·Dice on the low-res GT
(valid-weighted) + ``iou_weight``·MSE of the IoU head against the true IoU of every output, averaged over
iterations. As in SAM's training, a single point is ambiguous: it supervises the best of the three multimask
outputs (min loss), while boxes and multi-click prompts supervise the single-mask output 0. The IoU head is
trained because stage 2 picks the teacher's output by its predicted IoU (spec §5.3 step 2).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..data.prompts import as_numpy_rng, jitter_boxes, sample_points_in_masks
from . import distributed as pdist
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

logger = logging.getLogger("powersam.train")

FINETUNE_MODES = ("none", "decoder", "all")
_POSITION_PARAMS = ("pos_embed", "rel_pos_h", "rel_pos_w")


# ---------------------------------------------------------------------------------------------- loading


def adapt_position_params(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resize a ViT's absolute ``pos_embed`` (bicubic) and relative ``rel_pos_h/w`` tables (linear) to the
    shapes of ``model``'s, so SAM weights made for a 1024 input load at another ``img_size``."""
    expected = model.state_dict()
    adapted = dict(state_dict)
    for key, value in state_dict.items():
        if not key.endswith(_POSITION_PARAMS) or key not in expected or expected[key].shape == value.shape:
            continue
        target = expected[key].shape
        if key.endswith("pos_embed"):  # 1×g×g×D
            grid = value.permute(0, 3, 1, 2).float()
            resized = F.interpolate(grid, size=tuple(target[1:3]), mode="bicubic", align_corners=False)
            adapted[key] = resized.permute(0, 2, 3, 1).to(value.dtype)
        else:  # (2g−1)×head_dim
            table = value.t()[None].float()
            adapted[key] = F.interpolate(table, size=int(target[0]), mode="linear", align_corners=False)[0].t().to(value.dtype)
        logger.info("resized %s from %s to %s for img_size %s", key, tuple(value.shape), tuple(target), model.img_size)
    return adapted


def _checkpoint_img_size(payload: dict[str, Any]) -> int:
    """The input size a checkpoint was made for: recorded, else from a ViT's position grid, else 1024."""
    if "img_size" in payload["model_config"]:
        return int(payload["model_config"]["img_size"])
    pos_embed = payload["state_dict"].get("image_encoder.pos_embed")
    return int(pos_embed.shape[1]) * 16 if pos_embed is not None and pos_embed.ndim == 4 else 1024


def load_teacher(
    model_name: Optional[str], checkpoint: Union[str, Path], img_size: Optional[int] = None
) -> nn.Module:
    """A SAM-call-compatible teacher (eval mode) from a PowerSAM or an official checkpoint.

    ``model_name`` may be omitted for PowerSAM checkpoints (they record it). ``img_size`` defaults to the
    checkpoint's (1024 for official files); another size resizes the ViT position embeddings. The returned
    model carries ``model_name`` and ``checkpoint_path`` attributes (recorded in embedding caches).
    """
    from ..checkpoint import identify_checkpoint, load_state_dict_strict, read_powersam_checkpoint
    from ..models.zoo import build_model

    payload = read_powersam_checkpoint(checkpoint)
    recorded = payload.get("model_name")
    if model_name is None and recorded is None:
        guess = identify_checkpoint(payload["state_dict"])
        raise ValueError(f"{checkpoint} does not record its model; pass the teacher model name"
                         + (f" (it looks like {guess})" if guess else ""))
    if model_name is not None and recorded is not None and model_name != recorded:
        raise ValueError(f"{checkpoint} holds a {recorded!r} model, not {model_name!r}")
    name = model_name or recorded
    img_size = _checkpoint_img_size(payload) if img_size is None else int(img_size)
    model = build_model(name, img_size=img_size, with_detector=False)
    state = adapt_position_params(payload["state_dict"], model)
    load_state_dict_strict(model, state, source=str(checkpoint),
                           ignore_prefixes=("fpn.", "rpn_head.", "box_generator.", "detector."))
    model.eval()
    model.model_name = name
    model.checkpoint_path = str(checkpoint)
    return model


def sam_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The SAM part (image encoder, prompt encoder, mask decoder) of a model's state dict."""
    prefixes = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}


# ---------------------------------------------------------------------------------------------- objective


def embed_images(image_encoder: nn.Module, images: torch.Tensor, trainable: bool) -> torch.Tensor:
    """B×3×S×S images → B×256×S/16×S/16 embeddings, with a graph only when the encoder is being trained."""
    if trainable:
        return image_encoder(images)
    with torch.no_grad():
        return image_encoder(images)


def zero_losses(module: nn.Module, *names: str) -> dict[str, torch.Tensor]:
    """The losses of a batch without prompts: zero, yet touching every trainable parameter (DDP needs them all)."""
    zero = sum(p.sum() for p in module.parameters() if p.requires_grad) * 0.0
    return {"loss": zero, **{name: zero.detach() for name in names}}


def decode(sam: nn.Module, embeddings: torch.Tensor, boxes: Optional[torch.Tensor],
           points: Optional[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder for P prompts on P embeddings → (P×4×4h×4w logits, P×4 IoU predictions)."""
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    return sam.mask_decoder(image_embeddings=embeddings, image_pe=sam.prompt_encoder.get_dense_pe(),
                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=4)


def per_mask_losses(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, bce_weight: float,
                    dice_weight: float) -> torch.Tensor:
    """``bce_weight``·BCE + ``dice_weight``·Dice for every (prompt, mask) → P×M. target/valid: P×H×W."""
    count, masks = logits.shape[:2]
    flat = logits.flatten(0, 1)[:, None]
    flat_target = target[:, None].expand(-1, masks, -1, -1).flatten(0, 1)[:, None]
    flat_valid = valid.repeat_interleave(masks, dim=0)
    bce = masked_bce_loss(flat, flat_target, flat_valid, reduction="none")
    dice = masked_dice_loss(flat, flat_target, flat_valid, reduction="none")[:, 0]
    return (bce_weight * bce + dice_weight * dice).reshape(count, masks)


class TeacherObjective(nn.Module):
    """``forward(batch) -> {"loss", "mask_loss", "iou_loss", "miou"}`` for teacher training (module docstring)."""

    def __init__(self, sam: nn.Module, train_encoder: bool, point_prob: float = 0.5, box_noise: float = 0.1,
                 decode_iters: int = 2, bce_weight: float = 5.0, dice_weight: float = 5.0, iou_weight: float = 1.0,
                 min_error_pixels: int = 10) -> None:
        super().__init__()
        if decode_iters < 1:
            raise ValueError(f"decode_iters must be >= 1; got {decode_iters}")
        if not 0.0 <= point_prob <= 1.0:
            raise ValueError(f"point_prob must lie in [0, 1]; got {point_prob}")
        self.sam = sam
        self.train_encoder = train_encoder
        self.point_prob, self.box_noise, self.decode_iters = point_prob, box_noise, decode_iters
        self.bce_weight, self.dice_weight, self.iou_weight = bce_weight, dice_weight, iou_weight
        self.min_error_pixels = min_error_pixels
        # SAM's box jitter is capped at 20 px of a 1024 input; keep the same relative cap at other sizes.
        self.max_box_noise = 20.0 * sam.img_size / 1024
        # Mask prompts are never fed, so the mask branch stays as it is.
        sam.prompt_encoder.mask_downscaling.requires_grad_(False)
        if not train_encoder:
            sam.image_encoder.requires_grad_(False)
            sam.prompt_encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "TeacherObjective":
        super().train(mode)
        if not self.train_encoder:
            self.sam.image_encoder.eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sam = self.sam
        embeddings = embed_images(sam.image_encoder, batch["image"], self.train_encoder)
        owner = batch["prompt_image"]
        count = int(owner.numel())
        if count == 0:
            return zero_losses(self, "mask_loss", "iou_loss", "miou")
        rng = as_numpy_rng(torch.default_generator)
        target, valid = batch["gt_lowres"], batch["valid_lowres"][owner]
        embeddings = embeddings[owner]
        boxes = jitter_boxes(batch["boxes"], rng, noise=self.box_noise, max_noise=self.max_box_noise)
        boxes = clip_boxes_to_inputs(boxes, batch["input_size"][owner])
        is_point = torch.from_numpy(rng.random(count) < self.point_prob).to(owner.device)
        coords, labels = sample_points_in_masks(target > 0.5, rng, k=1, mode="random", scale=4)

        mask_loss = iou_loss = 0.0
        for step in range(self.decode_iters):
            logits, iou_pred = self._decode_mixed(embeddings, boxes, coords, labels, is_point, first=step == 0)
            losses = per_mask_losses(logits, target, valid, self.bce_weight, self.dice_weight)
            if step == 0:  # a lone point: best of the multimask outputs 1..3; a box: output 0
                best = losses[:, 1:].argmin(dim=1) + 1
                chosen = torch.where(is_point, best, torch.zeros_like(best))
            else:
                chosen = torch.zeros(count, dtype=torch.long, device=owner.device)
            rows = torch.arange(count, device=owner.device)
            mask_loss = mask_loss + losses[rows, chosen].mean()
            true_iou = mask_iou(logits, target[:, None], valid)
            iou_loss = iou_loss + F.mse_loss(iou_pred.float(), true_iou)
            if step + 1 < self.decode_iters:
                click, click_label = refinement_points(logits[rows, chosen], target, valid, rng, self.min_error_pixels)
                coords = torch.cat([coords, click[:, None]], dim=1)
                labels = torch.cat([labels, click_label[:, None]], dim=1)
        mask_loss, iou_loss = mask_loss / self.decode_iters, iou_loss / self.decode_iters
        # A batch of only boxes (or only points) leaves some prompt embeddings and multimask heads unused; a zero
        # term keeps every trainable parameter in the graph, which DDP requires.
        loss = mask_loss + self.iou_weight * iou_loss + 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)
        return {"loss": loss, "mask_loss": mask_loss.detach(), "iou_loss": iou_loss.detach(),
                "miou": true_iou[rows, chosen].mean()}

    def _decode_mixed(self, embeddings: torch.Tensor, boxes: torch.Tensor, coords: torch.Tensor,
                      labels: torch.Tensor, is_point: torch.Tensor, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder call for a mix of box prompts (+ clicks) and point prompts (+ clicks).

        Both kinds give the same number of sparse tokens (box: 2 corners + clicks; points: clicks + the
        padding token SAM appends without a box), so their embeddings are merged into one batch."""
        sam = self.sam
        box_rows, point_rows = (~is_point).nonzero()[:, 0], is_point.nonzero()[:, 0]
        parts = []
        if len(box_rows):
            box_points = None if first else (coords[box_rows, 1:], labels[box_rows, 1:])
            parts.append((box_rows, sam.prompt_encoder(points=box_points, boxes=boxes[box_rows], masks=None)))
        if len(point_rows):
            parts.append((point_rows, sam.prompt_encoder(points=(coords[point_rows], labels[point_rows]),
                                                         boxes=None, masks=None)))
        tokens = parts[0][1][0].shape[1]
        sparse = embeddings.new_zeros((len(is_point), tokens, embeddings.shape[1]))
        for rows, (part_sparse, _) in parts:
            sparse[rows] = part_sparse
        dense = parts[0][1][1][:1]  # no mask prompt: the same no-mask embedding for all, broadcast by the decoder
        return sam.mask_decoder(image_embeddings=embeddings, image_pe=sam.prompt_encoder.get_dense_pe(),
                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=4)


# ---------------------------------------------------------------------------------------------- stage


@dataclass
class TeacherConfig(SamStageConfig):
    """Stage-0 settings (see the module docstring); LRs are used as given (``scale_lr`` false)."""

    model: str = "sam_vit_t"  # zoo SAM: sam_vit_t (from scratch), sam_vit_b/l/h (with their checkpoint)
    checkpoint: Optional[Path] = None  # official or PowerSAM weights; None trains `model` from scratch
    finetune: Literal["none", "decoder", "all"] = "all"  # with a checkpoint; from scratch always trains all
    max_prompts: int = 16
    point_prob: float = 0.5
    box_noise: float = 0.1
    decode_iters: int = 2
    bce_weight: float = 5.0
    dice_weight: float = 5.0
    iou_weight: float = 1.0
    min_error_pixels: int = 10
    eval_images: int = 0  # after training: box mIoU on this many held-out (val) images; 0 = skip
    # Generated substation scenes mixed into an adaptation, per training item (0.5: one scene for every two images
    # or crops; 0: off), so the teacher does not forget what the photos lack (powersam.data.replay).
    replay_scenes: float = 0.0
    output_dir: Path = Path("runs/teacher")


def eval_box_miou(model: nn.Module, cfg: SamStageConfig, count: int) -> Optional[float]:
    """Box-prompt mIoU ×100 on the first ``count`` images of the val split (no refinement clicks)."""
    from ..eval.miou import evaluate_miou
    from ..data.coco import CocoInstances

    val = CocoInstances(cfg.data, images_dir=cfg.images_dir, split="val", val_fraction=cfg.val_fraction,
                        seed=cfg.split_seed)
    result = evaluate_miou(model, val, prompts=("box",), refine_iters=0, max_images=count, progress=False)
    return result["miou"]["box"]


def _with_replay(dataset: Any, cfg: TeacherConfig) -> Any:
    """``dataset`` with ``cfg.replay_scenes`` generated scenes per item appended (powersam.data.replay)."""
    share = cfg.replay_scenes
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 10.0:
        raise ValueError(f"replay_scenes must be a number in [0, 10] (scenes per training item); got {share!r}")
    if share == 0:
        return dataset
    from ..data.replay import SceneReplay

    return SceneReplay(dataset, int(round(share * len(dataset))), zoom_context=cfg.zoom_context)


def train_teacher(cfg: TeacherConfig, resume: bool = False) -> Path:
    """Run stage 0 and return the teacher checkpoint (``output_dir/teacher.pt``, PowerSAM format)."""
    from ..checkpoint import save_checkpoint
    from ..models.zoo import build_model
    from .state import seed_everything

    if cfg.finetune not in FINETUNE_MODES:
        raise ValueError(f"finetune must be one of {FINETUNE_MODES}; got {cfg.finetune!r}")
    info = init_stage(cfg)
    seed_everything(cfg.seed)  # identical initial weights on every rank
    notes = []
    if cfg.checkpoint is None:
        finetune = "all"
        message = (f"no teacher checkpoint given: training a teacher of the {cfg.model} architecture FROM SCRATCH "
                   f"on {cfg.data} (a stand-in for SAM; expect a weaker teacher than an official SAM checkpoint)")
        logger.warning(message)
        notes.append(message)
        sam = build_model(cfg.model, img_size=cfg.img_size, with_detector=False)
    else:
        finetune = cfg.finetune
        sam = load_teacher(cfg.model, cfg.checkpoint, img_size=cfg.img_size)
        notes.append(f"teacher {cfg.model} from {cfg.checkpoint}, finetune={finetune}")
    if not hasattr(sam, "mask_decoder") or sam.prompt_encoder.embed_dim != 256:
        raise ValueError(f"the teacher must be a SAM with a 256-d prompt encoder; {cfg.model!r} is not")
    name = getattr(sam, "model_name", cfg.model)

    if finetune != "none":
        dataset = SamTrainDataset(_with_replay(open_stage_dataset(cfg, load_masks=True), cfg), cfg.img_size,
                                  max_prompts=cfg.max_prompts)
        if not getattr(dataset.dataset, "has_masks", True):
            raise ValueError(f"{cfg.data} has no instance masks; the teacher needs masks to train on")
        loader = build_sam_loader(dataset, cfg.batch_size, shuffle=True, num_workers=cfg.num_workers, seed=cfg.seed)
        objective = TeacherObjective(sam, train_encoder=finetune == "all", point_prob=cfg.point_prob,
                                     box_noise=cfg.box_noise, decode_iters=cfg.decode_iters, bce_weight=cfg.bce_weight,
                                     dice_weight=cfg.dice_weight, iou_weight=cfg.iou_weight,
                                     min_error_pixels=cfg.min_error_pixels)
        trainer = fit_stage(cfg, objective, loader, info, resume)
        notes.append(f"trained {trainer.global_step} iterations ({cfg.epochs} epochs of {len(loader)})")
        if cfg.replay_scenes > 0:
            notes.append(f"with {dataset.dataset.count} generated scenes replayed among {len(dataset)} items")
    sam.eval()
    path = Path(cfg.output_dir) / "teacher.pt"
    meta: dict[str, Any] = {"stage": "teacher", "from_scratch": cfg.checkpoint is None, "finetune": finetune,
                            "source_checkpoint": None if cfg.checkpoint is None else str(cfg.checkpoint),
                            "summary": notes}
    if info.is_main:
        if cfg.eval_images > 0:
            meta["val_box_miou"] = eval_box_miou(sam, cfg, cfg.eval_images)
            notes.append(f"held-out box mIoU (%) on {cfg.eval_images} val images: {meta['val_box_miou']}")
        save_checkpoint(path, sam_state_dict(sam), name, model_config={"img_size": cfg.img_size}, meta=meta)
        logger.info("teacher written to %s", path)
    pdist.barrier()
    return path
