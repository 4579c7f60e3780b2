"""Building TensorRT engines from exported graphs, and the ``powersam export --format tensorrt`` back end."""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from ...runtime.metadata import KEY_PREFIX, GraphMetadata
from .availability import ENGINE_SUFFIX, engine_metadata_path, require_tensorrt

logger = logging.getLogger(__name__)

__all__ = ["DIMENSION_RANGES", "PRECISIONS", "build_engine", "engine_props", "prepare_graph"]

PathLike = Union[str, Path]
Shapes = Mapping[str, Sequence[int]]
PRECISIONS = ("fp32", "fp16", "int8")
# Default optimisation-profile ranges (min, opt, max) of the decoder's dynamic dimensions, by the names the exporter
# gives them; SamPredictor-style callers decode up to 64 prompts per call.
DIMENSION_RANGES = {"num_prompts": (1, 1, 64), "num_points": (1, 2, 16), "num_mask_inputs": (1, 1, 64)}


def _read_props(onnx_path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}


def prepare_graph(onnx_path: PathLike, work_dir: PathLike, precision: str = "fp16", calib_images: Any = None, *,
                  num_calib: int = 32, calib_method: str = "minmax") -> tuple[Path, str]:
    """The graph a strongly typed engine of ``precision`` is built from: ``(path, precision it carries)``.

    ``fp32``: the export itself. ``fp16``: an FP16 copy (:func:`powersam.deploy.precision.to_float16`). ``int8``: a
    copy whose convolutions are INT8 QDQ with symmetric activations, calibrated on ``calib_images`` (folder / glob /
    images; None: synthetic scenes) as in :func:`powersam.deploy.quantize.quantize_onnx`, the rest float32. A
    decoder graph is not INT8-quantised (it takes prompts, not images): ``int8`` gives it FP16, with a warning.
    Copies are written into ``work_dir``.
    """
    onnx_path, work_dir = Path(onnx_path), Path(work_dir)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    metadata = GraphMetadata.from_props(_read_props(onnx_path), source=str(onnx_path))
    if precision == "int8" and metadata.graph == "decoder":
        logger.warning("%s: decoder graphs are not INT8-quantised (prompts, not images); building it FP16",
                       onnx_path.name)
        precision = "fp16"
    if precision == "fp32":
        return onnx_path, precision
    target = work_dir / f"{onnx_path.stem}.{precision}.onnx"
    if precision == "fp16":
        from ..precision import to_float16

        return to_float16(onnx_path, target), precision
    from ..quantize import quantize_onnx

    quantize_onnx(onnx_path, target, calib_images, num_calib, calib_method, for_tensorrt=True)
    return target, precision


