"""``powersam.load`` → ``Model``: the same calls on every backend give the same results.

One random-weight PowerSAM whose detector fires (the export tests' helpers) is exported once; the PyTorch model, its
ONNX Runtime export and (where TensorRT and a GPU exist) its engines then run the same ``predict`` / ``segment`` /
``val`` calls, compared with the PyTorch reference under the tolerances of the runtime parity tests
(tests/deploy/test_runtime.py): labels equal, boxes 1e-3, scores 1e-5, mask IoU >= 0.99.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import powersam
from powersam.data.coco import CocoInstances
from powersam.data.synth import generate_dataset
from powersam.models.zoo import build_model
from powersam.predictor import SamPredictor

sys.path.insert(0, str(Path(__file__).resolve().parent / "deploy"))
from test_onnx_export import calibrate_batch_norm, make_head_fire, mask_iou  # noqa: E402 - export test helpers

SIZE = 128
BACKENDS = ["torch", "onnx", "tensorrt"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return CocoInstances(generate_dataset(tmp_path_factory.mktemp("synth") / "ds", 2, seed=0, image_size=(96, 128)))


@pytest.fixture(scope="module")
def module(dataset):
    torch.manual_seed(0)
    model = build_model("powersam_s", img_size=SIZE, class_names=dataset.class_names)
    calibrate_batch_norm(model, lambda m: m.forward_integrated(torch.randn(2, 3, SIZE, SIZE)))
    make_head_fire(model.box_generator.bbox_head)
    return model


@pytest.fixture(scope="module")
def exported(module, tmp_path_factory):
    return powersam.load(module).export("onnx", tmp_path_factory.mktemp("export"), conf=0.3, max_det=40)


@pytest.fixture(scope="module", params=BACKENDS)
def model(request, module, exported, tmp_path_factory):
    if request.param == "torch":
        return powersam.load(module)
    if request.param == "onnx":
        return powersam.load(exported[0].parent, threads=1)
    pytest.importorskip("tensorrt")
    from powersam.deploy.tensorrt import TensorRTUnavailable

    try:
        engines = powersam.load(module).export("tensorrt", tmp_path_factory.mktemp("engines"), conf=0.3, max_det=40)
    except TensorRTUnavailable as err:
        pytest.skip(str(err))
    return powersam.load(engines)


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def assert_same_results(got, want, box_atol: float = 1e-3, score_atol: float = 1e-5) -> None:
    assert len(got) == len(want)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.boxes, want.boxes, rtol=0, atol=box_atol)
    np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=score_atol)
    assert got.masks.shape == want.masks.shape and got.masks.dtype == bool
    if len(want):
        assert min(mask_iou(a, b) for a, b in zip(got.masks, want.masks)) >= 0.99
    assert got.class_names == want.class_names and got.orig_shape == want.orig_shape


# ------------------------------------------------------------------------------------------------ predict
@pytest.mark.parametrize("shape, kwargs", [((90, 140), dict(conf=0.3, max_det=20)),
                                           ((300, 200), dict(conf=0.0, max_det=25, iou=0.5))])
def test_predict_matches_pytorch(model, module, shape, kwargs):
    image = noise(*shape)
    want = module.predict(image, **kwargs)
    got = model.predict(image, **kwargs)
    assert len(want) > 0
    assert_same_results(got, want)
    stages = list(got.speed)
    assert stages[0] == "preprocess" and stages[-2:] == ["decoder", "postprocess"]
    assert all(ms >= 0 for ms in got.speed.values())


def test_predict_takes_a_list_and_filters_classes(model, module, dataset):
    images = [noise(90, 140), noise(60, 61, seed=1)]
    results = model.predict(images, conf=0.0, max_det=30, classes=[dataset.class_names[0]])
    assert isinstance(results, list) and len(results) == 2
    for image, got in zip(images, results):
        assert_same_results(got, module.predict(image, conf=0.0, max_det=30, classes=[dataset.class_names[0]]))
        assert set(got.labels.tolist()) <= {0}


@pytest.mark.parametrize("shape", [(1, 1), (7, 301), (301, 7)])
def test_odd_image_sizes(model, module, shape):
    image = noise(*shape, seed=2)
    # min_side=0: the resize paths of images under the default 16-pixel minimum (refused without it)
    got, want = model.predict(image, conf=0.0, max_det=5, min_side=0), module.predict(image, conf=0.0, max_det=5,
                                                                                       min_side=0)
    assert got.masks.shape == (len(got), *shape)
    # Boxes of a 1-pixel image may differ by the resize; the detections themselves must agree.
    assert_same_results(got, want, box_atol=1e-2)
    segmented = model.segment(image, boxes=[[0, 0, shape[1], shape[0]]])
    assert segmented.masks.shape == (1, *shape)


def test_no_detections_give_empty_results(model):
    for kwargs in (dict(conf=0.999), dict(max_det=0)):
        result = model.predict(noise(50, 70), **kwargs)
        assert len(result) == 0 and result.boxes.shape == (0, 4) and result.masks.shape == (0, 50, 70)
        assert "preprocess" in result.speed and "decoder" not in result.speed


def test_predict_validates_arguments(model):
    with pytest.raises(ValueError, match="conf"):
        model.predict(noise(20, 20), conf=1.5)
    with pytest.raises(ValueError, match="max_det"):
        model.predict(noise(20, 20), max_det=-1)
    with pytest.raises(ValueError, match="unknown class"):
        model.predict(noise(20, 20), classes=["nothing-like-this"])


# ------------------------------------------------------------------------------------------------ segment
def test_segment_matches_sam_predictor(model, module):
    image = noise(90, 140, seed=3)
    boxes = np.array([[10, 10, 60, 50], [20, 30, 139, 89], [-5, 40, 70, 95]], dtype=np.float64)
    reference = SamPredictor(module)
    reference.set_image(image)
    with pytest.warns(UserWarning, match="clipped"):
        want_masks, want_scores, _ = reference.predict_batch(boxes=boxes)
    with pytest.warns(UserWarning, match="clipped"):
        got = model.segment(image, boxes=boxes)
    np.testing.assert_allclose(got.scores, want_scores[:, 0], rtol=0, atol=1e-5)
    assert min(mask_iou(a, b) for a, b in zip(got.masks, want_masks[:, 0])) >= 0.99
    np.testing.assert_allclose(got.boxes[2], [0, 40, 70, 90])  # clipped to the image
    assert list(got.speed) == ["encoder", "decoder"] and got.class_names == ["object"]


def test_set_image_then_points_and_boxes(model, module):
    image = noise(90, 140, seed=4)
    reference = SamPredictor(module)
    reference.set_image(image)
    model.set_image(image)
    points, labels = np.array([[40.0, 30.0], [100.0, 60.0]]), np.array([1, 0])
    got = model.segment(points=points, labels=labels)
    want_masks, want_scores, _ = reference.predict(point_coords=points, point_labels=labels, multimask_output=False)
    assert len(got) == 1
    np.testing.assert_allclose(got.scores, want_scores, rtol=0, atol=1e-5)
    assert mask_iou(got.masks[0], want_masks[0]) >= 0.99
    # the same clicks added to every box
    both = model.segment(boxes=[[10, 10, 60, 50], [70, 20, 130, 80]], points=points, labels=labels)
    want_masks, want_scores, _ = reference.predict_batch(
        boxes=np.array([[10, 10, 60, 50], [70, 20, 130, 80]]), point_coords=np.repeat(points[None], 2, axis=0),
        point_labels=np.repeat(labels[None], 2, axis=0))
    np.testing.assert_allclose(both.scores, want_scores[:, 0], rtol=0, atol=1e-5)


def test_segment_zoom_matches_the_zoom_predictor_and_keeps_the_image(model, module):
    """segment(zoom=C) gives what ZoomPredictor gives on the PyTorch predictor (every backend), and afterwards the
    model still answers for the whole image it was given."""
    from powersam.inference.zoom import ZoomPredictor

    image = noise(240, 320, seed=5)
    boxes = np.array([[10, 10, 40, 30], [200, 150, 230, 190], [0, 0, 319, 239]], dtype=np.float64)
    reference = ZoomPredictor(SamPredictor(module), context=3.0)
    reference.set_image(image)
    want_masks, want_scores, _ = reference.predict_batch(boxes=boxes)
    model.set_image(image)
    plain = model.segment(boxes=boxes[:1])
    got = model.segment(boxes=boxes, zoom=3.0)
    np.testing.assert_allclose(got.scores, want_scores[:, 0], rtol=0, atol=1e-5)
    assert min(mask_iou(a, b) for a, b in zip(got.masks, want_masks[:, 0])) >= 0.99
    x0, y0, x1, y1 = reference.window_of(boxes[0])
    assert not got.masks[0][:, x1:].any() and not got.masks[0][y1:].any()  # nothing outside its crop
    again = model.segment(boxes=boxes[:1])  # the whole-image embedding is back
    np.testing.assert_array_equal(again.scores, plain.scores)
    with pytest.raises(ValueError, match="context"):
        model.segment(boxes=boxes, zoom=0.5)


def test_predict_zoom_redecodes_the_detected_boxes(model, module):
    from powersam.inference.zoom import ZoomPredictor

    image = noise(240, 320, seed=6)
    plain = model.predict(image, conf=0.0, max_det=6)
    zoomed = model.predict(image, conf=0.0, max_det=6, zoom=3.0)
    assert len(plain) > 0 and "zoom" in zoomed.speed
    np.testing.assert_array_equal(zoomed.labels, plain.labels)
    np.testing.assert_array_equal(zoomed.boxes, plain.boxes)
    np.testing.assert_array_equal(zoomed.scores, plain.scores)
    reference = ZoomPredictor(SamPredictor(module), context=3.0)
    reference.set_image(image)
    want, _, _ = reference.predict_batch(boxes=plain.boxes.astype(np.float64))
    assert min(mask_iou(a, b) for a, b in zip(zoomed.masks, want[:, 0])) >= 0.99
    with pytest.raises(ValueError, match="zoom"):
        model.predict(image, zoom=0.0)


def test_segment_needs_prompts_and_an_image(model):
    with pytest.raises(ValueError, match="prompts"):
        model.segment(noise(20, 20))
    with pytest.raises(ValueError, match="labels"):
        model.segment(noise(20, 20), points=[[1, 1]])


# ------------------------------------------------------------------------------------------------ val
@pytest.fixture(scope="module")
def reference_val(module, dataset):
    return powersam.load(module).val(dataset, refine_iters=1, max_images=2, conf=0.0, max_det=20)


def test_val_matches_pytorch(model, dataset, reference_val):
    got = model.val(dataset, refine_iters=1, max_images=2, conf=0.0, max_det=20)
    assert set(got) == {"miou", "det"}
    for key, want in reference_val["miou"]["miou"].items():
        assert want is not None and got["miou"]["miou"][key] == pytest.approx(want, abs=0.5)
    assert got["det"]["num_detections"] == reference_val["det"]["num_detections"] > 0
    for iou_type in ("bbox", "segm"):
        assert got["det"][iou_type]["AP"] == pytest.approx(reference_val["det"][iou_type]["AP"], abs=1e-2)


# ------------------------------------------------------------------------------------------------ export, load
def test_export_round_trip_fp16(module, tmp_path):
    """The FP16 twins load as one model and agree with float32 on the strongest detections."""
    pytest.importorskip("onnx")
    paths = powersam.load(module).export("onnx-fp16", tmp_path, conf=0.3, max_det=5)
    assert sorted(p.name for p in paths) == ["decoder.fp16.onnx", "encoder.fp16.onnx", "model.fp16.onnx"]
    fp16 = powersam.load(paths, threads=1)
    assert fp16.backend == "onnx" and fp16.can_detect and fp16.can_segment
    image = noise(90, 140)
    got, want = fp16.predict(image, conf=0.3, max_det=5), module.predict(image, conf=0.3, max_det=5)
    assert len(got) == len(want) > 0
    assert np.abs(got.boxes - want.boxes).max() < 2.0
    assert fp16.segment(image, boxes=[[10, 10, 60, 50]]).masks.shape == (1, 90, 140)


def test_export_int8_decoder_needs_the_int8_format(module, tmp_path):
    with pytest.raises(ValueError, match="int8_decoder applies to format='onnx-int8'"):
        powersam.load(module).export("onnx", tmp_path, int8_decoder=True)
    assert not any(tmp_path.iterdir()), "refused before anything is written"


def test_load_sources_and_info(module, exported):
    encoder_only = powersam.load(exported[1], threads=1)  # the decoder is found beside the encoder
    assert encoder_only.can_segment and not encoder_only.can_detect
    with pytest.raises(ValueError, match="box-prompt generator"):
        encoder_only.predict(noise(20, 20))
    integrated_only = powersam.load(exported[0], threads=1)
    assert integrated_only.can_detect and not integrated_only.can_segment
    with pytest.raises(ValueError, match="cannot be prompted"):
        integrated_only.segment(noise(20, 20), boxes=[[0, 0, 5, 5]])
    info = powersam.load(exported[0].parent, threads=1).info()
    assert info["backend"] == "onnx" and info["img_size"] == SIZE and len(info["graphs"]) == 3
    assert powersam.load(module).info()["params"] == sum(p.numel() for p in module.parameters())
    with pytest.raises(FileNotFoundError, match="zoo name"):
        powersam.load("no_such_model")
    with pytest.raises(ValueError, match="already an export"):
        integrated_only.export("onnx", "unused")
    with pytest.raises(ValueError, match="format"):
        powersam.load(module).export("coreml", "unused")
    with pytest.raises(ValueError, match="PyTorch"):
        powersam.load(exported[0], img_size=64)


def test_prompt_only_zoo_model():
    sam = powersam.load("powersam_s", img_size=64, with_detector=False, device="cpu")
    assert sam.backend == "torch" and sam.can_segment and not sam.can_detect and sam.class_names == []
    result = sam.segment(noise(40, 50), boxes=[[5, 5, 30, 30]])
    assert result.masks.shape == (1, 40, 50)


# ------------------------------------------------------------------------------------------------ training namespace
def test_train_namespace_survives_submodule_imports(tmp_path):
    import powersam.train as train
    import powersam.train.bbpg  # noqa: F401 - a submodule import must not shadow the stage functions
    import powersam.train.teacher  # noqa: F401

    assert callable(train.train_teacher) and callable(train.train_bbpg) and callable(train.run_pipeline)
    with pytest.raises(ValueError, match="unknown training stage"):
        train.run("stage9", {})
    with pytest.raises(TypeError, match="TeacherConfig"):
        train.train_teacher(42)
    with pytest.raises(ValueError, match="no_such_field"):  # a dict is checked against the stage's dataclass
        train.run("encoder", {"no_such_field": 1})


def test_build_model_threshold_vocabulary():
    model = build_model("powersam_s", img_size=64, conf=0.25, iou=0.4)
    assert (model.conf, model.iou) == (0.25, 0.4) and (model.score_thr, model.nms_iou) == (0.25, 0.4)
    with pytest.warns(DeprecationWarning, match="score_thr"):
        old = build_model("powersam_s", img_size=64, score_thr=0.3, nms_iou=0.5)
    assert (old.conf, old.iou) == (0.3, 0.5)
    assert powersam.load("powersam_s", img_size=64, conf=0.2, device="cpu").detector.detection_defaults()[0] == 0.2


def test_loading_an_export_never_imports_torch(exported):
    import json
    import subprocess
    import textwrap

    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import powersam
        model = powersam.load({str(exported[0].parent)!r}, threads=1)
        image = np.random.default_rng(0).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
        found = model.predict(image, conf=0.0, max_det=3)
        masks = model.segment(image, boxes=[[5, 5, 40, 30]]).masks
        print(json.dumps({{"found": len(found), "masks": list(masks.shape),
                          "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"found": 3, "masks": [1, 60, 80], "torch": []}
