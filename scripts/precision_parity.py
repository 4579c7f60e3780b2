"""What FP16 and INT8 do to an integrated export's detections and masks, measured on a COCO dataset without a GPU.

Writes the twins of a float32 integrated export that deployment uses: FP16 (:func:`powersam.deploy.precision.
to_float16`, what a TensorRT FP16 engine is built from), INT8 in ONNX Runtime's form (uint8 activations, the
``--int8`` export; again with its decoder MatMuls in dynamic INT8 as ``--int8-decoder`` writes it) and INT8 in
TensorRT's form (symmetric int8 activations, float biases), the INT8 ones calibrated on ``--calib`` images. Each runs with ONNX Runtime on the CPU on the dataset's split, giving

* COCO box AP / AP50 (and mask AP where the dataset has masks), as ``powersam eval det`` computes them;
* agreement with float32 at ``--conf``: images with the same number of detections, and for each float32 detection
  paired with its twin (same class, nearest box): box difference in pixels, score difference, mask IoU.

ONNX Runtime rounds every FP16 tensor between nodes as TensorRT stores them, but computes FP16 nodes it has no CPU
kernel for in float32, so the FP16 rows approximate rather than reproduce an engine.

    python scripts/precision_parity.py EXPORT.onnx --data COCO_DIR --calib IMAGES [--out report.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import powersam.runtime as rt
from powersam.data.coco import CocoInstances
from powersam.deploy.precision import to_float16
from powersam.deploy.quantize import calibration_images, quantize_onnx
from powersam.deploy.quantize_decoder import quantize_decoder_matmuls
from powersam.eval.detection import evaluate_detection


def pair_detections(reference, other) -> list[tuple[int, int]]:
    """``(reference index, other index)`` for each reference detection whose class is left in ``other``: the
    same-class detection of ``other`` with the smallest largest-coordinate difference, each used once."""
    pairs, taken = [], set()
    for i, (box, label) in enumerate(zip(reference.boxes, reference.labels)):
        candidates = [j for j in range(len(other.boxes)) if other.labels[j] == label and j not in taken]
        if candidates:
            j = min(candidates, key=lambda k: float(np.abs(other.boxes[k] - box).max()))
            taken.add(j)
            pairs.append((i, j))
    return pairs


def agreement(reference_results, other_results) -> dict:
    """Detection-count agreement and paired box / score / mask differences (see the module docstring)."""
    same_count, box_diffs, score_diffs, ious = 0, [], [], []
    for a, b in zip(reference_results, other_results):
        same_count += int(len(a.boxes) == len(b.boxes))
        for i, j in pair_detections(a, b):
            box_diffs.append(float(np.abs(a.boxes[i] - b.boxes[j]).max()))
            score_diffs.append(abs(float(a.scores[i]) - float(b.scores[j])))
            union = np.logical_or(a.masks[i], b.masks[j]).sum()
            ious.append(1.0 if union == 0 else float(np.logical_and(a.masks[i], b.masks[j]).sum() / union))
    summary = {"images": len(reference_results), "same_detection_count": same_count,
               "detections": sum(len(a.boxes) for a in reference_results), "paired": len(ious)}
    if ious:
        summary.update(box_diff_px_median=float(np.median(box_diffs)), box_diff_px_max=max(box_diffs),
                       score_diff_max=max(score_diffs), mask_iou_mean=float(np.mean(ious)), mask_iou_min=min(ious))
    return summary


def write_twins(src: Path, folder: Path, calib, num_calib: int) -> dict[str, Path]:
    images = calibration_images(calib, num_calib)
    int8 = quantize_onnx(src, folder / "int8_ort.onnx", images, len(images))
    return {
        "fp32": src,
        "fp16": to_float16(src, folder / "fp16.onnx"),
        "int8_onnxruntime": int8,
        # what `powersam export --int8 --int8-decoder` writes: the same graph with dynamic-INT8 decoder MatMuls
        "int8_onnxruntime_decoder": quantize_decoder_matmuls(int8, folder / "int8_ort_dec.onnx"),
        "int8_tensorrt": quantize_onnx(src, folder / "int8_trt.onnx", images, len(images), for_tensorrt=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", type=Path, help="integrated float32 export (powersam export --format onnx)")
    parser.add_argument("--data", required=True, help="COCO dataset folder or annotation JSON")
    parser.add_argument("--split", default="val", choices=("train", "val", "all"))
    parser.add_argument("--calib", default=None, help="calibration images: folder, glob or file (default synthetic)")
    parser.add_argument("--num-calib", type=int, default=32, help="calibration images used (default 32)")
    parser.add_argument("--conf", type=float, default=0.25, help="score threshold of the agreement (default 0.25)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here as JSON")
    args = parser.parse_args()
    dataset = CocoInstances(args.data, split=None if args.split == "all" else args.split)
    images = [dataset[i].image for i in range(len(dataset))]
    report: dict = {"graph": str(args.onnx), "data": str(args.data), "split": args.split, "conf": args.conf,
                    "calibration": args.calib or "synthetic scenes"}
    with tempfile.TemporaryDirectory(prefix="powersam-precision-") as work:
        reference = None
        for name, path in write_twins(args.onnx, Path(work), args.calib, args.num_calib).items():
            model = rt.load(path)
            detected = evaluate_detection(model, dataset, progress=False)
            row = {"box_AP": detected["bbox"]["AP"], "box_AP50": detected["bbox"]["AP50"]}
            if "segm" in detected:
                row.update(mask_AP=detected["segm"]["AP"], mask_AP50=detected["segm"]["AP50"])
            results = [model.predict(image, conf=args.conf) for image in images]
            if reference is None:
                reference = results
            else:
                row["agreement_with_fp32"] = agreement(reference, results)
            report[name] = row
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
