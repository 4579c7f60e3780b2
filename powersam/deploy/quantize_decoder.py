"""Opt-in dynamic INT8 quantisation of the mask decoder's weight MatMuls (ONNX Runtime ``quantize_dynamic``).

The static quantiser (:mod:`powersam.deploy.quantize`) keeps the mask decoder in float32. This module quantises only
the decoder's *weight* products: ``MatMul`` nodes whose second input is an initializer (the two-way transformer's
q/k/v/out projections and MLPs, the per-pixel upscaling matmuls). Their weights become int8 (symmetric, per
tensor), their activations are quantised to uint8 at run time, row block by row block, from each call's own range
(no calibration set, so no prompt-dependent ranges). Everything else stays float: the attention products between
two activations (q·kᵀ, softmax·v), softmax, LayerNorm, the hypernetwork dot product that forms the mask logits, the
small token-side ``Gemm`` MLPs.

On x86 CPUs without VNNI the uint8×int8 kernels saturate, so 7-bit weights (``reduce_range``) are chosen there as
for the static graphs. Speed and mask agreement are measured by ``scripts/ab_inference.py int8`` (see
docs/speed_profile.md); it is not the default.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Union

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from ..runtime.integrity import cpu_has_vnni
from ..runtime.metadata import GraphMetadata

logger = logging.getLogger(__name__)

__all__ = ["DECODER_PREFIXES", "quantize_decoder_matmuls", "weight_matmuls"]

# Node-name prefixes of the prompt-side sub-graphs in the exporter's naming (``/mask_decoder/...``); an interactive
# decoder graph is all decoder, an integrated graph names its submodules.
DECODER_PREFIXES = ("/mask_decoder",)


def weight_matmuls(model: onnx.ModelProto, prefixes: Optional[Iterable[str]] = None) -> list[str]:
    """Names of the ``MatMul`` nodes whose second input is an initializer (optionally only under ``prefixes``)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    # The exporter wraps some constants in Identity nodes; a MatMul fed by one still multiplies a constant.
    constant = initializers | {
        node.output[0] for node in model.graph.node
        if node.op_type == "Identity" and node.input and node.input[0] in initializers
    }
    wanted = tuple(prefixes) if prefixes is not None else None
    unnamed = [node for node in model.graph.node if node.op_type == "MatMul" and not node.name]
    if unnamed:
        raise ValueError(f"{len(unnamed)} MatMul node(s) have no name; name them before quantising")
    return [
        node.name for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in constant and (wanted is None or node.name.startswith(wanted))
    ]


def quantize_decoder_matmuls(
    src: Union[str, Path],
    dst: Union[str, Path],
    *,
    reduce_range: Optional[bool] = None,
    record: Optional[str] = None,
) -> Path:
    """Quantise the decoder's weight MatMuls of ``src`` (a decoder, or an integrated graph, float or already static
    INT8) to dynamic INT8, write ``dst``; returns ``dst``.

    Args:
        src: an exported ``decoder`` graph, or an ``integrated`` graph (only its ``/mask_decoder`` MatMuls).
        dst: output path, not ``src``.
        reduce_range: 7-bit weights; None: on when this CPU has no VNNI (see :mod:`powersam.runtime.integrity`).
        record: the quantisation record to extend (the static quantiser's, for an integrated INT8 graph).
    """
    from .quantize import QUANTIZATION_KEY, _write_metadata  # one metadata writer for both quantisers

    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError(f"dst must differ from src ({src}); quantisation does not work in place")
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    kind = GraphMetadata.from_props(props, source=str(src)).graph
    if kind not in ("decoder", "integrated"):
        raise ValueError(f"only decoder and integrated graphs have a mask decoder; this is a {kind} graph")
    nodes = weight_matmuls(model, None if kind == "decoder" else DECODER_PREFIXES)
    if not nodes:
        raise ValueError(f"{src}: no weight MatMul found in the mask decoder")
    if reduce_range is None:
        reduce_range = cpu_has_vnni() is False
    previous = props.get(QUANTIZATION_KEY, record or "")
    if previous.startswith("none"):
        previous = ""
    del model
    with tempfile.TemporaryDirectory(prefix="powersam-quant-dec-") as work:
        tmp = Path(work) / "decoder.onnx"
        quantize_dynamic(
            str(src), str(tmp),
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=nodes,
            per_channel=False,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
        )
        entry = (f"decoder int8-dynamic; {len(nodes)} weight MatMul, weights int8"
                 f"{' (7-bit range)' if reduce_range else ''} per-tensor symmetric, activations uint8 per call")
        _write_metadata(tmp, dst, props, f"{previous}; {entry}" if previous else entry)
    logger.info("quantised the decoder MatMuls of %s → %s (%d nodes)", src, dst, len(nodes))
    return dst
