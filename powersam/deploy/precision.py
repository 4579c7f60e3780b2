"""FP16 copies of exported graphs, for TensorRT's strongly typed builder.

TensorRT 11 (``pip install tensorrt`` gives 11.4 at the time of writing) builds every network strongly typed: the builder
flags that let TensorRT 10 pick FP16 or INT8 kernels on its own (``BuilderFlag.FP16``/``INT8``) and its INT8
calibrators are gone, so an engine's precision is the precision of the ONNX graph it is built from. An FP16 engine
is therefore built from an FP16 graph, written here by ONNX Runtime's float16 converter (shipped in
``onnxruntime.transformers``, no extra dependency), with these parts kept in float32:

* the graph's inputs and outputs (``keep_io_types``): the runtime feeds and reads float32 as for any export;
* the detection bookkeeping of an integrated graph (:func:`~powersam.deploy.onnx_graph.detection_path`): box
  decoding (``exp`` of size logits times the stride overflows FP16's 65504 for a wild prediction), score
  products and thresholds, NMS and the gathers that lead to the ``boxes`` / ``scores`` / ``labels`` outputs, so
  boxes keep sub-pixel coordinates (FP16 has 0.5 px steps above 1024);
* normalisation statistics (``LayerNormalization``, and the ``Pow``/``ReduceMean``/``Sqrt`` of the decomposed
  channel LayerNorm of the fuse neck): a sum of squares overflows FP16 long before the activations do;
* what ONNX Runtime's converter keeps in float32 anyway (``NonMaxSuppression``, ``TopK``, ``Range``, ``Min``/``Max``…).

The converter alone would still round the float32 parts to FP16 between their nodes (it casts around each kept node
separately); :func:`drop_float16_round_trips` removes those casts, so the float32 parts really stay float32.
Convolutions, matrix products, attention and the mask decoder run in FP16, with FP32 accumulation in TensorRT. The
result also runs on ONNX Runtime's CPU provider (which computes FP16 nodes it has no kernel for in float32), which is
how the tests check it without a GPU.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Optional, Union

import onnx

from ..runtime.metadata import KEY_PREFIX, GraphMetadata
from .onnx_graph import detection_path, sort_topologically
from .onnx_io import save_onnx

logger = logging.getLogger(__name__)

__all__ = ["FLOAT32_OP_TYPES", "PRECISION_KEY", "drop_float16_round_trips", "float16_blocked_nodes", "float16_path",
           "float16_twins", "to_float16"]

PRECISION_KEY = KEY_PREFIX + "precision"
FLOAT32_OP_TYPES = ("LayerNormalization", "Pow", "ReduceMean", "Sqrt")


def float16_blocked_nodes(model: onnx.ModelProto, graph_kind: str) -> list[str]:
    """Names of the nodes that stay float32, besides those of :data:`FLOAT32_OP_TYPES` (see the module docstring)."""
    if graph_kind != "integrated":
        return []
    _, bookkeeping = detection_path(model)
    return sorted(bookkeeping)


def to_float16(src: Union[str, Path], dst: Union[str, Path], *,
               extra_float32_ops: Optional[Iterable[str]] = None, partner: Optional[str] = None) -> Path:
    """Write an FP16 copy of an exported float32 graph to ``dst`` (inputs and outputs stay float32); returns ``dst``.

    Args:
        src: a graph written by :func:`~powersam.deploy.onnx_export.export_onnx` (integrated, encoder or decoder).
        dst: output ``.onnx`` path (may not be ``src``).
        extra_float32_ops: more operator types to keep in float32 (e.g. ``["Softmax"]``) if a model overflows.
        partner: half of an interactive pair: the file name its metadata should name as the other half (default:
            the source's partner, i.e. the float32 one).
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"no ONNX file at {src}")
    if src.resolve() == dst.resolve():
        raise ValueError(f"dst must differ from src ({src})")
    model, inferred = _load_with_types(src)
    props = {p.key: p.value for p in model.metadata_props}
    metadata = GraphMetadata.from_props(props, source=str(src))
    if props.get(KEY_PREFIX + "quantization", "").startswith("int8"):
        raise ValueError(f"{src.name} is an INT8 graph; convert the float export to FP16")
    unnamed = [i for i, node in enumerate(model.graph.node) if not node.name]
    if unnamed:
        raise ValueError(f"{src.name}: {len(unnamed)} node(s) have no name (first: #{unnamed[0]})")
    blocked_ops = [*DEFAULT_OP_BLOCK_LIST, *FLOAT32_OP_TYPES, *(extra_float32_ops or [])]
    blocked_nodes = float16_blocked_nodes(model, metadata.graph)
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked_ops,
                                    node_block_list=blocked_nodes, disable_shape_infer=inferred)
    sort_topologically(half.graph)  # the converter appends the input casts last
    removed = drop_float16_round_trips(half)
    del half.metadata_props[:]
    record = f"fp16 (float32 I/O; float32 ops {', '.join(FLOAT32_OP_TYPES)}; {len(blocked_nodes)} detection nodes)"
    logger.debug("%s: removed %d float16 round trips between float32 nodes", src.name, removed)
    if partner is not None:
        props[KEY_PREFIX + "partner"] = partner
    for key, value in {**props, PRECISION_KEY: record}.items():
        entry = half.metadata_props.add()
        entry.key, entry.value = key, value
    save_onnx(half, dst)  # the full check proves it type-consistent, as a strongly typed build requires
    logger.info("wrote FP16 graph %s (%s)", dst, record)
    return dst


