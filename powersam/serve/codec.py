"""The wire format: query parameters and JSON prompts in (checked, with 4xx errors naming the field), results out.

Detection response (``/v1/detect``), columnar like :class:`~powersam.results.Results`::

    {"model": "powersam_s", "image_size": [H, W], "count": N,
     "boxes": [[x1, y1, x2, y2], ...], "labels": [0, ...], "names": ["JYZ", ...], "scores": [0.93, ...],
     "masks": [{"size": [H, W], "counts": "<COCO compressed RLE>"}, ...],
     "class_names": [...], "thresholds": {"conf": .., "iou": .., "max_det": ..}, "speed": {"preprocess": ms, ...}}

Segment prompts (``/v1/segment``, a JSON object): ``image_id``, ``points`` [[x, y], ...] with ``labels`` [1|0, ...],
``boxes`` [[x1, y1, x2, y2], ...], ``mask`` (``"previous"``, or an encoded low-res array), ``return_low_res``.
Low-res logits travel as ``{"shape": [N, 1, s, s], "dtype": "float16"|"float32", "data": "<base64>"}``.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..results import Results
from .limits import ApiError

__all__ = ["DetectParams", "Prompts", "decode_array", "encode_array", "parse_detect_params", "parse_prompts",
           "results_json"]

PROMPT_FIELDS = ("image_id", "points", "labels", "boxes", "mask", "return_low_res", "zoom")


def _invalid(field: str, message: str, code: str = "invalid_parameter", status: int = 422) -> ApiError:
    return ApiError(status, code, f"{field}: {message}", field)


# ---------------------------------------------------------------------------------------------------- /v1/detect
@dataclass
class DetectParams:
    conf: Optional[float] = None
    iou: Optional[float] = None
    max_det: Optional[int] = None
    classes: Optional[list[str]] = None
    format: str = "json"
    zoom: Optional[float] = None  # decode each detected box's mask on a crop of this many box sides (docs/zoom.md)


def _number(field: str, text: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _invalid(field, f"must be a number in [{low:g}, {high:g}]; got {text!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise _invalid(field, f"must lie in [{low:g}, {high:g}]; got {text}")
    return value


def parse_detect_params(query: Mapping[str, str], class_names: Sequence[str], max_det_limit: int = 1000) -> DetectParams:
    """``conf``, ``iou`` in [0, 1], ``max_det`` in [0, ``max_det_limit``], ``classes`` (comma list of known names),
    ``format`` (``json`` or ``png``), ``zoom`` in [1, 16]; anything else is a 422 naming the unknown parameter."""
    allowed = ("conf", "iou", "max_det", "classes", "format", "zoom")
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise _invalid(unknown[0], f"unknown query parameter (allowed: {', '.join(allowed)})")
    params = DetectParams()
    if "conf" in query:
        params.conf = _number("conf", query["conf"], 0.0, 1.0)
    if "iou" in query:
        params.iou = _number("iou", query["iou"], 0.0, 1.0)
    if "zoom" in query:
        params.zoom = _number("zoom", query["zoom"], 1.0, 16.0)
    if "max_det" in query:
        text = query["max_det"]
        if not text.strip().isdigit() or not 0 <= int(text) <= max_det_limit:
            raise _invalid("max_det", f"must be an integer in [0, {max_det_limit}]; got {text!r}")
        params.max_det = int(text)
    if "classes" in query:
        names = [c.strip() for c in query["classes"].split(",") if c.strip()]
        unknown_classes = [c for c in names if c not in class_names]
        if not names or unknown_classes:
            raise _invalid("classes", f"unknown class name(s) {unknown_classes or [query['classes']]}; this model "
                           f"knows {list(class_names)}")
        params.classes = names
    fmt = query.get("format", "json")
    if fmt not in ("json", "png"):
        raise _invalid("format", f"must be 'json' or 'png'; got {fmt!r}")
    params.format = fmt
    return params


def results_json(results: Results) -> dict[str, Any]:
    """Columnar JSON of :class:`Results` with COCO compressed-RLE masks (``counts`` a string), encoded one mask at a
    time (from the run lengths of compact results: no full-resolution plane)."""
    coco = results.to_coco(image_id=0)
    return {
        "image_size": list(results.orig_shape),
        "count": len(results),
        "boxes": [[round(float(v), 2) for v in box] for box in results.boxes.tolist()],
        "labels": [int(v) for v in results.labels.tolist()],
        "names": results.names(),
        "scores": [round(float(v), 5) for v in results.scores.tolist()],
        "masks": [record["segmentation"] for record in coco] if results.has_masks else None,
        "speed": {k: round(float(v), 3) for k, v in results.speed.items()},
    }


# ---------------------------------------------------------------------------------------------------- arrays
def encode_array(array: np.ndarray, dtype: str = "float16") -> dict[str, Any]:
    """A float array as ``{"shape", "dtype", "data": base64}`` (float16 halves the size of mask logits)."""
    data = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"shape": list(data.shape), "dtype": dtype, "data": base64.b64encode(data.tobytes()).decode("ascii")}


def decode_array(value: Any, field: str) -> np.ndarray:
    """Inverse of :func:`encode_array` → float32, with 422 naming what is wrong."""
    if not isinstance(value, dict) or set(value) != {"shape", "dtype", "data"}:
        raise _invalid(field, 'must be "previous" or {"shape": [...], "dtype": "float16"|"float32", "data": base64}',
                       "invalid_prompt")
    dtype, shape = value["dtype"], value["shape"]
    if dtype not in ("float16", "float32"):
        raise _invalid(f"{field}.dtype", f"must be 'float16' or 'float32'; got {dtype!r}", "invalid_prompt")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= 4096 for s in shape)):
        raise _invalid(f"{field}.shape", f"must be a list of 1–4 positive integers; got {shape!r}", "invalid_prompt")
    try:
        raw = base64.b64decode(str(value["data"]), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"{field}.data", "is not valid base64", "invalid_prompt") from None
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(raw) != expected:
        raise _invalid(f"{field}.data", f"holds {len(raw)} bytes; shape {shape} in {dtype} needs {expected}",
                       "invalid_prompt")
    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(np.float32)
    if not np.isfinite(array).all():
        raise _invalid(field, "contains NaN or infinite values", "invalid_prompt")
    return array


# ---------------------------------------------------------------------------------------------------- /v1/segment
@dataclass
class Prompts:
    """Checked prompts in original-image pixels (arrays as the predictor takes them)."""

    image_id: Optional[str] = None
    points: Optional[np.ndarray] = None  # K×2
    labels: Optional[np.ndarray] = None  # K
    boxes: Optional[np.ndarray] = None  # N×4
    mask: Any = None  # None, "previous" or a float32 array
    return_low_res: bool = False
    zoom: Optional[float] = None  # decode on a crop of this many box sides around each prompt (docs/zoom.md)

    @property
    def empty(self) -> bool:
        return self.points is None and self.boxes is None and self.mask is None


def parse_prompts(text: Optional[bytes | str], max_prompts: int) -> Prompts:
    """The JSON prompt object → :class:`Prompts` (no image-size checks yet: see :func:`check_prompts_in_image`)."""
    if text is None or (isinstance(text, (bytes, str)) and not text.strip()):
        return Prompts()
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, "bad_json", f"prompts are not valid JSON: {err}", "prompts") from None
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_prompt", f"prompts must be a JSON object; got {type(body).__name__}", "prompts")
    unknown = sorted(set(body) - set(PROMPT_FIELDS))
    if unknown:
        raise _invalid(unknown[0], f"unknown prompt field (allowed: {', '.join(PROMPT_FIELDS)})", "invalid_prompt")
    prompts = Prompts()
    image_id = body.get("image_id")
    if image_id is not None and (not isinstance(image_id, str) or not 0 < len(image_id) <= 64):
        raise _invalid("image_id", f"must be the id string a previous call returned; got {image_id!r}", "invalid_prompt")
    prompts.image_id = image_id
    prompts.points = _coords(body.get("points"), "points", 2, max_prompts)
    if (body.get("labels") is None) != (prompts.points is None):
        raise _invalid("labels", "points and labels must be given together, one label per point", "invalid_prompt")
    if prompts.points is not None:
        labels = body["labels"]
        if not isinstance(labels, list) or len(labels) != len(prompts.points):
            raise _invalid("labels", f"must be a list of {len(prompts.points)} labels (one per point)", "invalid_prompt")
        for i, label in enumerate(labels):
            if label not in (0, 1) or isinstance(label, bool):
                raise _invalid(f"labels[{i}]", f"must be 1 (foreground) or 0 (background); got {label!r}",
                               "invalid_prompt")
        prompts.labels = np.asarray(labels, dtype=np.int64)
    prompts.boxes = _coords(body.get("boxes"), "boxes", 4, max_prompts)
    if prompts.boxes is not None:
        for i, (x1, y1, x2, y2) in enumerate(prompts.boxes.tolist()):
            if x2 <= x1 or y2 <= y1:
                raise _invalid(f"boxes[{i}]", f"must be [x1, y1, x2, y2] with x1 < x2 and y1 < y2; got "
                               f"{[x1, y1, x2, y2]}", "invalid_prompt")
    mask = body.get("mask")
    prompts.mask = mask if mask in (None, "previous") else decode_array(mask, "mask")
    flag = body.get("return_low_res", False)
    if not isinstance(flag, bool):
        raise _invalid("return_low_res", f"must be true or false; got {flag!r}", "invalid_prompt")
    prompts.return_low_res = flag
    zoom = body.get("zoom")
    if zoom is not None:
        if isinstance(zoom, bool) or not isinstance(zoom, (int, float)) or not math.isfinite(zoom) or not 1 <= zoom <= 16:
            raise _invalid("zoom", f"must be a number in [1, 16] (crop side / box side); got {zoom!r}", "invalid_prompt")
        prompts.zoom = float(zoom)
        # zoomed logits live in each prompt's own window: they cannot be fed back or returned as the image's
        for name, given in (("mask", prompts.mask is not None), ("return_low_res", flag)):
            if given:
                raise _invalid(name, "cannot be combined with zoom (zoomed low-res logits are in each prompt's own "
                               "crop, not the image's frame)", "invalid_prompt")
    return prompts


def _coords(value: Any, field: str, width: int, max_count: int) -> Optional[np.ndarray]:
    if value is None:
        return None
    shape = "[x, y]" if width == 2 else "[x1, y1, x2, y2]"
    if not isinstance(value, list) or not value:
        raise _invalid(field, f"must be a non-empty list of {shape}", "invalid_prompt")
    if len(value) > max_count:
        raise _invalid(field, f"has {len(value)} entries; at most {max_count} per request (--max-prompts)",
                       "invalid_prompt")
    for i, item in enumerate(value):
        if (not isinstance(item, list) or len(item) != width
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in item)):
            raise _invalid(f"{field}[{i}]", f"must be {shape} with finite numbers; got {item!r}", "invalid_prompt")
    return np.asarray(value, dtype=np.float64)


def check_prompts_in_image(prompts: Prompts, image_size: Sequence[int]) -> None:
    """422 when a point or box corner lies outside the H×W image."""
    height, width = image_size
    for field, array in (("points", prompts.points), ("boxes", prompts.boxes)):
        if array is None:
            continue
        xy = array.reshape(len(array), -1, 2)
        outside = (xy[..., 0] < 0) | (xy[..., 0] > width) | (xy[..., 1] < 0) | (xy[..., 1] > height)
        if outside.any():
            i = int(np.flatnonzero(outside.any(axis=1))[0])
            raise _invalid(f"{field}[{i}]", f"{array[i].tolist()} lies outside the {width}×{height} image "
                           "(x in [0, width], y in [0, height])", "out_of_range")
