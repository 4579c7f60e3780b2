"""What an exported PowerSAM graph records about itself, stored as ONNX ``metadata_props``.

Everything a runtime needs besides the graph: preprocessing (input size, pixel mean/std), class names, detection
defaults and, for an interactive pair, which mask tokens the decoder returns and where the other half lives.
Keys are prefixed ``powersam.``; values are strings (JSON for lists). The runtime owns this format (it is the
reader every backend shares); the exporter in :mod:`powersam.deploy` writes it through :func:`attach_metadata`, and
:mod:`powersam.deploy.metadata` re-exports these names for older imports. Torch-free and onnx-free: ``attach_metadata``
only touches the ``metadata_props`` of a ``ModelProto`` it is handed.
"""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Mapping, Optional

__all__ = [
    "FORMAT_VERSION", "GRAPH_KINDS", "HIGH_RES_NAMES", "KEY_PREFIX", "PROMPT_ORDERS", "RESIZE_MODES", "GraphMetadata",
    "attach_metadata",
]

# Bump when a graph's inputs/outputs or the meaning of a key change; readers refuse newer versions.
FORMAT_VERSION = 1
GRAPH_KINDS = ("integrated", "encoder", "decoder")
KEY_PREFIX = "powersam."

# Keys whose values are JSON rather than plain strings.
_JSON_FIELDS = {"class_names", "pixel_mean", "pixel_std", "mask_tokens"}
_INT_FIELDS = {"img_size", "max_det", "num_mask_tokens", "format_version", "embedding_size", "det_size"}
_FLOAT_FIELDS = {"score_thr", "nms_iou", "mask_threshold", "stability_delta", "stability_thresh"}
RESIZE_MODES = ("longest_side", "squash")
# SAM 2's stride-4 and stride-8 features: outputs of its encoder graph, inputs of its decoder graph.
HIGH_RES_NAMES = ("high_res_feats_0", "high_res_feats_1")
PROMPT_ORDERS = ("sam", "sam2")


@dataclass
class GraphMetadata:
    """Description of one exported graph.

    Attributes:
        graph: ``"integrated"`` (image → detections + masks), ``"encoder"`` or ``"decoder"`` (interactive pair).
        model_name: zoo name of the exported model.
        img_size: side S of the square, zero-padded network input.
        pixel_mean / pixel_std: per-channel RGB normalisation applied before padding.
        class_names: detector classes (integrated graphs; empty otherwise).
        score_thr / nms_iou / max_det: defaults fed to the integrated graph's scalar inputs.
        det_size: decoupled baselines exported as one graph: side D of the separate detector's letterboxed input
            (the graph then also takes ``det_image`` and ``box_scale``).
        embedding_size: side of the image embedding (S/16); low-res masks are 4× that.
        mask_tokens: decoder graphs: indices of the mask tokens it returns (0 = single-mask token, 1..3 multimask).
        num_mask_tokens: how many mask tokens the decoder has in total (4 for SAM).
        mask_threshold: logit threshold that turns mask logits into masks.
        upsample_mode: RepViT fuse-neck interpolation baked into the graph (``"bicubic"`` / ``"bilinear"``).
        partner: file name (same folder) of the other graph of an interactive pair.
        resize_mode: ``"longest_side"`` (SAM: resize the long side to S, zero-pad; the default when absent) or
            ``"squash"`` (SAM 2: resize to S×S whatever the aspect ratio, masks resized straight back).
        prompt_order: ``"sam"`` (clicks, then box corners; a padding point only without a box; the default) or
            ``"sam2"`` (box corners first, then clicks, and always a padding point).
        stability_delta / stability_thresh: SAM 2 decoders: a single-mask request returns token 0 where its
            stability score (IoU of logits > δ and > −δ) reaches the threshold, else the best multimask output.
        powersam_version: version of the package that wrote the file.
        format_version: :data:`FORMAT_VERSION` at export time.
    """

    graph: str
    model_name: str
    img_size: int
    pixel_mean: list[float]
    pixel_std: list[float]
    class_names: list[str] = field(default_factory=list)
    score_thr: Optional[float] = None
    nms_iou: Optional[float] = None
    max_det: Optional[int] = None
    det_size: Optional[int] = None
    embedding_size: Optional[int] = None
    mask_tokens: Optional[list[int]] = None
    num_mask_tokens: Optional[int] = None
    mask_threshold: float = 0.0
    upsample_mode: Optional[str] = None
    partner: Optional[str] = None
    resize_mode: Optional[str] = None
    prompt_order: Optional[str] = None
    stability_delta: Optional[float] = None
    stability_thresh: Optional[float] = None
    powersam_version: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.graph not in GRAPH_KINDS:
            raise ValueError(f"graph must be one of {GRAPH_KINDS}, got {self.graph!r}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError(f"pixel_mean and pixel_std need 3 values (RGB), got {self.pixel_mean}, {self.pixel_std}")
        if self.graph == "integrated" and not self.class_names:
            raise ValueError("an integrated graph needs its class_names")
        if self.graph == "decoder" and not self.mask_tokens:
            raise ValueError("a decoder graph needs mask_tokens (the token indices it returns)")
        if self.resize_mode is not None and self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.prompt_order is not None and self.prompt_order not in PROMPT_ORDERS:
            raise ValueError(f"prompt_order must be one of {PROMPT_ORDERS}, got {self.prompt_order!r}")

    def to_props(self) -> dict[str, str]:
        """Flatten to the ``{key: string}`` form of ONNX ``metadata_props`` (None values are left out)."""
        props = {}
        for name, value in asdict(self).items():
            if value is None:
                continue
            props[KEY_PREFIX + name] = json.dumps(value) if name in _JSON_FIELDS else str(value)
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> "GraphMetadata":
        """Parse ``metadata_props`` written by :meth:`to_props`; raise ValueError naming ``source`` if they are
        missing (not a PowerSAM export) or newer than this reader."""
        ours = {key[len(KEY_PREFIX) :]: value for key, value in props.items() if key.startswith(KEY_PREFIX)}
        if "graph" not in ours:
            raise ValueError(f"{source} carries no PowerSAM metadata; export it with powersam.deploy.export_onnx")
        version = int(ours.get("format_version", "0"))
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{source} uses PowerSAM export format {version}, newer than this reader ({FORMAT_VERSION}); "
                "upgrade powersam"
            )
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, text in ours.items():
            if name not in known:
                continue  # written by a newer minor version; ignoring is safe within one format version
            if name in _JSON_FIELDS:
                values[name] = json.loads(text)
            elif name in _INT_FIELDS:
                values[name] = int(text)
            elif name in _FLOAT_FIELDS:
                values[name] = float(text)
            else:
                values[name] = text
        missing = [name for name in _required_fields() if name not in values]
        if missing:
            raise ValueError(f"{source}: PowerSAM metadata lacks {missing}")
        return cls(**values)


def _required_fields() -> list[str]:
    return [f.name for f in fields(GraphMetadata) if f.default is MISSING and f.default_factory is MISSING]


def attach_metadata(model: Any, metadata: GraphMetadata) -> None:
    """Write ``metadata`` into an ``onnx.ModelProto``'s ``metadata_props``, replacing earlier PowerSAM keys."""
    props = metadata.to_props()
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(KEY_PREFIX)]
    del model.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
