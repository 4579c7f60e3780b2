"""ONNX export of PowerSAM models, and the ``powersam export`` command-line helpers.

Two kinds of export (see :mod:`powersam.deploy.graphs` for the graphs themselves):

* integrated (default, PowerSAM models): one file, image → boxes, scores, labels and low-res mask logits;
* interactive (``interactive=True``, any SAM-family model): ``encoder.onnx`` + ``decoder.onnx``, SAM's interface.

Graphs are traced with PyTorch's TorchScript-based exporter (``dynamo=False``: it needs no ``onnxscript``), checked
with ``onnx.checker`` and carry :class:`~powersam.runtime.metadata.GraphMetadata` in their ``metadata_props``.
:func:`powersam.runtime.load` runs them without PyTorch.
"""
from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .. import __version__
from .graphs import DecoderGraph, DecoupledGraph, EncoderGraph, IntegratedGraph, encoder_upsample_mode
from ..runtime.metadata import GraphMetadata, attach_metadata
from .options import MIN_OPSET

logger = logging.getLogger(__name__)

__all__ = ["MIN_OPSET", "export_onnx", "interactive_paths"]

MultimaskOutput = Union[bool, int, None]


def _resolve_model(
    model_or_name: Union[str, nn.Module, None],
    checkpoint: Optional[Union[str, Path]],
    img_size: Optional[int],
) -> nn.Module:
    if isinstance(model_or_name, nn.Module):
        if checkpoint is not None:
            raise ValueError("checkpoint is only used with a model name; load weights into the module yourself")
        own_size = int(model_or_name.img_size)
        if img_size is not None and int(img_size) != own_size:
            raise ValueError(f"img_size={img_size} differs from the model's own img_size {own_size}; rebuild the model")
        return model_or_name.eval()
    if model_or_name is None and checkpoint is None:
        raise ValueError("give a zoo model name, a checkpoint that records one, or both")
    if model_or_name is not None and not isinstance(model_or_name, str):
        raise TypeError(f"model_or_name must be a zoo name or an nn.Module, got {type(model_or_name).__name__}")
    from ..models.zoo import build_model

    return build_model(model_or_name, checkpoint, img_size=None if img_size is None else int(img_size))


def interactive_paths(out_path: Union[str, Path]) -> tuple[Path, Path]:
    """Where an interactive export writes: ``X.onnx`` → ``X.encoder.onnx`` + ``X.decoder.onnx`` beside it;
    any other path is a folder that gets ``encoder.onnx`` + ``decoder.onnx``."""
    out_path = Path(out_path)
    if out_path.suffix == ".onnx":
        return out_path.with_suffix(".encoder.onnx"), out_path.with_suffix(".decoder.onnx")
    return out_path / "encoder.onnx", out_path / "decoder.onnx"


def export_onnx(
    model_or_name: Union[str, nn.Module, None],
    out_path: Union[str, Path],
    *,
    checkpoint: Optional[Union[str, Path]] = None,
    img_size: Optional[int] = None,
    interactive: bool = False,
    opset: int = 17,
    upsample_mode: Optional[str] = None,
    score_thr: Optional[float] = None,
    nms_iou: Optional[float] = None,
    max_det: Optional[int] = None,
    multimask_output: MultimaskOutput = None,
    simplify: bool = False,
) -> list[Path]:
    """Export a model to ONNX and return the files written.

    Args:
        model_or_name: a zoo name (built with :func:`powersam.models.zoo.build_model`), a built model, or None
            with a ``checkpoint`` that records its model name.
        out_path: the ``.onnx`` file (integrated), or see :func:`interactive_paths`.
        checkpoint: weights for a zoo name (strict loading).
        img_size: network input side S (default: the size a checkpoint records, else 1024); a module keeps its own
            (a different value raises).
        interactive: export the encoder/decoder pair instead of the integrated detect-and-segment graph.
        opset: ONNX opset, at least 17.
        upsample_mode: RepViT fuse-neck interpolation in the graph; None keeps the model's (bicubic as trained;
            the exact ×2 case is written as Pad + depthwise Conv + DepthToSpace, see
            :func:`~powersam.deploy.graphs.bicubic_upsample_2x`, so no cubic ``Resize`` is needed); ``"bilinear"``
            trades a small output change for a plain linear ``Resize``.
        score_thr, nms_iou, max_det: integrated graphs: defaults recorded in the metadata (the graph takes them
            as inputs, so a runtime may change them per call). None takes the model's.
        multimask_output: decoder graphs: which mask tokens to return (as ``MaskDecoder.output_slice``: False/1 →
            token 0, True/3 → tokens 1..3, 4 → all). None returns all four and lets the runtime choose per call.
        simplify: run ``onnxsim`` over each graph (needs the ``onnxsim`` package).

    Returns:
        ``[integrated.onnx]`` or ``[encoder.onnx, decoder.onnx]``.
    """
    if int(opset) < MIN_OPSET:
        raise ValueError(f"opset must be at least {MIN_OPSET}, got {opset}")
    model = _resolve_model(model_or_name, checkpoint, img_size)
    name = getattr(model, "model_name", type(model).__name__)
    mode = upsample_mode if upsample_mode is not None else encoder_upsample_mode(model.image_encoder)
    common = dict(
        model_name=name,
        img_size=int(model.img_size),
        pixel_mean=[float(v) for v in model.pixel_mean.flatten()],
        pixel_std=[float(v) for v in model.pixel_std.flatten()],
        embedding_size=int(model.prompt_encoder.image_embedding_size[0]),
        mask_threshold=float(getattr(model, "mask_threshold", 0.0)),
        upsample_mode=mode,
        powersam_version=__version__,
        **_sam2_conventions(model),
    )
    started = time.perf_counter()
    if interactive:
        paths = _export_interactive(model, out_path, int(opset), upsample_mode, multimask_output, simplify, common)
    else:
        if multimask_output is not None:
            raise ValueError("multimask_output applies to interactive exports; the integrated graph returns token 0")
        paths = [
            _export_integrated(
                model, out_path, int(opset), upsample_mode, score_thr, nms_iou, max_det, simplify, common
            )
        ]
    logger.info("exported %s to %s in %.1f s", name, ", ".join(map(str, paths)), time.perf_counter() - started)
    return paths


