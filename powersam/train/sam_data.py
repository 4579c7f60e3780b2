"""Training samples for the SAM-side stages (teacher, embedding cache, encoder and decoder distillation).

:class:`SamTrainDataset` wraps a :class:`~powersam.data.coco.CocoInstances` and turns each image into what the
stages consume, with no augmentation (spec §5.0):

* ``image`` 3×S×S float32: RGB resized so the long side is S = ``img_size`` (Pillow bilinear, as the predictor
  does at inference), normalised with SAM's mean/std and zero-padded bottom/right;
* ``valid_lowres`` (S/4)² float: the fraction of each low-res mask cell that lies on the image (1 inside,
  0 on the padding, fractional on the boundary) — the weight of the mask losses;
* ``valid_embed`` (S/16)² float 0/1: embedding cells that are more than half on the image (stage-1 MSE);
* per instance (``with_instances``): ``boxes`` N×4 xyxy in the input frame, ``labels`` N and, with masks,
  ``gt_lowres`` N×(S/4)² float 0/1 (the GT resized to the input frame, padded, area-averaged over 4×4 cells and
  thresholded at 0.5). Up to ``max_prompts`` instances are drawn **without** replacement (the reference draws
  with replacement, spec §5.0); instances whose low-res mask is empty are skipped, since they teach nothing;
* ``teacher_embedding`` 256×(S/16)² float16 when an :class:`~powersam.train.embed_cache.EmbeddingCache` is given.

Random choices use the global torch RNG (seeded per worker by the DataLoader), so a resumed run sees the same
prompts (the training engine's resume contract). :func:`collate_sam_batch` flattens the variable number of
instances per image into prompt-major tensors with a ``prompt_image`` index.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..models.sam.sam import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from ..transforms import ResizeLongestSide, image_to_input_tensor, normalize_and_pad
from . import distributed as pdist
from .distributed import ShardSampler
from .signals import ignore_stop_signals

EMBED_STRIDE = 16  # image-embedding cells per input pixel side
LOWRES_STRIDE = 4  # low-res mask cells per input pixel side


def check_img_size(img_size: int) -> int:
    """``img_size`` as an int, or ValueError unless it is a positive multiple of 16."""
    if isinstance(img_size, bool) or not isinstance(img_size, (int, np.integer)) or img_size <= 0 or img_size % EMBED_STRIDE:
        raise ValueError(f"img_size must be a positive multiple of {EMBED_STRIDE}; got {img_size!r}")
    return int(img_size)


def valid_maps(input_size: tuple[int, int], img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(valid_lowres (S/4)² fractional, valid_embed (S/16)² 0/1)`` for an image of ``input_size`` = (h, w)
    in the top-left corner of the S×S input (area fractions, not the reference's bilinear samples)."""
    full = torch.zeros(1, 1, img_size, img_size)
    full[..., : int(input_size[0]), : int(input_size[1])] = 1.0
    lowres = F.avg_pool2d(full, LOWRES_STRIDE)[0, 0]
    embed = (F.avg_pool2d(full, EMBED_STRIDE)[0, 0] > 0.5).float()
    return lowres, embed


