"""The model side of ``powersam predict``: load a zoo model or an exported ONNX model (through the torch-free
runtime), and turn it into one ``segment(rgb) -> Results`` function, by detection or by the given prompts, so the
run loop never needs to know which kind of model or mode it drives."""
from __future__ import annotations

import importlib
import inspect
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ...inference.prompts import PROMPT_CLASS_NAMES, prompt_results
from ...results import Results

__all__ = ["PROMPT_CLASS_NAMES", "SegmentFn", "can_detect", "is_onnx", "load_model", "make_segment_fn"]

SegmentFn = Callable[[np.ndarray], Results]


# ---------------------------------------------------------------------------------------------------- model
def is_onnx(model: Optional[Union[str, Path]]) -> bool:
    """An exported model: a ``.onnx`` file or TensorRT ``.engine``, or a folder with an interactive
    ``encoder.onnx`` + ``decoder.onnx`` (or ``.engine``) pair."""
    if model is None:
        return False
    name = str(model).lower()
    return name.endswith((".onnx", ".engine")) or any((Path(model) / f"encoder{ext}").is_file()
                                                      for ext in (".onnx", ".engine"))


def _is_engine(path: Path) -> bool:
    return path.suffix.lower() == ".engine" or (path / "encoder.engine").is_file()


def load_model(
    model: Optional[str],
    checkpoint: Optional[Union[str, Path]] = None,
    img_size: Optional[int] = None,
    device: Optional[str] = None,
) -> Any:
    """A zoo model (PyTorch, eval mode, on ``device``; default cuda if available) or, for an exported model (see
    :func:`is_onnx`), the torch-free runtime's ``OnnxPowerSAM`` / ``OnnxSamPredictor`` (torch is never imported);
    ``device`` then names the execution provider (``cpu`` default, ``cuda``, ``tensorrt``). A TensorRT ``.engine``
    (with its ``.json`` sidecar) runs through :func:`powersam.deploy.tensorrt.load_engine`."""
    if is_onnx(model):
        if checkpoint is not None or img_size is not None:
            raise ValueError(
                "--checkpoint and --img-size apply to PyTorch models; an ONNX file has its weights and size built in"
            )
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"exported model not found: '{path}'")
        if _is_engine(path):
            from ..tensorrt import load_engine  # TensorRT runs on the GPU it was built for: no provider choice

            return load_engine(path)
        runtime = importlib.import_module("powersam.runtime")
        providers = None if device is None else runtime.session.device_provider(device)  # cuda:1 → device_id 1
        return runtime.load(path, providers=providers)
    if model is None and checkpoint is None:
        raise ValueError("give --model (a zoo name or a .onnx file), --checkpoint, or both")
    if checkpoint is not None and str(checkpoint).lower().endswith((".onnx", ".engine")):
        raise ValueError(f"{checkpoint} is an exported graph: pass it as --model, not --checkpoint (PyTorch weights)")
    from ...models.zoo import build_model
    from ...utils.device import torch_device

    target = torch_device(device)  # checked before the (possibly slow) build
    if img_size is not None and (int(img_size) < 16 or int(img_size) % 16):
        raise ValueError(f"--img-size must be a positive multiple of 16 (the encoder's stride); got {img_size}")
    kwargs = {} if img_size is None else {"img_size": int(img_size)}
    net = build_model(model, checkpoint=checkpoint, **kwargs)
    if img_size is not None and int(getattr(net, "img_size", img_size)) != int(img_size):
        raise ValueError(f"{checkpoint} was trained at img_size {net.img_size}, which it keeps; --img-size {img_size} "
                         "cannot apply (drop it, or export/convert the model at that size)")
    if checkpoint is None:
        print(f"warning: no --checkpoint given; {net.model_name} runs with random weights", file=sys.stderr)
    return net.to(target).eval()


def can_detect(model: Any) -> bool:
    """Whether ``model`` finds its own boxes: its ``can_detect`` (a ``powersam.Model`` or ``powersam.client.Client``),
    else a ``predict`` and ``class_names``, and not an interactive predictor."""
    if isinstance(getattr(model, "can_detect", None), bool):
        return model.can_detect
    return (
        callable(getattr(model, "predict", None))
        and getattr(model, "class_names", None) is not None
        and not callable(getattr(model, "set_image", None))
    )


def _prompt_predictor(model: Any) -> Any:
    if callable(getattr(model, "set_image", None)) and callable(getattr(model, "predict_batch", None)):
        return model  # already a predictor (e.g. the ONNX runtime's OnnxSamPredictor)
    if hasattr(model, "prompt_encoder") and hasattr(model, "mask_decoder"):
        from ...predictor import SamPredictor

        return SamPredictor(model)
    raise ValueError(f"{type(model).__name__} cannot be prompted with --boxes/--points: it has no prompt decoder")


