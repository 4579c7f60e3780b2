"""scripts/precision_parity.py: pairing of detections across precisions, and one end-to-end run."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from powersam.data.coco import CocoInstances
from powersam.data.synth import generate_dataset
from powersam.deploy.onnx_export import export_onnx
from powersam.models.zoo import build_model
from powersam.results import Results
from script_loader import load_script


def results(boxes, labels, scores) -> Results:
    masks = np.zeros((len(boxes), 20, 20), dtype=bool)
    for mask, (x0, y0, x1, y1) in zip(masks, np.asarray(boxes, dtype=int)):
        mask[y0:y1, x0:x1] = True
    return Results(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                   np.asarray(labels, np.int64), masks, ["a", "b"], (20, 20))


def test_pairs_by_class_then_nearest_box():
    script = load_script("precision_parity")
    reference = results([[0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 4, 4]], [0, 0, 1], [0.9, 0.8, 0.7])
    # swapped order, one box moved by 2 px, the class-1 detection lost
    other = results([[5, 5, 15, 17], [0, 0, 10, 10]], [0, 0], [0.79, 0.9])
    assert script.pair_detections(reference, other) == [(0, 1), (1, 0)]
    summary = script.agreement([reference], [other])
    assert summary["same_detection_count"] == 0 and summary["detections"] == 3 and summary["paired"] == 2
    assert summary["box_diff_px_max"] == 2.0 and summary["score_diff_max"] == pytest.approx(0.01)
    assert summary["mask_iou_min"] == pytest.approx(100 / 120)
    assert summary["mask_iou_mean"] == pytest.approx((1 + 100 / 120) / 2)


def test_end_to_end(tmp_path, monkeypatch, capsys):
    root = generate_dataset(tmp_path / "ds", 2, seed=0, image_size=(72, 96))
    torch.manual_seed(0)
    model = build_model("powersam_s", img_size=64, class_names=list(CocoInstances(root).class_names)).eval()
    graph = export_onnx(model, tmp_path / "model.onnx")[0]
    out = tmp_path / "report.json"
    monkeypatch.setattr(sys, "argv", ["precision_parity.py", str(graph), "--data", str(root), "--split", "all",
                                      "--num-calib", "2", "--conf", "0.0", "--out", str(out)])
    load_script("precision_parity").main()
    report = json.loads(out.read_text())
    assert set(report) >= {"fp32", "fp16", "int8_onnxruntime", "int8_onnxruntime_decoder", "int8_tensorrt"}
    assert "agreement_with_fp32" not in report["fp32"]
    for name in ("fp16", "int8_onnxruntime", "int8_onnxruntime_decoder", "int8_tensorrt"):
        agreement = report[name]["agreement_with_fp32"]
        assert agreement["images"] == 2 and agreement["paired"] > 0
        assert {"box_AP", "box_AP50", "mask_AP", "mask_AP50"} <= set(report[name])
    # a random 64-px model at conf 0: near-tied candidates pair imperfectly, hence the low floor
    assert report["fp16"]["agreement_with_fp32"]["mask_iou_mean"] > 0.8
    assert json.loads(capsys.readouterr().out) == report, "the report is printed too"