def _sam2_conventions(model: nn.Module) -> dict:
    """Metadata of SAM 2's own preprocessing and prompt tokens (nothing for SAM v1-family models)."""
    conventions = {}
    if getattr(model, "resize_mode", "longest_side") == "squash":
        conventions["resize_mode"] = "squash"
    if getattr(model.prompt_encoder, "boxes_as_points", False):
        conventions["prompt_order"] = "sam2"
    return conventions


def _export_integrated(model, out_path, opset, upsample_mode, score_thr, nms_iou, max_det, simplify, common) -> Path:
    decoupled = hasattr(model, "detector")
    if not hasattr(model, "box_generator") and not decoupled:
        raise ValueError(
            f"{common['model_name']} has no detector (integrated box-prompt generator or separate YOLOX); export it "
            "with interactive=True"
        )
    score_thr = float(model.score_thr if score_thr is None else score_thr)
    nms_iou = float(model.nms_iou if nms_iou is None else nms_iou)
    max_det = int(model.max_det if max_det is None else max_det)
    if not 0.0 <= score_thr <= 1.0 or not 0.0 <= nms_iou <= 1.0 or max_det < 0:
        raise ValueError(
            f"need 0 ≤ score_thr ≤ 1, 0 ≤ nms_iou ≤ 1 and max_det ≥ 0, got {score_thr}, {nms_iou}, {max_det}"
        )
    graph = (DecoupledGraph if decoupled else IntegratedGraph)(model, upsample_mode).eval()
    size = common["img_size"]
    generator = torch.Generator().manual_seed(0)
    # A zero threshold during tracing keeps candidates flowing through NMS and the decoder, so no branch of the
    # trace sees an empty tensor; the values themselves are graph inputs.
    sample = (
        torch.randn(1, 3, size, size, generator=generator),
        torch.tensor([size, size], dtype=torch.int64),
        torch.tensor(0.0),
        torch.tensor(nms_iou, dtype=torch.float32),
        torch.tensor(8, dtype=torch.int64),
    )
    input_names = ["image", "input_size", "score_thr", "nms_iou", "max_det"]
    extra = {}
    if decoupled:  # the separate detector's own input, and its boxes' factors into the segmenter's frame
        det = int(model.det_size)
        sample = (sample[0], torch.rand(1, 3, det, det, generator=generator) * 255,
                  torch.full((4,), size / det), *sample[1:])
        input_names = ["image", "det_image", "box_scale", *input_names[1:]]
        extra["det_size"] = det
    detections = {0: "num_detections"}
    out_path = Path(out_path)
    metadata = GraphMetadata(
        graph="integrated",
        class_names=list(model.class_names),
        score_thr=score_thr,
        nms_iou=nms_iou,
        max_det=max_det,
        **extra,
        **common,
    )
    _export_graph(
        graph,
        sample,
        out_path,
        opset,
        metadata,
        simplify,
        input_names=input_names,
        output_names=list(graph.output_names),
        dynamic_axes={name: detections for name in ("boxes", "scores", "labels", "mask_logits")},
    )
    return out_path