def _segment_prompts(
    predictor: Any,
    boxes: Optional[np.ndarray],
    points: Optional[np.ndarray],
    labels: Optional[np.ndarray],
    rgb: np.ndarray,
) -> Results:
    predictor.set_image(rgb)
    height, width = rgb.shape[:2]
    n = 1 if boxes is None else len(boxes)
    prompts: dict[str, np.ndarray] = {}
    if boxes is not None:
        prompts["boxes"] = boxes
    if points is not None:  # the same clicks in every prompt: N×K×2 and N×K
        prompts["point_coords"] = np.repeat(points[None], n, axis=0)
        prompts["point_labels"] = np.repeat(labels[None], n, axis=0)
    if callable(getattr(predictor, "predict_compact", None)):  # run lengths: no N full-resolution planes
        masks, scores, _ = predictor.predict_compact(**prompts)
    else:
        masks, scores, _ = predictor.predict_batch(**prompts)
        masks = np.asarray(masks)[:, 0]
    return prompt_results(masks, np.asarray(scores)[:, 0], boxes, points, (height, width))


def make_segment_fn(
    model: Any,
    boxes: Optional[np.ndarray] = None,
    points: Optional[np.ndarray] = None,
    point_labels: Optional[np.ndarray] = None,
    conf: Optional[float] = None,
    iou: Optional[float] = None,
    max_det: Optional[int] = None,
    classes: Optional[Sequence[str]] = None,
    min_side: Optional[int] = None,
    zoom: Optional[float] = None,
) -> tuple[SegmentFn, str]:
    """``(segment(H×W×3 uint8 RGB) -> Results, mode)`` with mode ``"detect"`` or ``"prompt"`` (see the module doc).
    ``min_side`` goes to the detector's ``predict`` (None: its default); ``zoom`` decodes each box prompt on a crop
    of that many box sides around it (:mod:`powersam.inference.zoom`)."""
    if (points is None) != (point_labels is None):
        raise ValueError("points and point_labels must be given together")
    if zoom is not None:
        from ...inference.zoom import check_context

        check_context(zoom, "--zoom")
        if boxes is None and points is not None:
            raise ValueError("--zoom crops around boxes: give --boxes (or detect, without prompts)")
    if boxes is not None or points is not None:
        if classes or min_side is not None:
            raise ValueError("--classes and --min-side apply to detection; they cannot be combined with "
                             "--boxes/--points")
        if getattr(model, "can_segment", None) is True and callable(getattr(model, "segment", None)):
            # a powersam.Model or a server (powersam.client.Client): its own segment() takes the same prompts
            if zoom is not None and "zoom" not in inspect.signature(model.segment).parameters:
                raise ValueError(f"--zoom runs on a local model; {type(model).__name__}.segment takes no zoom "
                                 "(e.g. --server)")
            return partial(_segment_with, model, boxes, points, point_labels, zoom), "prompt"
        predictor = _prompt_predictor(model)
        if zoom is not None:
            from ...inference.zoom import ZoomPredictor

            predictor = ZoomPredictor(predictor, context=zoom)
        return partial(_segment_prompts, predictor, boxes, points, point_labels), "prompt"
    if not can_detect(model):
        name = getattr(model, "model_name", type(model).__name__)
        raise ValueError(f"model {name!r} has no detector (interactive SAM): give prompts with --boxes and/or --points")
    if classes:
        unknown = [c for c in classes if c not in model.class_names]
        if unknown:
            raise ValueError(f"unknown class name(s) {unknown}; this model knows {list(model.class_names)}")
    options = {} if min_side is None else {"min_side": int(min_side)}
    if zoom is not None:
        if "zoom" not in inspect.signature(model.predict).parameters and hasattr(model, "prompt_encoder"):
            from ...loading import load  # a PyTorch module: the Model object around it re-decodes on crops

            model = load(model)
        if "zoom" not in inspect.signature(model.predict).parameters:
            raise ValueError(f"--zoom needs a local model that detects and segments; {type(model).__name__}.predict "
                             "takes no zoom (e.g. --server)")
        options["zoom"] = zoom
    return partial(_detect, model, conf, iou, max_det, list(classes) if classes else None, options), "detect"


def _segment_with(model: Any, boxes: Optional[np.ndarray], points: Optional[np.ndarray],
                  labels: Optional[np.ndarray], zoom: Optional[float], rgb: np.ndarray) -> Results:
    options = {} if zoom is None else {"zoom": zoom}
    return model.segment(rgb, boxes=boxes, points=points, labels=labels, **options)


def _detect(model: Any, conf: Optional[float], iou: Optional[float], max_det: Optional[int],
            classes: Optional[list[str]], options: dict, rgb: np.ndarray) -> Results:
    return model.predict(rgb, conf=conf, iou=iou, max_det=max_det, classes=classes, **options)

