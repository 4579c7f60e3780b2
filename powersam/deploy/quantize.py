"""INT8 post-training static quantisation of exported PowerSAM graphs with ONNX Runtime (QDQ format).

What is quantised, and why:

* **encoder** graph: every convolution of the (fused) RepViT encoder and its neck. The encoder is nearly all of the
  compute of an interactive pair, and convolutions with per-channel int8 weights lose little.
* **integrated** graph: the convolutions of the encoder and of the box-prompt generator (YOLOX PAFPN and head
  stacks), except its *float tail*: the class / box / objectness predictor convolutions (their outputs are
  exponentiated and thresholded, where an int8 step becomes box jitter and scores flipping across ``score_thr``),
  the ``NonMaxSuppression``/``TopK`` selection, and everything after it (prompt encoder and mask decoder, see next).
  The tail is found from the graph's structure (NMS and what it feeds; the convolutions that reach NMS without
  another convolution in between), not from node names.
* **decoder** graph (and the decoder part of an integrated graph): kept in float32. Its attention softmax,
  LayerNorms and the hypernetwork dot product that forms the mask logits are where int8 hurts masks most, and static
  ranges calibrated on a few prompts generalise poorly to others. It is not free: at S=512 one prompt batch took
  ~16 ms against ~70 ms for the FP32 encoder (one thread). Dynamic int8 quantisation of its MatMul/Gemm weights
  (``onnxruntime.quantization.quantize_dynamic``) measured 16 → 11 ms with mask IoU 0.98 against float, on random
  weights, and on the trained real-data model cost nothing in prompted mIoU (docs/benchmarks.md section 3c). It
  stays opt-in (:mod:`powersam.deploy.quantize_decoder`; ``quantize_export(..., decoder=True)``, ``powersam export
  --int8 --int8-decoder``). :func:`quantize_onnx` on a decoder writes a float copy that says so.

Only ``Conv`` nodes get quantize/dequantize pairs; element-wise ops (GELU, SE gates, residual adds, the neck's
LayerNorm2d) run in float between them (quantising them too measured no faster and less accurate). In ONNX Runtime's
form each exported erf-GELU is first fused into one ``com.microsoft`` Gelu node (:func:`fuse_gelu`): ONNX Runtime
does that itself in a float graph, but not once a DequantizeLinear stands in front of it. Weights are int8,
symmetric, per output channel; activations are per tensor, asymmetric, from the calibration ranges (MinMax, or
Percentile to clip rare outliers); ``for_tensorrt=True`` makes them symmetric int8 and leaves biases float, as
TensorRT requires.

Activation type: ONNX Runtime's documentation names QDQ S8S8 (int8 activations) its first choice, but with
onnxruntime 1.32 on x86 its CPU provider turned only 34 of the 75 encoder convolutions of an S8S8 graph into integer
kernels (the rest ran as dequantize + float conv, slower than FP32), against all 75 with uint8 activations (U8S8:
encoder 1.4× faster than FP32 at S=512, one thread). So ``activation_type="uint8"`` is the default. U8S8 multiplies
through a saturating 16-bit instruction on x86 CPUs *without* VNNI (before Intel Cascade Lake / AMD Zen 4); there,
``reduce_range=True`` (7-bit weights) avoids the saturation. ``"int8"`` remains available for other back ends.

Calibration images go through :func:`powersam.runtime.preprocess.preprocess_image`, byte for byte what the runtime
feeds. Images from the deployment domain are the right calibration set; without any, a few synthetic substation
scenes (:func:`powersam.data.synth.render_scene`) are used, which is better than nothing but not a substitute.

The quantised file keeps the source's metadata (so :func:`powersam.runtime.load` opens it like the float one) and
records what was done under ``powersam.quantization``.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..io import ImageSource, list_images, load_image
from ..runtime.integrity import cpu_has_vnni
from ..runtime.preprocess import detector_feeds, preprocess_image
from ..runtime.metadata import KEY_PREFIX, GraphMetadata
from .onnx_graph import descendants, nms_nodes, upstream_to
from .onnx_io import is_large_graph, save_onnx

logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_METHODS",
    "QUANTIZATION_KEY",
    "ImageCalibrationReader",
    "calibration_images",
    "fuse_gelu",
    "quantize_export",
    "quantize_onnx",
    "quantized_path",
    "select_nodes_to_quantize",
]

QUANTIZATION_KEY = KEY_PREFIX + "quantization"
# No "entropy": quantize_static builds ONNX Runtime's entropy calibrator with 128 histogram bins for 128 quantized
# bins, so the KL search has nothing to clip and the ranges come out as MinMax's (measured identical here).
CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
ACTIVATION_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
QUANTIZED_OP_TYPES = ("Conv",)
# Histogram calibrators keep every calibrated activation of a chunk in memory (hundreds of MB per image at S=1024),
# so images are calibrated a few at a time and the histograms merged.
CALIBRATION_CHUNK = 4
# Synthetic calibration scenes: a typical 4:3 inspection frame, resized to S by the preprocessing like any image.
SYNTHETIC_SIZE = (480, 640)

CalibImages = Union[str, Path, Sequence[ImageSource], None]


# ------------------------------------------------------------------------------------------------ calibration data
def calibration_images(calib_images: CalibImages = None, num_calib: int = 32, seed: int = 0) -> list[ImageSource]:
    """The calibration set: up to ``num_calib`` images.

    Args:
        calib_images: a folder, glob or file (see :func:`powersam.io.list_images`), a sequence of images (paths,
            arrays, PIL images), or None for ``min(num_calib, 8)`` synthetic substation scenes.
        num_calib: how many to use; a larger set is subsampled evenly over its sorted order (so consecutive video
            frames do not crowd out the rest).
        seed: seed of the synthetic scenes.
    """
    if int(num_calib) < 1:
        raise ValueError(f"num_calib must be at least 1, got {num_calib}")
    num_calib = int(num_calib)
    if calib_images is None:
        return _synthetic_scenes(min(num_calib, 8), seed)
    if isinstance(calib_images, (str, Path)):
        found: Sequence[ImageSource] = list_images(calib_images)
        if not found:
            raise FileNotFoundError(f"no images found for calibration in {calib_images}")
    else:
        found = list(calib_images)
        if not found:
            raise ValueError("calib_images is an empty sequence; pass images, a folder/glob, or None (synthetic)")
    if len(found) <= num_calib:
        return list(found)
    picks = np.linspace(0, len(found) - 1, num_calib).round().astype(int)
    return [found[i] for i in picks]


def _synthetic_scenes(count: int, seed: int) -> list[np.ndarray]:
    from ..data.synth import render_scene  # imports the data package (and torch): only on this fallback

    logger.warning(
        "calibrating on %d synthetic substation scenes; images from the deployment domain calibrate better", count
    )
    rng = np.random.default_rng(seed)
    return [render_scene(rng, *SYNTHETIC_SIZE)[0] for _ in range(count)]


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds calibration images to a graph's inputs, one image per :meth:`get_next`, preprocessed as the runtime does.

    ``image`` is the 1×3×S×S normalised, zero-padded input; an integrated graph also gets ``input_size`` (int64 [2])
    and its exported ``score_thr`` / ``nms_iou`` / ``max_det`` defaults as 0-d tensors (the ``max_det`` argument
    replaces the last). Images are loaded lazily, so a large set does not sit in memory. Implements ONNX Runtime's
    reader protocol, including ``__len__`` and ``set_range`` for chunked calibration; :meth:`feeds` gives random
    access.
    """

    def __init__(self, images: Sequence[ImageSource], metadata: GraphMetadata, max_det: Optional[int] = None) -> None:
        if metadata.graph not in ("encoder", "integrated"):
            raise ValueError(f"only encoder and integrated graphs take images; this is a {metadata.graph} graph")
        if not images:
            raise ValueError("ImageCalibrationReader needs at least one image")
        if max_det is not None and int(max_det) < 0:
            raise ValueError(f"max_det must be >= 0, got {max_det}")
        self.images = list(images)
        self.metadata = metadata
        exported = metadata.max_det if metadata.max_det is not None else 100
        self.max_det = int(exported if max_det is None else max_det)
        self.set_range(0, len(self.images))

    def feeds(self, index: int) -> dict[str, np.ndarray]:
        """The graph inputs for image ``index``."""
        meta = self.metadata
        rgb = load_image(self.images[index])
        x, input_size = preprocess_image(rgb, meta.img_size, meta.pixel_mean, meta.pixel_std, meta.resize_mode)
        if meta.graph == "encoder":
            return {"image": x}
        return {
            **({} if meta.det_size is None else detector_feeds(rgb, int(meta.det_size), input_size)),
            "image": x,
            "input_size": np.asarray(input_size, dtype=np.int64),
            "score_thr": np.asarray(0.5 if meta.score_thr is None else meta.score_thr, dtype=np.float32),
            "nms_iou": np.asarray(0.65 if meta.nms_iou is None else meta.nms_iou, dtype=np.float32),
            "max_det": np.asarray(self.max_det, dtype=np.int64),
        }

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        if self._next >= self._end:
            return None
        self._next += 1
        return self.feeds(self._next - 1)

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        if not 0 <= start_index <= end_index <= len(self.images):
            raise ValueError(f"calibration range [{start_index}, {end_index}) is outside [0, {len(self.images)})")
        self._next, self._end = int(start_index), int(end_index)

    def rewind(self) -> None:
        self.set_range(0, len(self.images))


