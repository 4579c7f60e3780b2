"""COCO detection and instance-mask AP of detect-and-segment models (integrated or decoupled PowerSAM).

Each image is run through ``model.predict`` with a low score threshold, the results are converted with
:meth:`Results.to_coco` and scored by ``pycocotools``' ``COCOeval`` for ``bbox`` and, when the dataset has masks,
``segm``. The ground truth handed to COCOeval is built from the very samples the model saw (same images, same
pixel size), and the evaluation is restricted to those image ids.

An evaluation scores what the dataset holds: images of any size are detected on (``min_side=0``), where
``predict`` on its own refuses images under 16 px (``ImageTooSmall``); a dataset image refused would drop its
ground truth from the score.
"""
from __future__ import annotations

import contextlib
import inspect
import io
from typing import Any, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from powersam.eval.miou import eval_mode, image_id_of, load_sample

IOU_TYPES = ("bbox", "segm")
# Order of COCOeval.stats for the default parameters (maxDets 1, 10, 100).
STAT_NAMES = ("AP", "AP50", "AP75", "AP_s", "AP_m", "AP_l", "AR1", "AR10", "AR100", "AR_s", "AR_m", "AR_l")
REPORTED_STATS = STAT_NAMES[:9]


def _quiet(verbose: bool):
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def _metric(value: float) -> Optional[float]:
    """COCOeval's −1 ("no ground truth in this range") becomes None."""
    return None if value < 0 else float(value)


def _per_category(evaluator: COCOeval) -> dict[int, dict[str, Optional[float]]]:
    """AP, AP50 and AP75 per category (all areas, 100 detections) from COCOeval's precision array."""
    precision = evaluator.eval["precision"]  # T×R×K×A×M: IoU thresholds, recall points, categories, areas, maxDets
    iou_thrs = evaluator.params.iouThrs
    thresholds = (("AP", slice(None)), ("AP50", np.isclose(iou_thrs, 0.5)), ("AP75", np.isclose(iou_thrs, 0.75)))
    out: dict[int, dict[str, Optional[float]]] = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = {}
        for name, thr_rows in thresholds:
            p = precision[thr_rows, :, k, 0, -1]
            p = p[p > -1]
            values[name] = float(p.mean()) if p.size else None
        out[int(cat_id)] = values
    return out