def masks_to_lowres(masks: np.ndarray, input_size: tuple[int, int], img_size: int) -> torch.Tensor:
    """N×H×W bool masks (original frame) → N×(S/4)×(S/4) float 0/1 in the padded low-res frame."""
    if len(masks) == 0:
        return torch.zeros(0, img_size // LOWRES_STRIDE, img_size // LOWRES_STRIDE)
    tensor = torch.from_numpy(np.ascontiguousarray(masks)).to(torch.float32)[:, None]
    resized = F.interpolate(tensor, size=tuple(int(s) for s in input_size), mode="bilinear", align_corners=False,
                            antialias=True)
    padded = F.pad(resized, (0, img_size - resized.shape[-1], 0, img_size - resized.shape[-2]))
    return (F.avg_pool2d(padded, LOWRES_STRIDE)[:, 0] > 0.5).float()


class SamTrainDataset(Dataset):
    """See the module docstring.

    Args:
        dataset: a :class:`CocoInstances` (or any sequence of ``Sample`` with ``image_ids``).
        img_size: side S of the square model input (a multiple of 16).
        with_instances: return boxes / labels (and GT masks when the dataset has them).
        max_prompts: at most this many instances per image (None: all).
        embedding_cache: adds the cached teacher embedding of each image.
    """

    def __init__(
        self,
        dataset: Any,
        img_size: int,
        with_instances: bool = True,
        max_prompts: Optional[int] = 16,
        embedding_cache: Any = None,
    ) -> None:
        if max_prompts is not None and (isinstance(max_prompts, bool) or not isinstance(max_prompts, int) or max_prompts < 1):
            raise ValueError(f"max_prompts must be a positive int or None; got {max_prompts!r}")
        self.dataset = dataset
        self.img_size = check_img_size(img_size)
        self.with_instances = with_instances
        self.max_prompts = max_prompts
        self.embedding_cache = embedding_cache
        self.resize = ResizeLongestSide(self.img_size)
        if embedding_cache is not None:
            missing = [i for i in self.image_ids if i not in embedding_cache]
            if missing:
                raise ValueError(
                    f"the embedding cache {getattr(embedding_cache, 'root', '')} lacks {len(missing)} of the "
                    f"{len(self)} training images (e.g. image ids {missing[:5]}); build it for this dataset/split"
                )
            if tuple(embedding_cache.embed_shape[-2:]) != (self.img_size // EMBED_STRIDE,) * 2:
                raise ValueError(
                    f"the embedding cache holds {tuple(embedding_cache.embed_shape)} embeddings, but img_size "
                    f"{self.img_size} needs {self.img_size // EMBED_STRIDE}×{self.img_size // EMBED_STRIDE}"
                )

    @property
    def image_ids(self) -> list[int]:
        return list(self.dataset.image_ids)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.dataset[index]
        resized = image_to_input_tensor(sample.image, self.img_size)
        input_size = (int(resized.shape[-2]), int(resized.shape[-1]))
        image = normalize_and_pad(resized, self.img_size, SAM_PIXEL_MEAN, SAM_PIXEL_STD)[0]
        valid_lowres, valid_embed = valid_maps(input_size, self.img_size)
        item = {
            "image": image,
            "image_id": torch.tensor(int(sample.image_id), dtype=torch.long),
            "input_size": torch.tensor(input_size, dtype=torch.long),
            "valid_lowres": valid_lowres,
            "valid_embed": valid_embed,
        }
        if self.with_instances:
            item.update(self._instances(sample, input_size))
        if self.embedding_cache is not None:
            item["teacher_embedding"] = self.embedding_cache.get(int(sample.image_id))
        return item

    def _instances(self, sample: Any, input_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        count = len(sample.labels)
        limit = count if self.max_prompts is None else self.max_prompts
        order = torch.randperm(count).tolist() if count > limit else list(range(count))
        scale_y, scale_x = self.resize.axis_scales(sample.orig_size)
        boxes = torch.from_numpy(np.asarray(sample.boxes, dtype=np.float32)).reshape(-1, 4)
        boxes = boxes * torch.tensor([scale_x, scale_y, scale_x, scale_y])
        labels = torch.from_numpy(np.asarray(sample.labels, dtype=np.int64))
        if sample.masks is None:
            keep = sorted(order[:limit])
            return {"boxes": boxes[keep], "labels": labels[keep]}
        kept, lowres = [], []
        # Decode low-res masks a chunk at a time in the random order until `limit` non-empty ones are found, so an
        # image with hundreds of instances never holds hundreds of input-size float masks.
        for start in range(0, count, max(limit, 1)):
            chunk = order[start : start + limit]
            masks = masks_to_lowres(sample.masks[chunk], input_size, self.img_size)
            for index, mask in zip(chunk, masks):
                if len(kept) < limit and mask.any():
                    kept.append(index)
                    lowres.append(mask)
            if len(kept) >= limit:
                break
        side = self.img_size // LOWRES_STRIDE
        rank = np.argsort(kept, kind="stable")
        kept = [kept[i] for i in rank]
        gt = torch.stack([lowres[i] for i in rank]) if lowres else torch.zeros(0, side, side)
        return {"boxes": boxes[kept], "labels": labels[kept], "gt_lowres": gt}


def collate_sam_batch(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-image entries (B first) and concatenate per-instance ones (P = ΣN first).

    Adds ``prompt_image`` (P, index of each prompt's image in the batch) and ``num_prompts`` (B).
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    per_image = ("image", "image_id", "input_size", "valid_lowres", "valid_embed", "teacher_embedding")
    per_prompt = ("boxes", "labels", "gt_lowres")
    batch = {key: torch.stack([item[key] for item in items]) for key in per_image if key in items[0]}
    if "boxes" in items[0]:
        counts = [int(item["boxes"].shape[0]) for item in items]
        for key in per_prompt:
            if key in items[0]:
                batch[key] = torch.cat([item[key] for item in items])
        batch["num_prompts"] = torch.tensor(counts, dtype=torch.long)
        batch["prompt_image"] = torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts, dtype=torch.long))
    return batch


def build_sam_loader(
    dataset: Dataset, batch_size: int, shuffle: bool = True, num_workers: int = 0, seed: int = 0,
    drop_last: bool = True,
) -> DataLoader:
    """A DataLoader over this rank's shard (:class:`ShardSampler`; the whole set in one process).

    ``drop_last`` drops an incomplete final batch, as the reference does, unless the shard is smaller than one
    batch (then the only batch is kept so that tiny datasets still train).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    sampler = ShardSampler(len(dataset), shuffle=shuffle, seed=seed)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate_sam_batch,
        drop_last=drop_last and len(sampler) >= batch_size, persistent_workers=False,
        worker_init_fn=ignore_stop_signals,
    )


# ---------------------------------------------------------------------------------------------- prompts


def refinement_points(
    pred_logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, rng: Any, min_error_pixels: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per prompt from the low-res error region (spec §5.3, click rule).

    pred_logits P×H×W, target P×H×W (0/1), valid P×H×W (fraction; > 0.5 counts) at low res. A pixel is drawn
    uniformly from FN ∪ FP: FN → positive click (1), FP → negative click (0); fewer than ``min_error_pixels``
    error pixels → a padding point (−1). Returns coords P×2 in the input frame (cell centres, ×4) and labels P,
    on the device of ``pred_logits``.
    """
    from ..data.prompts import sample_refinement_clicks

    pred = (pred_logits.detach() > 0).cpu()
    coords, labels = sample_refinement_clicks(
        pred, (target.detach() > 0.5).cpu(), rng, valid=(valid.detach() > 0.5).cpu(), mode="random",
        min_error_pixels=min_error_pixels, scale=LOWRES_STRIDE,
    )
    return coords.to(pred_logits.device), labels.to(pred_logits.device)


def clip_boxes_to_inputs(boxes: torch.Tensor, input_sizes: torch.Tensor) -> torch.Tensor:
    """Clip P×4 xyxy boxes to their images' (h, w) = ``input_sizes`` P×2."""
    limits = input_sizes.flip(-1).repeat(1, 2).to(boxes.dtype)  # (w, h, w, h)
    return torch.minimum(boxes.clamp_min(0), limits)


# ---------------------------------------------------------------------------------------------- stage plumbing


@dataclass
class SamStageConfig:
    """Fields shared by the SAM-side stages (teacher, encoder and decoder distillation).

    ``lr``, ``min_lr`` and ``warmup_lr`` are the values of the schedule, or — with ``scale_lr`` — the yaml values
    of the reference, multiplied by ``batch_size × world_size / 512`` at run time (spec §5.0).
    """

    data: Optional[Path] = None  # COCO dataset folder or annotation JSON (see CocoInstances)
    images_dir: Optional[Path] = None
    split: Optional[str] = "train"  # "train" | "val" | None (all images)
    val_fraction: float = 0.2  # share of images in "val" when one annotation file is split by hash
    split_seed: int = 0
    max_images: Optional[int] = None  # use only the first N images of the split (quick runs)
    # Zoom-in crops (powersam.data.zoom_crops): [min, max] window side / box side adds one crop around every
    # instance to the images; null trains on the images alone. Pair with zoom-in evaluation (docs/zoom.md).
    zoom_context: Optional[tuple[float, float]] = None
    img_size: int = 1024
    epochs: int = 1
    batch_size: int = 8  # per process
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_lr: float = 0.0
    warmup_epochs: int = 0
    scale_lr: bool = False
    weight_decay: float = 0.01
    grad_clip: Optional[float] = None
    num_workers: int = 0
    seed: int = 0
    output_dir: Path = Path("runs/sam_stage")
    device: Optional[str] = None  # default: cuda when available, else cpu
    amp: bool = False
    log_every: int = 10
    checkpoint_every: int = 1
    progress: bool = True
    plot: bool = True  # redraw curves.png at every checkpoint


class FirstImages:
    """The first ``count`` images of a dataset, keeping ``image_ids`` / ``has_masks`` / ``class_names``."""

    def __init__(self, dataset: Any, count: int) -> None:
        self.dataset, self.count = dataset, min(int(count), len(dataset))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} images")
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "count"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def image_ids(self) -> list[int]:
        return list(self.dataset.image_ids)[: self.count]

    def image_info(self, index: int) -> dict:
        return self.dataset.image_info(index)


def open_stage_dataset(cfg: SamStageConfig, load_masks: bool = True, split: Optional[str] = "config") -> Any:
    """The :class:`CocoInstances` a stage trains on (``split="config"`` takes ``cfg.split``), with the zoom-in
    crops of ``cfg.zoom_context`` added when it is set."""
    from ..data.coco import CocoInstances

    if cfg.data is None:
        raise ValueError("no dataset: set `data` to a COCO folder or annotation JSON (e.g. --set data=PATH)")
    dataset = CocoInstances(cfg.data, images_dir=cfg.images_dir, split=cfg.split if split == "config" else split,
                            val_fraction=cfg.val_fraction, seed=cfg.split_seed, load_masks=load_masks)
    if cfg.max_images is not None:
        if cfg.max_images < 1:
            raise ValueError(f"max_images must be a positive int or null; got {cfg.max_images}")
        dataset = FirstImages(dataset, cfg.max_images)
    if len(dataset) == 0:
        raise ValueError(f"{cfg.data} has no images in split {cfg.split!r}")
    if getattr(cfg, "zoom_context", None) is not None:
        from ..data.zoom_crops import ZoomCrops

        dataset = ZoomCrops(dataset, context=cfg.zoom_context, seed=cfg.split_seed)
    return dataset


def stage_learning_rates(cfg: SamStageConfig, world_size: int) -> tuple[float, float, float]:
    """``(lr, min_lr, warmup_lr)`` as used, after the optional linear scaling (spec §5.0)."""
    from .schedule import linear_scaled_lr

    rates = (cfg.lr, cfg.min_lr, cfg.warmup_lr)
    if cfg.scale_lr:
        rates = tuple(linear_scaled_lr(r, cfg.batch_size, world_size) for r in rates)
    return rates  # type: ignore[return-value]


def init_stage(cfg: SamStageConfig) -> pdist.DistInfo:
    """Join torchrun's process group (if any), pick the device, create ``output_dir`` and save the config."""
    from .config import dump_config

    check_img_size(cfg.img_size)
    if cfg.device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or null; got {cfg.device!r}")
    use_cuda = torch.cuda.is_available() if cfg.device is None else cfg.device == "cuda"
    info = pdist.init_distributed(use_cuda=use_cuda)
    if info.is_main:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        dump_config(cfg, Path(cfg.output_dir) / "config.yaml")
    return info


def fit_stage(
    cfg: SamStageConfig, objective: nn.Module, loader: DataLoader, info: pdist.DistInfo, resume: bool,
    optimizer_model: Optional[nn.Module] = None,
) -> Any:
    """Train ``objective`` (an ``nn.Module`` whose ``forward(batch)`` returns ``{"loss", **scalars}``) with the
    shared :class:`~powersam.train.engine.Trainer`: AdamW (no decay on 1-D params), warmup + cosine per
    iteration, gradient clipping, DDP when launched by torchrun. Returns the trainer after ``fit``."""
    from .engine import Trainer
    from .schedule import WarmupCosine, build_optimizer

    objective = objective.to(info.device)
    lr, min_lr, warmup_lr = stage_learning_rates(cfg, info.world_size)
    optimizer = build_optimizer(optimizer_model or objective, "adamw", lr=lr, weight_decay=cfg.weight_decay)
    iters = len(loader)
    if iters == 0:
        raise ValueError("the training loader yields no batches")
    schedule = WarmupCosine(lr, min_lr, min(cfg.warmup_epochs * iters, cfg.epochs * iters), cfg.epochs * iters, warmup_lr)
    model = pdist.wrap_ddp(objective)
    trainer = Trainer(
        model, optimizer, schedule, lambda module, batch: module(batch), output_dir=cfg.output_dir,
        max_epochs=cfg.epochs, grad_clip=cfg.grad_clip, seed=cfg.seed, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, amp=cfg.amp, device=info.device, progress=cfg.progress,
        plot=cfg.plot,
    )
    trainer.fit(loader, resume=resume)
    return trainer


def print_stage_summary(checkpoint: Path, what: str) -> None:
    """Print (rank 0) the ``meta["summary"]`` lines a stage stored in its checkpoint, then the path."""
    if not pdist.is_main():
        return
    from ..checkpoint import read_powersam_checkpoint

    meta = read_powersam_checkpoint(checkpoint)["meta"]
    for line in meta.get("summary", []):
        print(line)
    print(f"{what} checkpoint: {checkpoint}")