# ------------------------------------------------------------------------------------------------ node selection
def select_nodes_to_quantize(model: onnx.ModelProto, graph_kind: str) -> list[str]:
    """Names of the ``Conv`` nodes to quantise in an exported graph (see the module docstring for the rules).

    Raises ValueError for a decoder graph (kept in float), and for an integrated graph without a
    ``NonMaxSuppression`` node (not a PowerSAM integrated export).
    """
    nodes = list(model.graph.node)
    unnamed = [i for i, node in enumerate(nodes) if not node.name]
    if unnamed:
        raise ValueError(f"{len(unnamed)} node(s) have no name (first: #{unnamed[0]}); name them before quantising")
    if graph_kind == "decoder":
        raise ValueError("decoder graphs are kept in float32 (see powersam.deploy.quantize)")
    convs = [node.name for node in nodes if node.op_type in QUANTIZED_OP_TYPES]
    if graph_kind == "encoder":
        return convs
    if graph_kind != "integrated":
        raise ValueError(f"unknown graph kind {graph_kind!r}")
    tail = _float_tail(nodes)
    return [name for name in convs if name not in tail]


def _float_tail(nodes: Sequence[onnx.NodeProto]) -> set[str]:
    """NMS, every node it feeds, and the convolutions whose outputs reach it without passing another convolution."""
    selectors = nms_nodes(nodes)
    _, predictors = upstream_to(nodes, selectors, QUANTIZED_OP_TYPES)
    return descendants(nodes, selectors) | predictors


