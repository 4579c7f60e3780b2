"""Named model variants (data, not code) and ``build_model``.

Every row of ``MODEL_SPECS`` is a complete description of one named model: which image encoder, whether it
carries a box-prompt generator (integrated) or a separate detector (decoupled), and which official checkpoint
file it corresponds to. ``build_model`` turns a row into modules and, when a checkpoint is given, loads it
strictly (see :mod:`powersam.checkpoint`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from torch import nn

logger = logging.getLogger(__name__)

# Label order of the official box-prompt generator (spec §4.2). The meanings of the pinyin abbreviations are not
# documented upstream; a model trained here carries its own class names in its checkpoint.
PAPER_CLASS_NAMES: tuple[str, ...] = ("TA", "W", "SQR", "L", "FV", "CM", "TV", "QF", "C", "T", "JYZ", "QS")


@dataclass(frozen=True)
class ModelSpec:
    """One named model of the zoo.

    Attributes:
        name: zoo name, e.g. ``"powersam_s"``.
        encoder: ``"vit_b" | "vit_l" | "vit_h"`` (SAM ViT) or a RepViT arch (``"m0"``, ``"m1"``).
        detector: ``None`` (interactive SAM only), ``"bbpg"`` (integrated YOLOX head on the shared backbone)
            or ``"yolox_s"`` (decoupled: a separate YOLOX-S detector next to the segmenter).
        description: one line for ``powersam info`` and the README.
        checkpoint_file: name of the official weights file this model loads (for messages and docs).
        detector_checkpoint_file: official detector weights, where the detector is published separately.
        class_names: default detector classes.
        segmenter: for decoupled models, the zoo name of the segmenter.
    """

    name: str
    encoder: str
    detector: str | None = None
    description: str = ""
    checkpoint_file: str | None = None
    detector_checkpoint_file: str | None = None
    class_names: tuple[str, ...] = PAPER_CLASS_NAMES
    segmenter: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("sam_vit_b", "vit_b", description="SAM ViT-B (Meta)", checkpoint_file="sam_vit_b_01ec64.pth"),
        ModelSpec("sam_vit_l", "vit_l", description="SAM ViT-L (Meta)", checkpoint_file="sam_vit_l_0b3195.pth"),
        ModelSpec("sam_vit_h", "vit_h", description="SAM ViT-H (Meta)", checkpoint_file="sam_vit_h_4b8939.pth"),
        ModelSpec(
            "sam_vit_t",
            "vit_t",
            description="Small SAM ViT (192-d, 6 blocks) trained from scratch as a teacher when no SAM checkpoint is given",
        ),
        ModelSpec("slimsam_50", "vit_p50", description="SlimSAM-50: uniformly pruned SAM ViT-B (embed 384)", checkpoint_file="SlimSAM-50-uniform.pth"),
        ModelSpec("slimsam_77", "vit_p77", description="SlimSAM-77: uniformly pruned SAM ViT-B (embed 168)", checkpoint_file="SlimSAM-77-uniform.pth"),
        ModelSpec(
            "slimsam_custom",
            "pruned_vit",
            description="Pruned SAM ViT with per-block widths (SlimSAM global pruning, `powersam prune`); widths come from the checkpoint",
        ),
        *(
            ModelSpec(
                f"sam2_hiera_{size}",
                f"sam2_hiera_{size}",
                description=f"SAM 2.1 Hiera-{label} (Meta), image mode",
                checkpoint_file=f"sam2.1_hiera_{file}.pt",
                extra={"resize_mode": "squash"},
            )
            for size, label, file in (("t", "T", "tiny"), ("s", "S", "small"), ("b+", "B+", "base_plus"), ("l", "L", "large"))
        ),
        ModelSpec("edgesam", "m1", description="EdgeSAM: RepViT-M1 (M0.9 widths) distilled SAM", checkpoint_file="edge_sam.pth"),
        ModelSpec(
            "powersam_s",
            "m0",
            detector="bbpg",
            description="PowerSAM-S: RepViT-M0.6 SAM + integrated YOLOX box-prompt generator",
            checkpoint_file="powersam_s.pth",
            detector_checkpoint_file="box_prompt_generator_repvit_epoch_300.pth",
        ),
        ModelSpec(
            "powersam_b",
            "m1",
            detector="bbpg",
            description="PowerSAM-B: RepViT-M1 SAM + integrated YOLOX box-prompt generator",
            checkpoint_file="powersam_b.pth",
        ),
        ModelSpec(
            "powersam_s_decoupled",
            "m0",
            detector="yolox_s",
            segmenter="powersam_s",
            description="Decoupled baseline: YOLOX-S detector + PowerSAM-S segmenter (two backbones)",
        ),
        ModelSpec(
            "powersam_b_decoupled",
            "m1",
            detector="yolox_s",
            segmenter="powersam_b",
            description="Decoupled baseline: YOLOX-S detector + PowerSAM-B segmenter (two backbones)",
        ),
        ModelSpec(
            "sam_vit_b_decoupled",
            "vit_b",
            detector="yolox_s",
            segmenter="sam_vit_b",
            description="Decoupled baseline: YOLOX-S detector + SAM ViT-B",
        ),
        ModelSpec(
            "sam_vit_h_decoupled",
            "vit_h",
            detector="yolox_s",
            segmenter="sam_vit_h",
            description="Decoupled baseline: YOLOX-S detector + SAM ViT-H",
        ),
    )
}

VIT_ENCODERS = ("vit_b", "vit_l", "vit_h", "vit_t", "vit_p50", "vit_p77")

# Named model lists (data), accepted wherever a comma list of zoo names is (``powersam bench --models``,
# ``powersam eval miou --model``, ``powersam info``) and expanded by :func:`expand_model_names`.
MODEL_GROUPS: dict[str, tuple[str, ...]] = {
    # The paper's Table 1: interactive mIoU under the six prompt modes and latency of seven models.
    "table1": ("sam_vit_b", "sam_vit_h", "sam2_hiera_l", "slimsam_50", "edgesam", "powersam_b", "powersam_s"),
    # The paper's Table 2: integrated (shared backbone) vs decoupled (separate YOLOX-S) detect-and-segment.
    "table2": ("powersam_s", "powersam_b", "powersam_s_decoupled", "powersam_b_decoupled"),
}
MODEL_GROUP_DESCRIPTIONS: dict[str, str] = {
    "table1": "paper Table 1: SAM-B, SAM-H, SAM2-L, SlimSAM, EdgeSAM, PowerSAM-B, PowerSAM-S",
    "table2": "paper Table 2: integrated vs decoupled PowerSAM-S/B",
}


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return list(MODEL_SPECS)


def expand_model_names(names: str | Sequence[str]) -> list[str]:
    """Zoo names from a comma list (or a sequence of entries) mixing group names (:data:`MODEL_GROUPS`) and
    model names: groups are expanded in place, duplicates dropped, first-seen order kept.

    Raises ``ValueError`` naming every unknown entry and listing the known groups and models, or when the list
    is empty.
    """
    items = names.split(",") if isinstance(names, str) else [p for item in names for p in str(item).split(",")]
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise ValueError(f"no model given; known groups: {', '.join(MODEL_GROUPS)}; known models: {', '.join(MODEL_SPECS)}")
    unknown = [item for item in items if item not in MODEL_GROUPS and item not in MODEL_SPECS]
    if unknown:
        listed = ", ".join(repr(u) for u in dict.fromkeys(unknown))
        raise ValueError(f"unknown model{'s' if len(set(unknown)) > 1 else ''} {listed}; known groups: "
                         f"{', '.join(MODEL_GROUPS)}; known models: {', '.join(MODEL_SPECS)}")
    expanded: dict[str, None] = {}
    for item in items:
        for name in MODEL_GROUPS.get(item, (item,)):
            expanded.setdefault(name, None)
    return list(expanded)


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name, with a helpful error listing the known names."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_SPECS)}") from None


def build_sam_model(
    spec: ModelSpec,
    img_size: int = 1024,
    upsample_mode: str = "bicubic",
    widths: dict | None = None,
    resize_mode: str | None = None,
) -> nn.Module:
    """Build the SAM-family part (image encoder, prompt encoder, mask decoder) of a zoo row.

    ``widths`` (per-block widths of a pruned ViT) is required for the ``pruned_vit`` encoder; ``resize_mode``
    (``"squash"`` | ``"longest_side"``) applies to SAM 2, whose own preprocessing squashes to a square.
    """
    from .sam.build import build_mask_decoder, build_prompt_encoder, build_sam_vit
    from .sam.sam import Sam

    if spec.encoder.startswith("sam2_hiera"):
        from .sam2 import build_sam2

        return build_sam2(spec.encoder, img_size=img_size, resize_mode=resize_mode or spec.extra.get("resize_mode", "squash"))
    if spec.encoder == "pruned_vit":
        if widths is None:
            raise ValueError(f"model {spec.name!r} needs per-block widths: load it from a checkpoint")
        from .slimsam import build_slimsam

        return build_slimsam(widths, img_size=img_size)
    if spec.encoder in VIT_ENCODERS:
        return build_sam_vit(spec.encoder, img_size=img_size)
    from .repvit import REPVIT_CONFIGS, RepViT

    if spec.encoder not in REPVIT_CONFIGS:
        raise ValueError(f"unknown encoder {spec.encoder!r}; known: {', '.join((*VIT_ENCODERS, *REPVIT_CONFIGS))}")
    return Sam(
        image_encoder=RepViT(arch=spec.encoder, img_size=img_size, upsample_mode=upsample_mode),
        prompt_encoder=build_prompt_encoder(img_size=img_size),
        mask_decoder=build_mask_decoder(),
    )


def build_model(
    name: str | None = None,
    checkpoint: str | Path | None = None,
    *,
    img_size: int | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
    detector_checkpoint: str | Path | None = None,
    with_detector: bool = True,
    upsample_mode: str | None = None,
    resize_mode: str | None = None,
    conf: float = 0.5,
    iou: float = 0.65,
    max_det: int = 100,
    score_thr: float | None = None,
    nms_iou: float | None = None,
) -> nn.Module:
    """Build a named model and (optionally) load weights strictly.

    Args:
        name: a zoo name (:func:`list_models`). May be omitted when ``checkpoint`` is a PowerSAM checkpoint,
            which records its model name.
        checkpoint: weights to load: an official file (``sam_vit_b_01ec64.pth``, ``edge_sam.pth``,
            ``powersam_s.pth``, …, plain or wrapped under ``model``/``state_dict``) or a checkpoint written by
            this project. Loading is strict: a mismatch raises with a key diff, never falls back to random weights.
        img_size: network input size; default: the size a PowerSAM checkpoint records, else 1024 (the official
            weights'). Convolutional encoders (RepViT, EdgeSAM) run at any multiple of 32 whatever size they were
            trained at; a ViT's position embeddings fix its size (another one fails the strict load).
        class_names: detector classes (sets the number of classes of the box-prompt generator / YOLOX head).
        detector_checkpoint: separate detector weights (e.g. the converted official
            ``box_prompt_generator_repvit_epoch_300.pth``, see ``powersam convert``).
        with_detector: ``False`` builds only the interactive SAM part of an integrated model.
        upsample_mode: the RepViT fuse-neck upsampling (default: the checkpoint's, else ``"bicubic"`` as trained;
            ``"bilinear"`` for runtimes without bicubic).
        resize_mode: SAM 2 only: ``"squash"`` (its own preprocessing, default) or ``"longest_side"`` (SAM's
            resize-and-pad, as the PowerSAM evaluation fed SAM 2).
        conf, iou, max_det: detection defaults of integrated/decoupled models (score threshold, NMS IoU, cap), the
            names ``predict`` takes. ``score_thr`` / ``nms_iou`` are their deprecated old names.

    Returns (in eval mode):
        ``Sam`` for interactive models, ``PowerSAM`` (integrated) or ``DecoupledPowerSAM`` for detect-and-segment.
    """
    from .. import checkpoint as ckpt_io

    score_thr, nms_iou = _renamed_thresholds(conf, iou, score_thr, nms_iou)
    payload: dict[str, Any] | None = None
    widths: dict | None = None
    if checkpoint is not None:
        payload = ckpt_io.read_powersam_checkpoint(checkpoint)
        recorded = payload.get("model_name")
        if name is None:
            if recorded is None:
                guess = ckpt_io.identify_checkpoint(payload["state_dict"])
                hint = f" (it looks like {guess})" if guess else ""
                raise ValueError(f"{checkpoint} does not record a model name{hint}; pass the model name explicitly")
            name = recorded
        elif recorded is not None and recorded != name:
            raise ValueError(f"{checkpoint} was written for model {recorded!r}, not {name!r}")
        config = payload.get("model_config") or {}
        if img_size is None and config.get("img_size") is not None:
            img_size = int(config["img_size"])  # asked for nothing: the size it was trained at
        upsample_mode = upsample_mode or config.get("upsample_mode")
        widths = config.get("widths")
        resize_mode = resize_mode or config.get("resize_mode")
        if class_names is None and payload.get("class_names"):
            class_names = payload["class_names"]
    if name is None:
        raise ValueError("build_model needs a model name or a checkpoint that records one")
    upsample_mode = upsample_mode or "bicubic"
    img_size = 1024 if img_size is None else int(img_size)

    spec = get_spec(name)
    if class_names is not None:
        spec = replace(spec, class_names=tuple(class_names))
    if spec.encoder == "pruned_vit" and payload is not None:
        from .slimsam import fuse_split_qkv, infer_widths

        # A plain `powersam convert` of a SlimSAM pickle keeps its split q/k/v layers.
        payload["state_dict"] = fuse_split_qkv(payload["state_dict"])
        if widths is None:
            widths = infer_widths(payload["state_dict"])
            img_size = int(widths.pop("img_size", img_size))
    ignore: tuple[str, ...] = ("fpn.", "rpn_head.")
    if not with_detector:  # the interactive part of a detect-and-segment checkpoint: its detector is reported, unused
        ignore += ("box_generator.", "detector.")
    if spec.encoder.startswith("sam2_hiera"):
        from .sam2 import SAM2_VIDEO_PREFIXES, convert_sam2_state_dict

        ignore = tuple(SAM2_VIDEO_PREFIXES)
        if payload is not None:
            payload["state_dict"] = convert_sam2_state_dict(payload["state_dict"])
    model = _assemble(spec, img_size, upsample_mode, with_detector, score_thr, nms_iou, max_det, widths, resize_mode)
    model.eval()  # as segment-anything does; training code calls .train() explicitly
    model.model_name = spec.name
    model.model_config = {"img_size": img_size, "upsample_mode": upsample_mode}
    if widths is not None:
        model.model_config["widths"] = widths
    if hasattr(model, "resize_mode"):
        model.model_config["resize_mode"] = model.resize_mode

    if payload is not None:
        report = ckpt_io.load_state_dict_strict(
            model,
            payload["state_dict"],
            source=str(checkpoint),
            optional_prefixes=_optional_prefixes(model),
            ignore_prefixes=ignore,
        )
        logger.info("%s", report)
        model.load_report = report
    if detector_checkpoint is not None:
        if not hasattr(model, "load_detector_weights"):
            raise ValueError(f"model {spec.name!r} has no detector to load {detector_checkpoint} into")
        model.load_detector_weights(detector_checkpoint)
    return model


def _renamed_thresholds(conf: float, iou: float, score_thr: float | None, nms_iou: float | None) -> tuple[float, float]:
    """``build_model``'s old threshold names still work, with a DeprecationWarning (one vocabulary: conf, iou)."""
    import warnings

    for old, new, value in (("score_thr", "conf", score_thr), ("nms_iou", "iou", nms_iou)):
        if value is not None:
            warnings.warn(f"build_model({old}=...) is deprecated; use {new}=", DeprecationWarning, stacklevel=3)
    return (conf if score_thr is None else float(score_thr)), (iou if nms_iou is None else float(nms_iou))


def _optional_prefixes(model: nn.Module) -> tuple[str, ...]:
    # The official SAM-side files (powersam_s.pth, …) do not carry the detector; it is published separately.
    return tuple(p for p in ("box_generator.", "detector.") if any(k.startswith(p) for k in model.state_dict()))


def _assemble(
    spec: ModelSpec,
    img_size: int,
    upsample_mode: str,
    with_detector: bool,
    score_thr: float,
    nms_iou: float,
    max_det: int,
    widths: dict | None = None,
    resize_mode: str | None = None,
) -> nn.Module:
    sam = build_sam_model(spec, img_size, upsample_mode, widths, resize_mode)
    if spec.detector is None or not with_detector:
        return sam
    from .powersam import DecoupledPowerSAM, PowerSAM

    num_classes = len(spec.class_names)
    detection = dict(class_names=list(spec.class_names), score_thr=score_thr, nms_iou=nms_iou, max_det=max_det)
    if spec.detector == "bbpg":
        from .yolox import build_bbpg

        box_generator = build_bbpg(in_channels=tuple(sam.image_encoder.stage_channels), num_classes=num_classes)
        return PowerSAM(sam, box_generator, **detection)
    if spec.detector == "yolox_s":
        from .yolox import build_yolox_s

        return DecoupledPowerSAM(sam, build_yolox_s(num_classes=num_classes), **detection)
    raise ValueError(f"model {spec.name!r}: unknown detector kind {spec.detector!r}")