def build_engine(
    onnx_path: PathLike,
    engine_path: PathLike,
    precision: str = "fp16",
    calib_images: Any = None,
    workspace_gb: float = 4.0,
    min_shapes: Optional[Shapes] = None,
    opt_shapes: Optional[Shapes] = None,
    max_shapes: Optional[Shapes] = None,
    *,
    num_calib: int = 32,
    calib_method: str = "minmax",
) -> Path:
    """Build a serialized TensorRT engine from an exported float graph; returns ``engine_path``.

    Args:
        onnx_path: a graph written by :func:`~powersam.deploy.onnx_export.export_onnx` (float32; not one of ONNX
            Runtime's INT8 files, whose asymmetric uint8 activations TensorRT rejects).
        engine_path: output file (``.engine``); its metadata goes to :func:`engine_metadata_path`.
        precision: ``"fp16"`` (default), ``"fp32"`` or ``"int8"``; see :func:`prepare_graph`.
        calib_images / num_calib / calib_method: the INT8 calibration set and method.
        workspace_gb: builder workspace memory limit.
        min_shapes / opt_shapes / max_shapes: ``{input name: shape}`` of the optimisation profile for inputs with
            dynamic dimensions (defaults from :data:`DIMENSION_RANGES`); for inputs TensorRT treats as shape tensors
            (the integrated graph's ``max_det``) the *values* instead (default 1 / exported / exported max_det).
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX file at {onnx_path}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if workspace_gb <= 0:
        raise ValueError(f"workspace_gb must be positive, got {workspace_gb}")
    props = _read_props(onnx_path)
    metadata = GraphMetadata.from_props(props, source=str(onnx_path))
    if props.get(KEY_PREFIX + "quantization", "").startswith("int8"):
        raise ValueError(f"{onnx_path.name} is an ONNX Runtime INT8 graph; build engines from the float export "
                         "(precision='int8' quantises it for TensorRT)")
    trt, _ = require_tensorrt()  # before any conversion: without TensorRT or a GPU there is nothing to build

    with tempfile.TemporaryDirectory(prefix="powersam-trt-") as work:
        graph, built = prepare_graph(onnx_path, work, precision, calib_images, num_calib=num_calib,
                                     calib_method=calib_method)
        trt_logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(trt_logger)
        # The only mode of TensorRT 11 (where the flag is ignored); on 10 it makes the graph's types binding.
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, trt_logger)
        if not parser.parse_from_file(str(graph)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT's ONNX parser rejected {graph.name} (from {onnx_path.name}): {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
        profile = builder.create_optimization_profile()
        _set_profile(profile, network, metadata, min_shapes or {}, opt_shapes or {}, max_shapes or {})
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)
    sidecar = {"metadata": engine_props(props), "tensorrt_version": str(trt.__version__), "precision": built,
               "source": onnx_path.name}
    engine_metadata_path(engine_path).write_text(json.dumps(sidecar, indent=2))
    logger.info("built %s engine %s from %s", built, engine_path, onnx_path)
    return engine_path


def engine_props(props: Mapping[str, str]) -> dict[str, str]:
    """An ONNX graph's metadata_props as its engine records them: a pair's partner becomes the partner's engine
    (built beside it under the same stem, as :func:`tensorrt_runner` does)."""
    props = dict(props)
    partner = props.get(KEY_PREFIX + "partner")
    if partner:
        props[KEY_PREFIX + "partner"] = Path(partner).with_suffix(ENGINE_SUFFIX).name
    return props


def _set_profile(profile, network, metadata: GraphMetadata, min_shapes: Shapes, opt_shapes: Shapes,
                 max_shapes: Shapes) -> None:
    """Ranges for every input with a dynamic dimension, and values for shape-tensor inputs."""
    given = set(min_shapes) | set(opt_shapes) | set(max_shapes)
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    unknown = given - names
    if unknown:
        raise ValueError(f"profile shapes name unknown inputs {sorted(unknown)}; the inputs are {sorted(names)}")
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        name, dims = tensor.name, list(tensor.shape)
        if tensor.is_shape_tensor:  # TensorRT wants the values such an input may take, not its shape
            default = int(metadata.max_det or 100)
            fallback = ([1], [default], [default]) if name == "max_det" else (None, None, None)
            values = [shapes.get(name, value) for shapes, value in zip((min_shapes, opt_shapes, max_shapes), fallback)]
            if any(v is None for v in values):
                raise ValueError(f"input {name!r} is a shape tensor: give its values in min/opt/max_shapes")
            profile.set_shape_input(name, *[[int(x) for x in v] for v in values])
        elif any(d < 0 for d in dims):
            ranges = []
            for which, shapes in enumerate((min_shapes, opt_shapes, max_shapes)):
                if name in shapes:
                    ranges.append(tuple(int(d) for d in shapes[name]))
                    continue
                ranges.append(tuple(d if d >= 0 else _dimension_default(name, axis, which)
                                    for axis, d in enumerate(dims)))
            profile.set_shape(name, *ranges)


def _dimension_default(input_name: str, axis: int, which: int) -> int:
    """Default min (0) / opt (1) / max (2) of a dynamic dimension: by the decoder's dimension names."""
    by_input = {("point_coords", 0): "num_prompts", ("point_labels", 0): "num_prompts",
                ("point_coords", 1): "num_points", ("point_labels", 1): "num_points",
                ("mask_input", 0): "num_mask_inputs"}
    key = by_input.get((input_name, axis))
    if key is None:
        raise ValueError(f"input {input_name!r} has a dynamic dimension {axis} without a default range; "
                         "give it in min_shapes / opt_shapes / max_shapes")
    return DIMENSION_RANGES[key][which]