def _results_for(results: list[dict], iou_type: str) -> list[dict]:
    """Copies holding only the geometry ``iou_type`` scores, so ``loadRes`` takes detection areas from it (with a
    bbox present it would use the box area even for mask evaluation). Box evaluation also accepts mask-only
    results (``loadRes`` derives their boxes)."""
    has_box = [("bbox" in r) for r in results]
    has_mask = [("segmentation" in r) for r in results]
    if iou_type == "segm":
        if not all(has_mask):
            raise ValueError(f"{has_mask.count(False)} of {len(results)} results lack 'segmentation', needed for segm")
        return [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    if all(has_box):
        return [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    if not any(has_box) and all(has_mask):
        return [dict(r) for r in results]
    raise ValueError("for bbox evaluation every result needs a 'bbox' (or every result a 'segmentation')")


def evaluate_detections_from_results(
    coco_gt: COCO,
    results: list[dict],
    iou_type: str,
    img_ids: Optional[Sequence[int]] = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Score COCO-format detections against ``coco_gt`` with COCOeval.

    Args:
        coco_gt: the ground truth (``COCO`` object; build one from a dict with :func:`coco_from_dict`).
        results: detection dicts (``image_id``, ``category_id``, ``score``, ``bbox`` xywh and/or ``segmentation``).
        iou_type: ``"bbox"`` or ``"segm"``.
        img_ids: evaluate only these images (default: every image of ``coco_gt``).
        verbose: let pycocotools print its progress and summary table.

    Returns:
        ``{"AP", "AP50", "AP75", "AP_s", "AP_m", "AP_l", "AR1", "AR10", "AR100"}`` in 0–1 (None where COCOeval
        reports −1, i.e. no ground truth in that range) plus ``"per_category"``: ``{category_id: {"AP", "AP50",
        "AP75"}}``. No detections at all gives 0 wherever there is ground truth.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}; got {iou_type!r}")
    known = set(coco_gt.getImgIds())
    img_ids = sorted(known) if img_ids is None else sorted(int(i) for i in img_ids)
    if set(img_ids) - known:
        raise ValueError(f"img_ids not in the ground truth: {sorted(set(img_ids) - known)[:10]}")
    stray = {r.get("image_id") for r in results} - known
    if stray:
        raise ValueError(f"results refer to image ids missing from the ground truth: {sorted(stray, key=str)[:10]}")
    with _quiet(verbose):
        if results:
            coco_dt = coco_gt.loadRes(_results_for(results, iou_type))
        else:  # loadRes cannot take an empty list; an empty result set scores 0 wherever GT exists
            coco_dt = coco_from_dict({"images": coco_gt.dataset.get("images", []), "annotations": [],
                                      "categories": coco_gt.dataset.get("categories", [])})
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = img_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics: dict[str, Any] = {name: _metric(v) for name, v in zip(STAT_NAMES, evaluator.stats) if name in REPORTED_STATS}
    metrics["per_category"] = _per_category(evaluator)
    return metrics


def coco_from_dict(data: dict) -> COCO:
    """A pycocotools ``COCO`` built from an in-memory dict (no file, no printing)."""
    coco = COCO()
    coco.dataset = data
    with _quiet(False):
        coco.createIndex()
    return coco


def _category_mapping(model_names: Sequence[str], dataset: Any) -> list[int]:
    """COCO category id for each model class index; the class name sets must be equal."""
    names, ids = list(dataset.class_names), list(dataset.category_ids)
    missing, extra = sorted(set(names) - set(model_names)), sorted(set(model_names) - set(names))
    if missing or extra or len(set(model_names)) != len(model_names):
        raise ValueError(
            f"the model's classes {list(model_names)} do not match the dataset's {names}"
            + (f"; missing from the model: {missing}" if missing else "")
            + (f"; unknown to the dataset: {extra}" if extra else "")
        )
    return [ids[names.index(name)] for name in model_names]


def _encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _gt_annotations(image_id: int, boxes: np.ndarray, labels: np.ndarray, masks: Optional[np.ndarray],
                    category_ids: Sequence[int], crowd: list[dict], first_id: int) -> list[dict]:
    """COCO ground-truth records of one image: its N instances (boxes xyxy → xywh; area = mask area, or box
    area when ``masks`` is None) followed by its crowd regions."""
    records = []
    for i, (box, label) in enumerate(zip(np.asarray(boxes, np.float64), np.asarray(labels))):
        x1, y1, x2, y2 = box.tolist()
        record = {"id": first_id + i, "image_id": int(image_id), "category_id": int(category_ids[int(label)]),
                  "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0, "area": (x2 - x1) * (y2 - y1)}
        if masks is not None:
            record["segmentation"] = _encode(masks[i])
            record["area"] = float(np.count_nonzero(masks[i]))
        records.append(record)
    for region in crowd:
        records.append({**region, "id": first_id + len(records), "image_id": int(image_id)})
    return records


def _crowd_regions(dataset: Any, image_ids: set[int], with_masks: bool) -> dict[int, list[dict]]:
    """``iscrowd`` annotations per image id, read from the dataset's JSON (``Sample`` keeps no crowd classes).

    Crowd regions make COCOeval ignore detections on them, as in the standard COCO protocol."""
    path = getattr(dataset, "annotation_file", None)
    if path is None or not hasattr(dataset, "cat_id_to_label"):
        return {}
    from powersam.data.coco import image_record_size, inspect_annotation, load_coco_json

    data = load_coco_json(path)
    sizes = {img["id"]: image_record_size(img)[0] for img in data["images"]
             if isinstance(img, dict) and img.get("id") in image_ids}
    out: dict[int, list[dict]] = {}
    for ann in data.get("annotations", []):
        if not isinstance(ann, dict) or not ann.get("iscrowd") or sizes.get(ann.get("image_id")) is None:
            continue
        height, width = sizes[ann["image_id"]]
        check = inspect_annotation(ann, height, width, dataset.cat_id_to_label, with_masks)
        if check.reason is not None:
            continue
        x1, y1, x2, y2 = check.box.astype(np.float64).tolist()
        record = {"category_id": int(ann["category_id"]), "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 1,
                  "area": (x2 - x1) * (y2 - y1), "size": (height, width)}
        if with_masks:
            rle = dict(check.rle)
            rle["counts"] = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
            record["segmentation"], record["area"] = rle, float(mask_utils.area(check.rle))
        out.setdefault(ann["image_id"], []).append(record)
    return out


def _min_side_option(model: Any, min_side: int) -> dict[str, int]:
    """``{"min_side": min_side}`` when ``model.predict`` takes it (PowerSAM models and exports), ``{}`` for a predict
    without it (such a detector refuses no size); ValueError when a minimum is asked of one that cannot honour it."""
    if not isinstance(min_side, (int, np.integer)) or isinstance(min_side, bool) or min_side < 0:
        raise ValueError(f"min_side must be an int >= 0 (0: score every image); got {min_side!r}")
    try:
        params = inspect.signature(model.predict).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: pass it as asked
        return {"min_side": int(min_side)}
    if any(p.name == "min_side" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return {"min_side": int(min_side)}
    if min_side:
        raise ValueError(f"min_side={min_side}: {type(model).__name__}.predict() has no min_side parameter")
    return {}


def evaluate_detection(
    model: Any,
    dataset: Any,
    max_images: Optional[int] = None,
    conf: float = 0.001,
    iou: float = 0.65,
    max_det: int = 100,
    progress: bool = True,
    verbose: bool = False,
    min_side: int = 0,
) -> dict[str, Any]:
    """COCO box and mask AP of a detect-and-segment model (anything with ``predict(image, conf, iou, max_det)``
    returning :class:`~powersam.results.Results`, and ``class_names``) on a :class:`CocoInstances` dataset.

    Returns:
        ``{"bbox": {"AP", "AP50", "AP75", "AP_s", "AP_m", "AP_l", "AR1", "AR10", "AR100"}, "segm": {…} (only
        when the dataset has masks), "per_class": {name: {"bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", …}},
        "num_images", "num_detections", "failed_images": [{"image_id", "error"}]}``. AP values lie in 0–1;
        None means no ground truth in that range. An image that raises is reported and left out of the GT.
        ``min_side`` goes to ``predict``: 0 (default) detects on images of every size, as the dataset holds them;
        N > 0 makes images with a side under N pixels fail (reported in ``failed_images``) as ``predict`` would.
    """
    from tqdm.auto import tqdm

    if not callable(getattr(model, "predict", None)) or not hasattr(model, "class_names"):
        raise TypeError(f"{type(model).__name__} cannot detect: AP needs an integrated or decoupled model with predict()")
    if max_images is not None and (not isinstance(max_images, (int, np.integer)) or max_images < 1):
        raise ValueError(f"max_images must be None or a positive int; got {max_images!r}")
    options = _min_side_option(model, min_side)
    category_ids = _category_mapping(model.class_names, dataset)
    with_masks = bool(getattr(dataset, "has_masks", True) and getattr(dataset, "load_masks", True))
    num_images = len(dataset) if max_images is None else min(len(dataset), int(max_images))

    images, gt_samples, detections, failed = [], [], [], []
    with eval_mode(model):
        for index in tqdm(range(num_images), desc="detection AP", unit="img", disable=not progress, leave=False):
            try:
                sample = load_sample(dataset, index)
                results = model.predict(sample.image, conf=conf, iou=iou, max_det=max_det, **options)
                records = results.to_coco(sample.image_id, category_ids)
            except Exception as err:  # one bad image must not end a long evaluation
                failed.append({"image_id": image_id_of(dataset, index), "error": f"{type(err).__name__}: {err}"})
                continue
            with_masks = with_masks and sample.masks is not None
            height, width = sample.image.shape[:2]
            images.append({"id": int(sample.image_id), "height": int(height), "width": int(width)})
            # Keep only what the GT needs, not the decoded image.
            gt_samples.append((sample.image_id, sample.boxes, sample.labels, sample.masks, (height, width)))
            detections.extend(records)
    if num_images and len(failed) == num_images:
        raise RuntimeError(f"all {num_images} images failed; the first error: {failed[0]['error']}")

    crowd = _crowd_regions(dataset, {img["id"] for img in images}, with_masks)
    annotations: list[dict] = []
    for image_id, boxes, labels, masks, size in gt_samples:
        # A crowd region only fits an image loaded at its JSON size (CocoInstances rescales mismatched ones).
        regions = [{k: v for k, v in r.items() if k != "size"} for r in crowd.get(image_id, []) if r["size"] == size]
        annotations += _gt_annotations(image_id, boxes, labels, masks if with_masks else None,
                                       dataset.category_ids, regions, len(annotations) + 1)
    categories = [{"id": cid, "name": name} for cid, name in zip(dataset.category_ids, dataset.class_names)]
    coco_gt = coco_from_dict({"images": images, "annotations": annotations, "categories": categories})
    img_ids = [img["id"] for img in images]

    out: dict[str, Any] = {}
    name_of = dict(zip(dataset.category_ids, dataset.class_names))
    per_class: dict[str, dict[str, Optional[float]]] = {name: {} for name in dataset.class_names}
    for iou_type in IOU_TYPES if with_masks else ("bbox",):
        metrics = evaluate_detections_from_results(coco_gt, detections, iou_type, img_ids, verbose)
        for cat_id, values in metrics.pop("per_category").items():
            per_class[name_of[cat_id]].update({f"{iou_type}_{k}": v for k, v in values.items()})
        out[iou_type] = metrics
    out.update(per_class=per_class, num_images=len(images), num_detections=len(detections), failed_images=failed,
               num_annotations=sum(1 for a in annotations if not a.get("iscrowd")))
    return out


def format_detection_report(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_detection`'s result (AP in %)."""
    def cell(value: Optional[float]) -> str:
        return f"{'-' if value is None else f'{100 * value:.1f}':>7}"

    lines = [f"COCO AP (%) over {result['num_images']} images, {result['num_detections']} detections",
             f"{'':6}" + "".join(f"{name:>7}" for name in REPORTED_STATS)]
    for iou_type in IOU_TYPES:
        if iou_type in result:
            lines.append(f"{iou_type:6}" + "".join(cell(result[iou_type][name]) for name in REPORTED_STATS))
    columns = [f"{t}_{m}" for t in IOU_TYPES if t in result for m in ("AP", "AP50")]
    name_width = max(12, *(len(n) + 1 for n in result["per_class"])) if result["per_class"] else 12
    lines += ["", f"{'class':{name_width}}" + "".join(f"{c:>11}" for c in columns)]
    for name, values in result["per_class"].items():
        lines.append(f"{name:{name_width}}" + "".join(f"{cell(values.get(c)):>11}" for c in columns))
    if result["failed_images"]:
        lines.append(f"{len(result['failed_images'])} image(s) failed:")
        lines += [f"  {f['image_id']}: {f['error']}" for f in result["failed_images"]]
    return "\n".join(lines)