# ------------------------------------------------------------------------------------------------ quantisation
def quantize_onnx(
    src: Union[str, Path],
    dst: Union[str, Path],
    calib_images: CalibImages = None,
    num_calib: int = 32,
    method: str = "minmax",
    per_channel: bool = True,
    *,
    activation_type: Optional[str] = None,
    for_tensorrt: bool = False,
    reduce_range: Optional[bool] = None,
    seed: int = 0,
) -> Path:
    """Quantise one exported graph to INT8 (static, QDQ) and write it to ``dst``; returns ``dst``.

    Args:
        src: an encoder or integrated graph written by :func:`~powersam.deploy.onnx_export.export_onnx`. A decoder
            graph is copied unchanged (kept in float32, recorded in its metadata).
        dst: output ``.onnx`` path (may not be ``src``).
        calib_images: folder / glob / file / sequence of images, or None for synthetic scenes (see
            :func:`calibration_images`).
        num_calib: number of calibration images.
        method: activation range calibration, ``"minmax"`` or ``"percentile"`` (the 0.001th to 99.999th
            percentiles, ORT's default: clips rare outliers).
        per_channel: per-output-channel weight scales (recommended; per-tensor loses accuracy on depthwise convs).
        activation_type: ``"uint8"`` (U8S8, the default: the fast path of ONNX Runtime's CPU kernels) or
            ``"int8"`` (S8S8); see the module docstring.
        for_tensorrt: write the QDQ form TensorRT builds INT8 engines from (:mod:`powersam.deploy.tensorrt`): int8
            activations with symmetric ranges (zero point 0) and float32 convolution biases (TensorRT dequantizes
            only 8-bit and smaller types). Implies ``activation_type="int8"``.
        reduce_range: 7-bit weights, against the int16 saturation of U8S8 on x86 CPUs without VNNI. None (default):
            on when the graph has uint8 activations and this CPU has no VNNI (measured on an AVX2 EPYC: 8-bit
            weights gave an embedding cosine of 0.75 against FP32), so the graph is right for the machine that
            quantises it; the runtime warns when a graph made without it runs on a CPU without VNNI.
        seed: seed of the synthetic calibration scenes.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"no ONNX file at {src}")
    if src.resolve() == dst.resolve():
        raise ValueError(f"dst must differ from src ({src}); quantisation does not work in place")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {sorted(CALIBRATION_METHODS)}, got {method!r}")
    if activation_type is None:
        activation_type = "int8" if for_tensorrt else "uint8"
    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"activation_type must be one of {sorted(ACTIVATION_TYPES)}, got {activation_type!r}")
    if for_tensorrt and activation_type != "int8":
        raise ValueError("for_tensorrt needs activation_type='int8': TensorRT takes only zero-point-0 int8 activations")
    if reduce_range is None:
        reduce_range = activation_type == "uint8" and cpu_has_vnni() is False
    source = onnx.load(str(src), load_external_data=False)
    props = {p.key: p.value for p in source.metadata_props}
    metadata = GraphMetadata.from_props(props, source=str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    if metadata.graph == "decoder":
        _write_metadata(src, dst, props, "none (decoder graphs are kept in float32)")
        return dst

    images = calibration_images(calib_images, num_calib, seed)
    # Every calibrated tensor lies before NMS: one detection keeps the mask decoder's share of calibration small.
    reader = ImageCalibrationReader(images, metadata, max_det=1)
    del source
    # Past protobuf's 2 GiB (SAM ViT-H), ONNX Runtime's tools must keep the weights in external data files too.
    large = is_large_graph(src)
    with tempfile.TemporaryDirectory(prefix="powersam-quant-") as work:
        prepared = _pre_process(src, Path(work) / "prepared.onnx", large)
        fused = False
        if not for_tensorrt and not large:  # TensorRT parses standard ops only
            fused_path = fuse_gelu(prepared, Path(work) / "gelu.onnx")
            prepared, fused = fused_path, fused_path != prepared
        nodes = select_nodes_to_quantize(onnx.load(str(prepared), load_external_data=False), metadata.graph)
        tmp = Path(work) / "quantized.onnx"
        quantize_static(
            str(prepared),
            str(tmp),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            nodes_to_quantize=nodes,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=ACTIVATION_TYPES[activation_type],
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[method],
            use_external_data_format=large,
            extra_options={"CalibStridedMinMax": _chunk_size(len(reader)), "ActivationSymmetric": for_tensorrt,
                           "WeightSymmetric": True, "QuantizeBias": not for_tensorrt},
        )
        origin = "synthetic scenes" if calib_images is None else "images"
        tail = "" if metadata.graph == "encoder" else "; detection predictors, NMS and mask decoder in float32"
        record = (
            f"int8-qdq-static; weights int8{' (7-bit range)' if reduce_range else ''} "
            f"{'per-channel' if per_channel else 'per-tensor'} symmetric; activations "
            f"{activation_type} per-tensor {'symmetric' if for_tensorrt else 'asymmetric'}; "
            f"{'float' if for_tensorrt else 'int32'} biases; calibration {method} on {len(images)} {origin}; "
            f"{len(nodes)} Conv{tail}{'; GELU as one com.microsoft Gelu node' if fused else ''}"
        )
        _write_metadata(tmp, dst, props, record)
    logger.info("quantised %s → %s (%s)", src, dst, record)
    return dst


def _chunk_size(total: int) -> int:
    """Largest divisor of ``total`` not above CALIBRATION_CHUNK (ORT requires equal chunks)."""
    return max(d for d in range(1, min(CALIBRATION_CHUNK, total) + 1) if total % d == 0)


def _pre_process(src: Path, out: Path, large: bool = False) -> Path:
    """ONNX Runtime's recommended pre-processing (symbolic shape inference, graph optimisation); ``src`` if it fails.

    It folds the exporter's Identity-wrapped initializers, without which convolution biases are not initializers and
    those convolutions cannot become integer kernels. ORT's symbolic shape inference cannot follow the integrated
    graph (NMS's data-dependent shapes) nor the decoder; the tool then runs again without it (ONNX's own shape
    inference and the graph optimisation still run). Before that retry, half of the integrated graph's
    "quantised" convolutions ran as DequantizeLinear + float Conv (ORT profile, docs/speed_profile.md).
    """
    previous = os.getcwd()
    src, out = src.resolve(), out.resolve()  # before the chdir below: a relative path would resolve against it
    # When its symbolic shape inference gives up, the tool dumps a debug model (and its external data) into the
    # current directory; run it from the scratch folder so nothing lands in the user's.
    os.chdir(out.parent)
    try:
        for skip_symbolic_shape in (False, True):
            try:
                quant_pre_process(str(src), str(out), skip_symbolic_shape=skip_symbolic_shape,
                                  save_as_external_data=large, all_tensors_to_one_file=True)
                break
            except Exception as err:  # the tool raises bare Exceptions on graphs its symbolic inference cannot follow
                stage = "without" if skip_symbolic_shape else "with"
                logger.log(logging.WARNING if skip_symbolic_shape else logging.INFO,
                           "quantisation pre-processing %s symbolic shape inference failed (%s: %s)%s", stage,
                           type(err).__name__, err, "; quantising the graph as exported" if skip_symbolic_shape
                           else "; retrying without it")
        else:
            return src
    finally:
        os.chdir(previous)
    return out


def fuse_gelu(src: Path, dst: Path) -> Path:
    """Write ``src`` with each exported erf-GELU (``x·0.5·(1 + erf(x/√2))``: Div, Erf, Add, Mul, Mul) as one ONNX
    Runtime ``com.microsoft`` ``Gelu`` node to ``dst``; returns ``dst``, or ``src`` when it has none.

    ONNX Runtime fuses these itself when it opens a float graph, but not once quantisation has put a DequantizeLinear
    in front of them: the INT8 encoder then ran 18 GELUs as five element-wise passes each (102 against 71 ms for the
    INT8 encoder at S=512 on one thread, where the float one took 83-86; docs/speed_profile.md round ten). Fused
    before quantisation, the INT8 graph keeps the single kernel. Same function, float rounding apart.
    """
    from onnxruntime.transformers.fusion_gelu import FusionGelu
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    before = len(model.model.graph.node)
    FusionGelu(model).apply()
    if len(model.model.graph.node) == before:
        return src
    model.prune_graph()
    if not any(entry.domain == "com.microsoft" for entry in model.model.opset_import):
        model.model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    save_onnx(model.model, dst, check=False)
    return dst


def _write_metadata(path: Path, dst: Path, props: dict[str, str], record: str) -> None:
    """Write ``path``'s graph to ``dst`` with the source's metadata_props plus the quantisation record."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in {**props, QUANTIZATION_KEY: record}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    save_onnx(model, dst, check=False)


