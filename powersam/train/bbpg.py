"""Stage 3: train the box-prompt generator (YOLOX-PAFPN + YOLOX head) on the frozen shared RepViT backbone.

Recipe (spec §4.3–4.4, paper §3.3 / §4.2.2): SGD (Nesterov, momentum 0.9, lr 0.01, weight decay 5e-4 on conv
weights only), quadratic warmup for 5 epochs, cosine towards 5 % of the base LR until the last 15 epochs, then
constant; an EMA of the weights with exponential momentum warmup; YOLOX augmentations (mosaic, random affine,
MixUp, HSV, flip) switched off for the last 15 epochs, when the L1 box loss is switched on. Differences from the
reference, on purpose (spec §9.8): images are RGB and preprocessed exactly as the SAM encoder's input (Pillow
resize-longest-side, normalise, zero pad), so the head is trained on the features it gets at inference; MixUp is
off unless ``mixup: true`` (configs/paper/stage3_bbpg.yaml turns it on, as the reference does).

Only ``box_generator`` is trained. The encoder runs ``forward_stages`` (no SAM fuse neck) under ``no_grad`` in
eval mode, so its weights and BatchNorm statistics stay bit-identical. The final checkpoint is the whole
integrated model (backbone, prompt encoder and mask decoder as loaded, the EMA box generator), ready for
``build_model(checkpoint=...)`` and ``predict()``.

CLI: ``powersam train bbpg --config CFG [--set key=value] [--resume]`` (torchrun for several GPUs).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import checkpoint as ckpt_io
from ..data.augment import DetectionAugment
from .bbpg_data import BBPGDataset, BoxDetector, collate_bbpg, label_mapping, normalize_batch
from .bbpg_eval import BoxAPValidator, recompute_bn_statistics
from .config import config_to_dict, dump_config
from .signals import ignore_stop_signals
from .distributed import (ShardSampler, barrier, init_distributed, is_main, move_to_device, unwrap_model,
                          wrap_ddp)
from .ema import ModelEMA
from .engine import Trainer
from .schedule import QuadraticWarmupCosineConstant, build_optimizer
from .yolox_loss import YOLOXLoss

__all__ = ["BBPGConfig", "BBPGTrainer", "BoxDetector", "build_bbpg_schedule", "fit_bbpg", "load_backbone_model",
           "load_box_generator", "recompute_bn_statistics", "set_epoch_mode", "train_bbpg"]

logger = logging.getLogger("powersam.train.bbpg")

FINAL_NAME = "final.pt"


@dataclass
class BBPGConfig:
    """Stage-3 settings; the defaults are the paper's (``configs/paper/stage3_bbpg.yaml`` restates them)."""

    data: Optional[Path] = None  # COCO dataset folder or annotation JSON (boxes suffice)
    split: Optional[str] = "train"
    val_split: Optional[str] = "val"  # None: no validation
    val_fraction: float = 0.2  # share of images in "val" when the dataset is one annotation file
    split_seed: int = 0
    images_dir: Optional[Path] = None
    class_names: Optional[list[str]] = None  # default: the dataset's; a superset is allowed
    model: Optional[str] = None  # zoo name; default: recorded in the backbone checkpoint, else powersam_s
    backbone_checkpoint: Optional[Path] = None  # stage-2 checkpoint or official powersam_*.pth; None = random
    # A box generator to start from instead of a new one: an integrated checkpoint of the same model and classes
    # (e.g. the shipped synth_powersam_s, pretrained on generated scenes); None = a freshly initialised head.
    head_checkpoint: Optional[Path] = None
    img_size: Optional[int] = None  # default: recorded in the checkpoint, else 1024
    epochs: int = 300
    batch_size: int = 8  # per process
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: int = 5
    no_aug_epochs: int = 15
    min_lr_ratio: float = 0.05
    ema: bool = True
    ema_momentum: float = 1e-4
    ema_gamma: float = 2000.0
    augment: bool = True  # False: resize only, every epoch (then cache_features may be used)
    mosaic: bool = True
    mixup: bool = False  # YOLOX MixUp after the affine (the reference has it; off by default for small data)
    mixup_ratio: tuple[float, float] = (0.8, 1.6)  # MixUp's scale jitter of the blended-in image
    scale: Optional[tuple[float, float]] = None  # affine scale range; default (0.1, 2) with mosaic, else (0.5, 1.5)
    rotate: float = 10.0
    translate: float = 0.1
    shear: float = 2.0
    hue: float = 5.0
    saturation: float = 30.0
    value: float = 30.0
    flip_prob: float = 0.5
    border_value: int = 114  # fill of image areas uncovered by mosaic/affine (image content, not padding)
    min_box_size: float = 1.0  # drop boxes with a side shorter than this after augmentation (input pixels)
    cache_features: bool = False  # keep the frozen backbone's features per image (only with augment: false)
    output_dir: Path = Path("runs/bbpg")
    num_workers: int = 2
    seed: int = 0
    eval_every: int = 10  # epochs; 0 = only after the last epoch (when val_split is set)
    eval_max_images: Optional[int] = None
    device: Optional[str] = None  # default: cuda:LOCAL_RANK when available, else cpu
    amp: bool = False
    grad_clip: Optional[float] = None
    log_every: int = 10
    precise_bn_batches: int = 0  # >0: recompute the head's BN statistics over this many batches at the end
    checkpoint_every: int = 1  # epochs between last.pt writes (each also redraws curves.png when plot)
    plot: bool = True
    progress: bool = True

    def validate(self, needs_data: bool = True) -> None:
        """Raise ``ValueError`` naming the first inconsistent setting."""
        if needs_data and self.data is None:
            raise ValueError("BBPGConfig.data is required: a COCO dataset folder or annotation JSON")
        for name in ("epochs", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_epochs", "no_aug_epochs", "num_workers", "eval_every", "precise_bn_batches"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.warmup_epochs + self.no_aug_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) + no_aug_epochs ({self.no_aug_epochs}) must not "
                             f"exceed epochs ({self.epochs})")
        if self.img_size is not None and (self.img_size < 32 or self.img_size % 32):
            raise ValueError(f"img_size must be a positive multiple of 32 (the detector's largest stride), "
                             f"got {self.img_size}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.cache_features and self.augment:
            raise ValueError("cache_features needs augment: false (augmented images change every epoch)")


# ------------------------------------------------------------------------------------------ model


def _fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's state (names and bytes), to tie a training state to the backbone it was made with."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_backbone_model(
    model_name: Optional[str], backbone_checkpoint: Optional[Path], img_size: Optional[int], class_names: list[str]
) -> nn.Module:
    """An integrated ``PowerSAM`` with ``class_names`` whose SAM part comes from ``backbone_checkpoint``.

    The checkpoint may be a stage-2 checkpoint (no ``box_generator.*``), an official ``powersam_*.pth``, an earlier
    stage-3 checkpoint (its box generator is discarded: the head is trained afresh) or an encoder-only file; the
    parts it holds are loaded strictly. Without a checkpoint every weight is random (for smoke tests only).
    """
    from ..models.zoo import build_model, get_spec

    payload = ckpt_io.read_powersam_checkpoint(backbone_checkpoint) if backbone_checkpoint is not None else None
    recorded = payload.get("model_name") if payload else None
    if model_name is not None and recorded is not None and model_name != recorded:
        raise ValueError(f"model is {model_name!r} but {backbone_checkpoint} was written for {recorded!r}")
    name = model_name or recorded or "powersam_s"
    if get_spec(name).detector != "bbpg":
        raise ValueError(f"model {name!r} has no integrated box-prompt generator; use powersam_s or powersam_b")
    model_config = (payload or {}).get("model_config") or {}
    saved_size = model_config.get("img_size")
    if img_size is None:
        img_size = int(saved_size) if saved_size is not None else 1024
    elif saved_size is not None and int(saved_size) != img_size:
        raise ValueError(f"img_size {img_size} differs from the backbone checkpoint's {saved_size}")
    upsample_mode = model_config.get("upsample_mode", "bicubic")
    model = build_model(name, img_size=img_size, class_names=list(class_names), upsample_mode=upsample_mode)
    if payload is None:
        logger.warning("no backbone_checkpoint: training the box generator on a RANDOM frozen backbone")
        return model
    source = str(backbone_checkpoint)
    state = payload["state_dict"]
    head_keys = [k for k in state if k.startswith("box_generator.")]
    if head_keys:
        logger.info("%s: ignoring its box generator (%d tensors); stage 3 trains a new one", source, len(head_keys))
        state = {k: v for k, v in state.items() if not k.startswith("box_generator.")}
    if not any(k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")) for k in state):
        # An encoder-only file (stage-1 style, keys without the image_encoder. prefix).
        ckpt_io.load_state_dict_strict(model.image_encoder, state, source=source, ignore_prefixes=("fpn.", "rpn_head."))
        absent = ["prompt_encoder.", "mask_decoder."]
    else:
        report = ckpt_io.load_state_dict_strict(
            model, state, source=source, ignore_prefixes=("fpn.", "rpn_head."),
            optional_prefixes=("box_generator.", "prompt_encoder.", "mask_decoder."),
        )
        absent = [p for p in report.absent_optional_prefixes if p != "box_generator."]
    if absent:
        logger.warning("%s has no %s weights: they stay random, so the saved model's masks are meaningless until "
                       "they are loaded from a SAM-side checkpoint", source, " / ".join(absent))
    return model


def load_box_generator(model: nn.Module, checkpoint: Path, class_names: list[str]) -> None:
    """Start ``model.box_generator`` from the one in ``checkpoint`` (strictly): same model, same class names."""
    payload = ckpt_io.read_powersam_checkpoint(checkpoint)
    if payload.get("model_name") not in (None, model.model_name):
        raise ValueError(f"head_checkpoint {checkpoint} holds a {payload['model_name']} model, not {model.model_name}")
    saved = payload.get("class_names")
    if saved is not None and list(saved) != list(class_names):
        raise ValueError(f"head_checkpoint {checkpoint} was trained for classes {list(saved)}, not {list(class_names)}"
                         ": its class scores would be read as the wrong classes (set class_names to match, or "
                         "head_checkpoint: null)")
    prefix = "box_generator."
    state = {k[len(prefix):]: v for k, v in payload["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"head_checkpoint {checkpoint} holds no box generator (no '{prefix}*' weights)")
    ckpt_io.load_state_dict_strict(model.box_generator, state, source=str(checkpoint))


def build_bbpg_schedule(cfg: BBPGConfig, iters_per_epoch: int) -> QuadraticWarmupCosineConstant:
    """mmdet's QuadraticWarmupLR + CosineAnnealingLR(T_max = end epoch) + ConstantLR, per iteration."""
    n = iters_per_epoch
    cosine_end = (cfg.epochs - cfg.no_aug_epochs) * n
    return QuadraticWarmupCosineConstant(
        cfg.lr, warmup_iters=cfg.warmup_epochs * n, cosine_end_iter=cosine_end, total_iters=cfg.epochs * n,
        min_lr=cfg.lr * cfg.min_lr_ratio, cosine_period_iters=cosine_end,
    )


# ------------------------------------------------------------------------------------------ trainer


class BBPGTrainer(Trainer):
    """:class:`Trainer` whose ``model`` is the box generator; the frozen ``encoder`` makes its input features
    from :func:`collate_bbpg` batches.

    ``cache_features``: keep each image's features (keyed by ``image_id``, on the training device) after its
    first pass and reuse them in later epochs. Only valid when an image's input never changes (no augmentation).
    Cached maps equal recomputed ones up to float rounding (a conv over a batch of another size may round
    differently, ~1e-7). Memory per image: S²·(C1/64 + C2/256 + C3/1024)·4 bytes, 0.57 MB at S = 256 and
    9.2 MB at S = 1024 for RepViT-M0. Saves the backbone forward, ~20 % of a CPU step at S = 256.
    """

    def __init__(self, *args: Any, encoder: nn.Module, loss_fn: YOLOXLoss, pixel_mean: torch.Tensor,
                 pixel_std: torch.Tensor, cache_features: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feature_cache: Optional[dict[int, tuple[torch.Tensor, ...]]] = {} if cache_features else None
        self.encoder = encoder
        self.loss_fn = loss_fn
        self.pixel_mean = pixel_mean
        self.pixel_std = pixel_std
        self.backbone_fingerprint = _fingerprint(encoder)

    def features(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """The frozen encoder's stage-1..3 maps of the batch (from the cache where an image has them)."""
        if self.feature_cache is None:
            x = normalize_batch(batch["images"], batch["input_sizes"], self.pixel_mean, self.pixel_std)
            with torch.no_grad():
                return self.encoder.forward_stages(x)
        ids = batch["image_ids"].tolist()
        missing = [row for row, image_id in enumerate(ids) if image_id not in self.feature_cache]
        if missing:
            rows = torch.as_tensor(missing, device=batch["images"].device)
            x = normalize_batch(batch["images"][rows], batch["input_sizes"][rows], self.pixel_mean, self.pixel_std)
            with torch.no_grad():
                maps = self.encoder.forward_stages(x)
            for i, row in enumerate(missing):
                self.feature_cache[ids[row]] = tuple(level[i].clone() for level in maps)
        return tuple(torch.stack([self.feature_cache[i][level] for i in ids]) for level in range(3))

    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        outputs = self.model(self.features(batch))
        return self.loss_fn(*outputs, batch["boxes"], batch["labels"])

    def set_train_mode(self) -> None:
        self.model.train()
        self.encoder.eval()  # frozen BatchNorm: running statistics must not move

    def extra_state(self) -> dict:
        return {"backbone_fingerprint": self.backbone_fingerprint}

    def load_extra_state(self, state: dict) -> None:
        saved = state.get("backbone_fingerprint")
        if saved is not None and saved != self.backbone_fingerprint:
            raise ValueError("the training state was made on a different backbone than backbone_checkpoint loads; "
                             "resume with the same backbone, or start afresh")


def set_epoch_mode(epoch: int, epochs: int, no_aug_epochs: int, dataset: BBPGDataset,
                   augment: Optional[DetectionAugment], loss_fn: YOLOXLoss) -> None:
    """Per-epoch state, a pure function of ``epoch`` (so a resumed run gets it right): the dataset's augmentation
    draws, and the YOLOX mode switch — in the last ``no_aug_epochs`` epochs mosaic, the random affine and MixUp are off
    (``augment.strong = False``; HSV and flip stay, as in mmdet) and the L1 box loss is on.

    mmdet's ``YOLOXModeSwitchHook`` (and Megvii's YOLOX) switch one epoch earlier, at ``epoch + 1 == epochs −
    no_aug_epochs``, i.e. for ``no_aug_epochs + 1`` epochs; here the switch coincides with the constant-LR phase.
    """
    dataset.set_epoch(epoch)
    last_phase = epoch >= epochs - no_aug_epochs
    if augment is not None:
        augment.strong = not last_phase
    loss_fn.use_l1 = last_phase


def _make_augment(cfg: BBPGConfig, img_size: int) -> Optional[DetectionAugment]:
    if not cfg.augment:
        return None
    return DetectionAugment(
        size=img_size, mosaic=cfg.mosaic, scale=cfg.scale, rotate=cfg.rotate, translate=cfg.translate,
        shear=cfg.shear, hue=cfg.hue, saturation=cfg.saturation, value=cfg.value, flip_prob=cfg.flip_prob,
        border_value=cfg.border_value, min_box_size=cfg.min_box_size, mixup=cfg.mixup, mixup_ratio=cfg.mixup_ratio,
    )


def _datasets(cfg: BBPGConfig) -> tuple[Any, Any]:
    from ..data.coco import CocoInstances

    common = dict(images_dir=cfg.images_dir, val_fraction=cfg.val_fraction, seed=cfg.split_seed, load_masks=False)
    train = CocoInstances(cfg.data, split=cfg.split, **common)
    val = CocoInstances(cfg.data, split=cfg.val_split, **common) if cfg.val_split is not None else None
    if val is not None and len(val) == 0:
        logger.warning("validation split %r of %s is empty: no validation", cfg.val_split, cfg.data)
        val = None
    return train, val


def train_bbpg(cfg: BBPGConfig, resume: bool = False) -> Path:
    """Train the box generator as ``cfg`` says; returns the path of the final integrated checkpoint.

    ``resume=True`` continues from ``output_dir/last.pt`` (exactly, see :class:`Trainer`); the backbone must be
    the same. Under torchrun each process trains on its shard of the data (DDP over the box generator only).
    """
    cfg.validate()
    train_source, val_source = _datasets(cfg)
    return fit_bbpg(cfg, train_source, val_source, resume)


def fit_bbpg(cfg: BBPGConfig, train_source: Any, val_source: Any, resume: bool = False,
             sampler: Optional[Any] = None, meta: Optional[dict[str, Any]] = None) -> Path:
    """Stage 3 on ``train_source`` (a dataset of samples with boxes and labels, e.g. ``CocoInstances`` or a
    stream of generated scenes) with box AP on ``val_source`` (None: none); ``sampler``: the order of training
    indices (default: a shuffled shard of the whole dataset each epoch); ``meta`` is added to the checkpoint's."""
    info = init_distributed(use_cuda=None if cfg.device is None else cfg.device.startswith("cuda"))
    device = torch.device(cfg.device) if cfg.device is not None and not info.distributed else info.device
    torch.manual_seed(cfg.seed)  # the head's initialisation (DDP broadcasts rank 0's anyway)

    class_names = list(cfg.class_names) if cfg.class_names is not None else list(train_source.class_names)
    label_map = label_mapping(train_source.class_names, class_names)
    model = load_backbone_model(cfg.model, cfg.backbone_checkpoint, cfg.img_size, class_names)
    if cfg.head_checkpoint is not None:
        load_box_generator(model, cfg.head_checkpoint, class_names)
    img_size = int(model.img_size)
    model.requires_grad_(False)
    model.box_generator.requires_grad_(True)
    model.to(device).eval()
    encoder = model.image_encoder

    augment = _make_augment(cfg, img_size)
    dataset = BBPGDataset(train_source, img_size, augment, label_map, seed=cfg.seed, min_box_size=cfg.min_box_size)
    sampler = sampler if sampler is not None else ShardSampler(len(dataset), seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.num_workers, collate_fn=collate_bbpg, pin_memory=device.type == "cuda",
                        worker_init_fn=ignore_stop_signals)

    box_generator = model.box_generator
    if info.distributed and device.type == "cuda":
        box_generator = nn.SyncBatchNorm.convert_sync_batchnorm(box_generator)
        model.box_generator = box_generator
    ema = ModelEMA(box_generator, cfg.ema_momentum, cfg.ema_gamma) if cfg.ema else None
    trainable = wrap_ddp(box_generator)
    optimizer = build_optimizer(trainable, "sgd", lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                nesterov=cfg.nesterov)
    schedule = build_bbpg_schedule(cfg, len(loader))
    head = unwrap_model(trainable).bbox_head
    loss_fn = YOLOXLoss(len(class_names), strides=head.strides)
    evaluator = BoxAPValidator(cfg, val_source, encoder, class_names, model) if val_source is not None else None

    def on_epoch_start(trainer: Trainer, epoch: int) -> None:
        set_epoch_mode(epoch, cfg.epochs, cfg.no_aug_epochs, dataset, augment, loss_fn)

    def on_epoch_end(trainer: Trainer, epoch: int) -> None:
        done = epoch + 1
        due = cfg.eval_every > 0 and done % cfg.eval_every == 0 and done < cfg.epochs  # the last: after fit
        if evaluator is not None and due and trainer.dist.is_main:
            weights = ema.module if ema is not None else unwrap_model(trainer.model)
            trainer.log_metrics({f"val_{k}": v for k, v in evaluator(weights).items() if v is not None})

    trainer = BBPGTrainer(
        trainable, optimizer, schedule, output_dir=cfg.output_dir, max_epochs=cfg.epochs, grad_clip=cfg.grad_clip,
        ema=ema, seed=cfg.seed, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, amp=cfg.amp,
        on_epoch_start=on_epoch_start, on_epoch_end=on_epoch_end, device=device, progress=cfg.progress, plot=cfg.plot,
        encoder=encoder, loss_fn=loss_fn, pixel_mean=model.pixel_mean, pixel_std=model.pixel_std,
        cache_features=cfg.cache_features,
    )
    if info.is_main:
        dump_config(cfg, Path(cfg.output_dir) / "config.yaml")
    trainer.fit(loader, resume=resume)

    final_head = ema.module if ema is not None else unwrap_model(trainer.model)
    model.box_generator.load_state_dict(final_head.state_dict())
    if cfg.precise_bn_batches > 0:  # on every rank: SyncBatchNorm needs all of them
        batches = (trainer.features(move_to_device(b, device)) for b in islice(loader, cfg.precise_bn_batches))
        recompute_bn_statistics(model.box_generator, batches)
    final = Path(cfg.output_dir) / FINAL_NAME
    if info.is_main:
        meta = {"stage": "bbpg", "epochs": trainer.epoch, "global_step": trainer.global_step,
                "backbone_checkpoint": None if cfg.backbone_checkpoint is None else str(cfg.backbone_checkpoint),
                "head_checkpoint": None if cfg.head_checkpoint is None else str(cfg.head_checkpoint),
                "ema": cfg.ema, "config": config_to_dict(cfg), **(meta or {})}
        if evaluator is not None:
            scores = evaluator(model.box_generator)
            trainer.log_metrics({f"val_{k}": v for k, v in scores.items() if v is not None})
            meta["val_bbox"] = scores
        ckpt_io.save_checkpoint(final, model.state_dict(), model.model_name, model_config=model.model_config,
                                class_names=class_names, meta=meta)
        logger.info("wrote %s", final)
    barrier()  # other ranks return once the file exists
    return final
