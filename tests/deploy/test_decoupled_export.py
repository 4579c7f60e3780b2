"""The decoupled baseline (separate YOLOX detector + segmenter) as one ONNX graph, against ``DecoupledPowerSAM``."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import powersam.runtime as rt
from powersam.deploy.metadata import GraphMetadata
from powersam.deploy.onnx_export import export_onnx
from powersam.models.zoo import build_model
from test_onnx_export import calibrate_batch_norm, make_head_fire  # helpers of the export tests

SIZE, DET = 128, 96
CLASSES = ["insulator", "bushing", "breaker"]


def detecting_decoupled() -> torch.nn.Module:
    """A random-weight decoupled model whose detector fires with distinct scores: BatchNorm statistics calibrated
    on noise, and small predictor weights under an objectness bias (no saturated, tied scores)."""
    torch.manual_seed(0)
    model = build_model("powersam_s_decoupled", img_size=SIZE, class_names=CLASSES)
    model.det_size = DET
    calibrate_batch_norm(model, lambda m: (m.detector(torch.rand(2, 3, DET, DET) * 255),
                                           m.image_encoder(torch.randn(2, 3, SIZE, SIZE))))
    make_head_fire(model.detector.bbox_head, weight_scale=0.05)
    return model


@pytest.fixture(scope="module")
def model():
    return detecting_decoupled()


@pytest.fixture(scope="module")
def graph(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("decoupled") / "decoupled.onnx", score_thr=0.3)[0]


def test_graph_inputs_and_metadata(graph):
    model = onnx.load(str(graph))
    assert [i.name for i in model.graph.input] == ["image", "det_image", "box_scale", "input_size", "score_thr",
                                                   "nms_iou", "max_det"]
    meta = GraphMetadata.from_props({p.key: p.value for p in model.metadata_props})
    assert meta.graph == "integrated" and meta.det_size == DET and meta.class_names == CLASSES


@pytest.mark.parametrize("shape", [(90, 140), (150, 60)])
def test_matches_pytorch(model, graph, shape):
    image = np.random.default_rng(shape[0]).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    got = rt.load(graph, threads=1).predict(image, conf=0.3, max_det=20)
    want = model.predict(image, conf=0.3, max_det=20)
    assert 0 < len(want.boxes) == len(got.boxes)
    assert np.all(-np.diff(want.scores) > 1e-6), "no near-ties that could legitimately swap places"
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.boxes, want.boxes, rtol=0, atol=0.05)
    np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-5)
    ious = [np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1) for a, b in zip(got.masks, want.masks)]
    assert min(ious) >= 0.99


def test_nothing_detected_and_missing_detector_input(graph):
    runtime = rt.load(graph, threads=1)
    image = np.random.default_rng(90).integers(0, 256, size=(90, 140, 3), dtype=np.uint8)
    assert len(runtime.predict(image, conf=0.999).boxes) == 0 and len(runtime.predict(image, max_det=0).boxes) == 0
    x = np.zeros((1, 3, SIZE, SIZE), np.float32)
    with pytest.raises(ValueError, match="detector"):
        runtime.run_graph(x, (SIZE, SIZE), 0.3, 0.5, 10)


@pytest.mark.usefixtures("quiet_onnxruntime")
def test_int8_and_fp16_twins_run(graph, tmp_path):
    """Calibration and conversion see the decoupled graph's two image inputs (the detector's comes from the same
    frame); the twins stay close to float32 on the top detections."""
    from powersam.deploy.precision import to_float16
    from powersam.deploy.quantize import quantize_onnx

    image = np.random.default_rng(90).integers(0, 256, size=(90, 140, 3), dtype=np.uint8)
    reference = rt.load(graph, threads=1).predict(image, conf=0.3, max_det=5)
    int8 = quantize_onnx(graph, tmp_path / "decoupled.int8.onnx", num_calib=2)
    half = rt.load(to_float16(graph, tmp_path / "decoupled.fp16.onnx"), threads=1).predict(image, conf=0.3, max_det=5)
    assert len(half.boxes) == len(reference.boxes) == 5
    np.testing.assert_allclose(half.scores, reference.scores, atol=5e-3)
    quantized = rt.load(int8, threads=1).predict(image, conf=0.3, max_det=5)
    assert len(quantized.boxes) == 5 and quantized.masks.shape == reference.masks.shape