def drop_float16_round_trips(model: onnx.ModelProto) -> int:
    """Remove the float32 → float16 → float32 ``Cast`` pairs the converter puts between two float32 nodes; returns
    how many second casts went.

    ONNX Runtime's converter casts every kept-float32 node's output to FP16 and the next kept node's input back, so
    a chain of float32 nodes (box decoding, NMS bookkeeping) would still round its values to FP16 between nodes.
    Consumers of the second cast read the original float32 tensor instead; a second cast that produces a graph
    output becomes an ``Identity`` (the output keeps its name); first casts left unused are removed.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    to = lambda node: next((a.i for a in node.attribute if a.name == "to"), None)  # noqa: E731
    float32_tensors = _float32_tensors(model)
    rewired: dict[str, str] = {}
    removed = 0
    for node in list(graph.node):
        first = producer.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        if first is None or to(node) != onnx.TensorProto.FLOAT or first.op_type != "Cast":
            continue
        if to(first) != onnx.TensorProto.FLOAT16 or first.input[0] not in float32_tensors:
            continue
        source = first.input[0]
        if node.output[0] in outputs:
            identity = onnx.helper.make_node("Identity", [source], [node.output[0]], name=node.name + "_identity")
            graph.node.insert(list(graph.node).index(node), identity)
        else:
            rewired[node.output[0]] = source
        graph.node.remove(node)
        removed += 1
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rewired:
                node.input[i] = rewired[name]
    used = {name for node in graph.node for name in node.input} | outputs
    for node in list(graph.node):
        if node.op_type == "Cast" and not any(out in used for out in node.output):
            graph.node.remove(node)
    return removed


def _float32_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the float32 tensors of ``model``, by ONNX type inference."""
    inferred = onnx.shape_inference.infer_shapes(model) if model.ByteSize() < 2**31 else model
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    names = {v.name for v in values if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    names |= {t.name for t in inferred.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    names |= {out for node in inferred.graph.node if node.op_type == "Cast"
              and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute)
              for out in node.output}
    return names


def _load_with_types(src: Path) -> tuple[onnx.ModelProto, bool]:
    """Load ``src`` with its weights; for graphs past 2 GiB also run the type inference the converter needs, from
    the file (in-memory inference cannot serialise them). Returns ``(model, types already inferred)``."""
    import tempfile

    from .onnx_io import is_large_graph

    if not is_large_graph(src):
        return onnx.load(str(src)), False
    with tempfile.TemporaryDirectory(prefix=".fp16-", dir=src.parent) as scratch:
        typed = Path(scratch) / "typed.onnx"
        onnx.shape_inference.infer_shapes_path(str(src), str(typed))
        model = onnx.load(str(typed), load_external_data=False)
        onnx.external_data_helper.load_external_data_for_model(model, str(src.parent))
    return model, True


# ------------------------------------------------------------------------------------------------ exports
def float16_path(path: Union[str, Path]) -> Path:
    """Where the FP16 twin of an exported graph goes: ``X.onnx`` → ``X.fp16.onnx``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.fp16{path.suffix or '.onnx'}")


def float16_twins(paths: Iterable[Union[str, Path]]) -> list[Path]:
    """Write the FP16 twin (:func:`float16_path`) of every float graph among ``paths`` (INT8 graphs are skipped)
    → the twins written. An interactive pair's twins name each other as partners."""
    floats = [Path(p) for p in paths if not _quantized(Path(p))]
    twins = {p.name: float16_path(p).name for p in floats}
    written = []
    for path in floats:
        partner = _props(path).get(KEY_PREFIX + "partner")
        written.append(to_float16(path, float16_path(path), partner=twins.get(partner) if partner else None))
    return written


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _quantized(path: Path) -> bool:
    return _props(path).get(KEY_PREFIX + "quantization", "").startswith("int8")