def _export_interactive(model, out_path, opset, upsample_mode, multimask_output, simplify, common) -> list[Path]:
    encoder_path, decoder_path = interactive_paths(out_path)
    encoder = EncoderGraph(model.image_encoder, upsample_mode).eval()
    size = common["img_size"]
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    _export_graph(encoder, (image,), encoder_path, opset, GraphMetadata(graph="encoder", partner=decoder_path.name,
                  **common), simplify, input_names=["image"], output_names=encoder.output_names)

    decoder = DecoderGraph(model.prompt_encoder, model.mask_decoder, multimask_output).eval()
    grid = common["embedding_size"]
    # Batch 2 × 3 points, so the tracer cannot specialise a dimension of size 1.
    sample = (
        torch.randn(1, model.prompt_encoder.embed_dim, grid, grid),
        torch.rand(2, 3, 2) * size,
        torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, -1.0]]),
        torch.randn(2, 1, 4 * grid, 4 * grid),
        torch.ones(1),
    )
    if decoder.high_res:  # SAM 2: the stride-4 and stride-8 features of the same image
        sample += tuple(torch.randn(1, c, scale * grid, scale * grid)
                        for c, scale in zip(model.mask_decoder.high_res_channels, (4, 2)))
    prompts = {0: "num_prompts", 1: "num_points"}
    stability = {}
    if getattr(model.mask_decoder, "dynamic_multimask_via_stability", False):
        if len(decoder.token_indices) != model.mask_decoder.num_mask_tokens:
            raise ValueError("SAM 2 decoders choose their single mask among all mask tokens (the most stable "
                             "one): export them with multimask_output=None")
        stability = dict(stability_delta=float(model.mask_decoder.dynamic_multimask_stability_delta),
                         stability_thresh=float(model.mask_decoder.dynamic_multimask_stability_thresh))
    decoder_metadata = GraphMetadata(
        graph="decoder",
        partner=encoder_path.name,
        mask_tokens=decoder.token_indices,
        num_mask_tokens=int(model.mask_decoder.num_mask_tokens),
        **stability,
        **common,
    )
    _export_graph(
        decoder,
        sample,
        decoder_path,
        opset,
        decoder_metadata,
        simplify,
        input_names=decoder.input_names,
        output_names=["masks", "iou_predictions"],
        dynamic_axes={
            "point_coords": prompts,
            "point_labels": prompts,
            "mask_input": {0: "num_mask_inputs"},
            "masks": {0: "num_prompts"},
            "iou_predictions": {0: "num_prompts"},
        },
    )
    return [encoder_path, decoder_path]


def _export_graph(module: nn.Module, sample: tuple, path: Path, opset: int, metadata: GraphMetadata,
                  simplify: bool, **names) -> None:
    """Trace ``module`` to ``path`` with its metadata. The tracer writes a graph over 2 GiB as one file per tensor,
    so it traces into a scratch folder, and :func:`~powersam.deploy.onnx_io.save_onnx` writes the final file(s)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as scratch:
        traced = Path(scratch) / path.name
        _trace(module, sample, traced, opset, **names)
        _finish(traced, path, metadata, simplify)


def _trace(module: nn.Module, sample: tuple, path: Path, opset: int, **names) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # Shape checks inside the modules trace as constants; that is intended for the static dimensions.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # PyTorch deprecates the TorchScript exporter in favour of the dynamo one, which needs onnxscript (not a
        # dependency here); the custom NonMaxSuppression symbolic is written for the TorchScript exporter.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        # Edge padding's pad list is reversed with a step −1 Slice that the exporter leaves unfolded: harmless.
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        torch.onnx.export(
            module, sample, str(path), opset_version=opset, dynamo=False, do_constant_folding=True, **names
        )


def _finish(traced: Path, path: Path, metadata: GraphMetadata, simplify: bool) -> None:
    """Attach metadata to the traced graph, optionally simplify, then save and check it at ``path``."""
    import onnx

    from .onnx_io import save_onnx

    model = onnx.load(str(traced))
    if simplify:
        model = _simplify(model, path)
    attach_metadata(model, metadata)
    save_onnx(model, path)


def _simplify(model, path: Path):
    try:
        import onnxsim
    except ImportError:
        raise ImportError("simplify=True needs the onnxsim package (pip install onnxsim)") from None
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError(f"onnxsim could not validate the simplified {path.name}; export without simplify")
    return simplified
