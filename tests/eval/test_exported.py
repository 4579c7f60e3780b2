"""``powersam eval det`` / ``eval miou`` on exported graphs give the PyTorch model's numbers (so the FP16 and INT8
twins can be scored the same way), and refuse the wrong kind of export."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from powersam.data.coco import CocoInstances
from powersam.data.synth import generate_dataset
from powersam.deploy.onnx_export import export_onnx
from powersam.cli.eval import add_det_arguments, add_miou_arguments, run_det, run_miou
from powersam.models.zoo import build_model

SIZE = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = generate_dataset(tmp_path_factory.mktemp("synth") / "ds", 3, seed=0, image_size=(96, 128))
    torch.manual_seed(0)  # as `eval` seeds a model without a checkpoint: the same random weights
    model = build_model("powersam_s", img_size=SIZE, class_names=list(CocoInstances(root).class_names)).eval()
    folder = tmp_path_factory.mktemp("export")
    integrated = export_onnx(model, folder / "powersam.onnx")[0]
    encoder, _ = export_onnx(model, folder / "pair", interactive=True)
    return root, integrated, encoder


def torch_and_export_reports(add_arguments, runner, export, common: list[str], folder) -> tuple[dict, dict]:
    """The JSON reports of one eval command for the PyTorch model and for its export."""
    reports = []
    for name, model in (("torch", ["powersam_s", "--img-size", str(SIZE), "--device", "cpu"]), ("export", [str(export)])):
        out = folder / f"{name}.json"
        args = add_arguments(argparse.ArgumentParser()).parse_args(
            ["--model", *model, *common, "--no-progress", "--json", str(out)])
        assert runner(args) == 0
        reports.append(json.loads(out.read_text()))
    return reports[0], reports[1]


def test_det_on_an_integrated_export_matches_pytorch(setup, tmp_path):
    root, integrated, _ = setup
    common = ["--data", str(root), "--split", "all", "--max-det", "5", "--conf", "0.0"]
    torch_report, onnx_report = torch_and_export_reports(add_det_arguments, run_det, integrated, common, tmp_path)
    assert onnx_report["num_detections"] == torch_report["num_detections"] == 15
    for kind in ("bbox", "segm"):
        assert onnx_report[kind]["AP50"] == pytest.approx(torch_report[kind]["AP50"], abs=0.02)


def test_miou_on_an_interactive_export_matches_pytorch(setup, tmp_path):
    root, _, encoder = setup
    common = ["--data", str(root), "--split", "all", "--prompts", "box", "--refine", "1"]
    torch_report, onnx_report = torch_and_export_reports(add_miou_arguments, run_miou, encoder, common, tmp_path)
    assert onnx_report["num_instances"] == torch_report["num_instances"] > 0
    for step, value in torch_report["miou"].items():
        assert onnx_report["miou"][step] == pytest.approx(value, abs=0.5), step


def test_wrong_kind_of_export_is_refused(setup, capsys):
    root, integrated, encoder = setup
    det = add_det_arguments(argparse.ArgumentParser()).parse_args(
        ["--model", str(encoder), "--data", str(root), "--no-progress"])
    assert run_det(det) == 1
    assert "interactive" in capsys.readouterr().err
    miou = add_miou_arguments(argparse.ArgumentParser()).parse_args(
        ["--model", str(integrated), "--data", str(root), "--no-progress"])
    assert run_miou(miou) == 1
    assert "integrated export" in capsys.readouterr().err
    weights = add_det_arguments(argparse.ArgumentParser()).parse_args(
        ["--model", str(integrated), "--checkpoint", "x.pt", "--data", str(root), "--no-progress"])
    assert run_det(weights) == 1
    assert "built in" in capsys.readouterr().err