# ------------------------------------------------------------------------------------------------ exports and CLI
def quantized_path(path: Union[str, Path]) -> Path:
    """Where the INT8 twin of an exported graph goes: ``X.onnx`` → ``X.int8.onnx``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.int8{path.suffix or '.onnx'}")


def quantize_export(
    paths: Sequence[Union[str, Path]],
    calib_images: CalibImages = None,
    num_calib: int = 32,
    method: str = "minmax",
    *,
    decoder: bool = False,
    **options: Any,
) -> list[Path]:
    """Quantise what :func:`~powersam.deploy.onnx_export.export_onnx` wrote; returns the INT8 files.

    An integrated graph gives ``X.int8.onnx``. Of an interactive pair only the encoder is quantised
    (``encoder.int8.onnx``); its metadata still names the float decoder as its partner, so
    ``powersam.runtime.load("encoder.int8.onnx")`` opens the INT8 encoder with the float decoder. ``options`` go to
    :func:`quantize_onnx`.

    ``decoder=True`` also quantises the mask decoder's weight MatMuls dynamically
    (:func:`~powersam.deploy.quantize_decoder.quantize_decoder_matmuls`): inside ``X.int8.onnx`` for an integrated
    graph; for a pair it writes ``decoder.int8.onnx`` and makes it the INT8 encoder's partner.
    """
    from .quantize_decoder import quantize_decoder_matmuls

    kinds = {}
    for path in map(Path, paths):
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        kinds[path] = GraphMetadata.from_props(props, source=str(path))
    names = {path.name for path in kinds}
    written = []
    for path, meta in kinds.items():
        # With the decoder quantised too, the two INT8 halves of a pair name each other.
        partner = quantized_path(meta.partner).name if decoder and meta.partner in names else None
        if meta.graph == "decoder":
            if decoder:
                written.append(quantize_decoder_matmuls(path, quantized_path(path)))
                if partner is not None:
                    _set_partner(written[-1], partner)
            continue
        out = quantize_onnx(path, quantized_path(path), calib_images, num_calib, method, **options)
        if decoder and meta.graph == "integrated":
            with tempfile.TemporaryDirectory(prefix="powersam-quant-") as work:
                shutil.move(str(quantize_decoder_matmuls(out, Path(work) / out.name)), str(out))
        elif partner is not None:
            _set_partner(out, partner)
        written.append(out)
    return written


def _set_partner(path: Path, partner: str) -> None:
    """Rewrite the ``partner`` an interactive pair's graph names in its metadata (in place)."""
    model = onnx.load(str(path))
    for entry in model.metadata_props:
        if entry.key == KEY_PREFIX + "partner":
            entry.value = partner
    save_onnx(model, path, check=False)