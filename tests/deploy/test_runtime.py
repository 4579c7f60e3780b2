"""powersam.runtime: the torch-free ONNX Runtime path against the PyTorch models it was exported from."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import powersam.runtime as rt
from powersam.deploy.onnx_export import export_onnx
from powersam.predictor import SamPredictor
from powersam.runtime import preprocess as rt_preprocess
from powersam.runtime.session import GraphSession
from powersam.transforms import masks_to_original
from powersam.transforms import preprocess_image as torch_preprocess_image
from test_onnx_export import CLASSES, IMG_SIZE, detecting_powersam, mask_iou  # helpers of the export tests


@pytest.fixture(scope="module")
def model():
    return detecting_powersam()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runtime")
    integrated = export_onnx(model, folder / "powersam.onnx", score_thr=0.3, max_det=40)[0]
    encoder, decoder = export_onnx(model, folder / "pair", interactive=True)
    return {"integrated": integrated, "encoder": encoder, "decoder": decoder, "folder": folder / "pair"}


@pytest.fixture(scope="module")
def onnx_model(exported):
    return rt.load(exported["integrated"], threads=1)


@pytest.fixture(scope="module")
def onnx_predictor(exported):
    return rt.load(exported["folder"], threads=1)


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ integrated
@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((90, 140), dict(conf=0.3, max_det=20)),
        ((300, 200), dict(conf=0.0, max_det=25)),  # larger than S: masks are downscaled
        ((90, 140), dict(conf=0.0, max_det=30, classes=["bushing"])),
    ],
)
def test_predict_matches_pytorch(model, onnx_model, shape, kwargs):
    image = noise(*shape)
    want = model.predict(image, **kwargs)
    got = onnx_model.predict(image, **kwargs)
    assert len(want) > 0 and len(got) == len(want)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.boxes, want.boxes, rtol=0, atol=1e-3)
    np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-5)
    assert got.masks.shape == want.masks.shape == (len(want), *shape) and got.masks.dtype == bool
    assert min(mask_iou(a, b) for a, b in zip(got.masks, want.masks)) >= 0.99
    assert got.class_names == CLASSES and got.orig_shape == shape
    if "classes" in kwargs:
        assert set(got.labels.tolist()) == {CLASSES.index("bushing")}


def test_defaults_come_from_the_metadata(onnx_model):
    assert (onnx_model.score_thr, onnx_model.max_det) == (pytest.approx(0.3), 40)
    assert onnx_model.nms_iou == pytest.approx(0.65)  # the model's own default
    assert len(onnx_model.predict(noise(64, 64), conf=0.0)) == 40


def test_zero_detections_give_empty_results(onnx_model):
    result = onnx_model.predict(noise(50, 70), conf=0.999)
    assert len(result) == 0
    assert result.boxes.shape == (0, 4) and result.masks.shape == (0, 50, 70)
    assert onnx_model.predict(noise(50, 70), max_det=0).masks.shape == (0, 50, 70)


def test_predict_validates_arguments(onnx_model):
    with pytest.raises(ValueError, match="conf"):
        onnx_model.predict(noise(20, 20), conf=1.5)
    with pytest.raises(ValueError, match="max_det"):
        onnx_model.predict(noise(20, 20), max_det=-1)
    with pytest.raises(ValueError, match="unknown class"):
        onnx_model.predict(noise(20, 20), classes=["transformer"])


def test_runtime_never_imports_torch(exported, tmp_path):
    from PIL import Image

    image_path = tmp_path / "frame.png"
    Image.fromarray(noise(60, 80)).save(image_path)
    script = textwrap.dedent(
        f"""
        import json, sys
        import powersam.runtime as rt
        model = rt.load({str(exported["integrated"])!r}, threads=1)
        result = model.predict({str(image_path)!r}, conf=0.0, max_det=3)
        predictor = rt.load({str(exported["folder"])!r}, threads=1)
        predictor.set_image({str(image_path)!r})
        masks, scores, _ = predictor.predict(box=[5, 5, 40, 30], multimask_output=False)
        print(json.dumps({{"detections": len(result), "masks": list(masks.shape),
                          "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"detections": 3, "masks": [1, 60, 80], "torch": []}


# ------------------------------------------------------------------------------------------------ interactive
def test_predictor_matches_sam_predictor(model, onnx_predictor):
    image = noise(90, 140, seed=3)
    torch_predictor = SamPredictor(model)
    torch_predictor.set_image(image)
    onnx_predictor.set_image(image)
    assert (onnx_predictor.original_size, onnx_predictor.input_size) == ((90, 140), (82, 128))
    ref = torch_predictor.features.numpy()
    assert np.abs(onnx_predictor.features - ref).max() <= 1e-4 * np.abs(ref).max()
    assert len(onnx_predictor.multiscale_features) == 4

    rng = np.random.default_rng(0)
    boxes = np.array([[0, 0, 50, 50], [10, 20, 100, 80], [60, 10, 139, 89], [5, 5, 20, 30.0]])
    points = rng.uniform(0, 90, size=(4, 3, 2))
    labels = np.array([[1, 0, -1], [1, 1, 1], [0, 1, -1], [1, -1, -1]])
    low_res = torch_predictor.predict(box=boxes[1])[2][:1]
    masks4 = np.repeat(low_res[None], 4, axis=0)
    cases = [
        ("predict", dict(box=boxes[1])),
        ("predict", dict(point_coords=points[0], point_labels=labels[0], multimask_output=False)),
        ("predict", dict(point_coords=points[0][:1], point_labels=[1], mask_input=low_res)),
        ("predict", dict(mask_input=low_res)),  # no sparse prompt at all
        ("predict", dict()),  # nothing: SAM still decodes its output tokens
        ("predict_batch", dict(boxes=boxes)),
        ("predict_batch", dict(point_coords=points, point_labels=labels, multimask_output=True)),
        ("predict_batch", dict(boxes=boxes, point_coords=points, point_labels=labels, mask_input=masks4)),
        ("predict_batch", dict(boxes=boxes, multimask_output=4, return_logits=True)),
    ]
    for method, kwargs in cases:
        extra = {"chunk_size": 3} if method == "predict_batch" else {}
        got = getattr(onnx_predictor, method)(**kwargs, **extra)
        want = getattr(torch_predictor, method)(**kwargs)
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.dtype == b.dtype, (method, kwargs.keys())
        np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-5)
        np.testing.assert_allclose(got[2], want[2], rtol=0, atol=1e-4)
        if got[0].dtype == bool:
            flat = zip(got[0].reshape(-1, *got[0].shape[-2:]), want[0].reshape(-1, *want[0].shape[-2:]))
            assert min(mask_iou(a, b) for a, b in flat) >= 0.99, (method, kwargs.keys())
        else:
            np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-3)

    empty = onnx_predictor.predict_batch(boxes=np.zeros((0, 4)))
    assert [a.shape for a in empty] == [(0, 1, 90, 140), (0, 1), (0, 1, IMG_SIZE // 4, IMG_SIZE // 4)]


def test_integrated_embedding_feeds_the_interactive_decoder(onnx_model, onnx_predictor):
    """The integrated graph returns its embedding, so a follow-up click needs no second encoder pass."""
    image = noise(90, 140, seed=4)
    meta = onnx_model.metadata
    x, input_size = rt_preprocess.preprocess_image(image, IMG_SIZE, meta.pixel_mean, meta.pixel_std)
    feeds = {"image": x, "input_size": np.asarray(input_size), "score_thr": np.float32(0.3), "nms_iou": np.float32(0.5),
             "max_det": np.int64(5)}
    embedding = onnx_model.session.run(feeds, ["image_embeddings"])["image_embeddings"]
    onnx_predictor.set_image(image)
    direct = onnx_predictor.predict(box=[10, 10, 80, 60])
    onnx_predictor.set_image_embedding(embedding, image.shape[:2], input_size)
    reused = onnx_predictor.predict(box=[10, 10, 80, 60])
    np.testing.assert_allclose(reused[2], direct[2], rtol=0, atol=1e-4)


def test_predictor_validates_prompts(onnx_predictor):
    onnx_predictor.reset_image()
    with pytest.raises(RuntimeError, match="set_image"):
        onnx_predictor.predict(box=[0, 0, 5, 5])
    onnx_predictor.set_image(noise(40, 60))
    with pytest.raises(ValueError, match="point_labels"):
        onnx_predictor.predict(point_coords=[[1, 2]], point_labels=[2])
    with pytest.raises(ValueError, match="zero width"):
        onnx_predictor.predict_batch(boxes=[[70, 0, 90, 10]])
    with pytest.raises(ValueError, match="disagree"):
        onnx_predictor.predict_batch(boxes=np.zeros((2, 4)) + [0, 0, 5, 5], point_coords=np.zeros((3, 1, 2)),
                                     point_labels=np.ones((3, 1)))
    with pytest.raises(ValueError, match="multimask_output"):
        onnx_predictor.predict(box=[0, 0, 5, 5], multimask_output=2)
    with pytest.warns(UserWarning, match="clipped"):
        masks, _, _ = onnx_predictor.predict_batch(boxes=[[-5, -5, 30, 30]])
    assert masks.shape == (1, 1, 40, 60)
    with pytest.raises(ValueError, match="embedding"):
        onnx_predictor.set_image_embedding(np.zeros((1, 256, 4, 4)), (40, 60), (85, 128))


# ------------------------------------------------------------------------------------------------ loading
def test_load_dispatches_on_the_recorded_graph_kind(exported, tmp_path):
    assert isinstance(rt.load(exported["integrated"]), rt.OnnxPowerSAM)
    pair = [exported["decoder"], exported["encoder"]]
    for source in (exported["folder"], exported["encoder"], exported["decoder"], pair):
        assert isinstance(rt.load(source), rt.OnnxSamPredictor)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(exported["encoder"], lonely / "encoder.onnx")
    with pytest.raises(FileNotFoundError, match="partner"):
        rt.load(lonely / "encoder.onnx")
    with pytest.raises(FileNotFoundError, match="decoder.onnx"):
        rt.load(lonely)
    with pytest.raises(FileNotFoundError):
        rt.load(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="encoder and a decoder"):
        rt.load([exported["integrated"], exported["encoder"]])

    foreign = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
    )
    onnx.save(foreign, tmp_path / "foreign.onnx")
    with pytest.raises(ValueError, match="no PowerSAM metadata"):
        rt.load(tmp_path / "foreign.onnx")
    with pytest.raises(ValueError, match="threads"):
        GraphSession(exported["integrated"], threads=0)


def _spinning_entries(session: GraphSession) -> dict:
    """The session's allow_spinning config entries as ORT holds them (None: never set; ORT raises for those)."""
    from powersam.runtime.session import SPINNING_KEYS

    options, found = session.session.get_session_options(), {}
    for key in SPINNING_KEYS:
        try:
            found[key] = options.get_session_config_entry(key)
        except RuntimeError:  # "SessionOptions does not have configuration with key"
            found[key] = None
    return found


def test_spinning_reaches_the_ort_session_and_none_leaves_ort_s_default(model, exported):
    import powersam

    default = GraphSession(exported["integrated"], threads=2)
    assert default.spinning is None and set(_spinning_entries(default).values()) == {None}
    assert set(_spinning_entries(GraphSession(exported["integrated"], threads=2, spinning=False)).values()) == {"0"}
    pair = rt.load(exported["folder"], threads=2, spinning=True)  # both halves, the partner found by name too
    assert [set(_spinning_entries(s).values()) for s in (pair.encoder, pair.decoder)] == [{"1"}, {"1"}]
    loaded = powersam.load(exported["integrated"], threads=2, spinning=False)  # the Model's ONNX backend
    assert set(_spinning_entries(loaded.detector.session).values()) == {"0"}
    for bad in ("off", 0, 1.0):
        with pytest.raises(ValueError, match="spinning must be True"):
            GraphSession(exported["integrated"], spinning=bad)
    with pytest.raises(ValueError, match="spinning applies to exported ONNX models"):
        powersam.load(model, spinning=True)


def test_providers_default_to_cpu_and_missing_ones_are_explained():
    assert rt.resolve_providers() == ["CPUExecutionProvider"]
    assert rt.resolve_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="not available"):
        rt.resolve_providers("NoSuchExecutionProvider")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ValueError, match="onnxruntime-gpu"):
            rt.resolve_providers(["cuda"])
    else:  # pragma: no cover - GPU builds only
        assert rt.resolve_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_device_strings_keep_their_gpu_index():
    from powersam.runtime.session import device_provider

    assert device_provider("cpu") == "cpu" and device_provider("cuda") == "cuda"
    assert device_provider("cuda:7") == ("cuda", {"device_id": 7})  # was "cuda": GPU 0, silently
    for bad in ("cuda:x", "cuda:-1", "cpu:0"):
        with pytest.raises(ValueError, match="device"):
            device_provider(bad)


# ------------------------------------------------------------------------------------------------ NumPy twins
def test_numpy_preprocessing_is_bit_identical_to_torch():
    image = noise(90, 140)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    want, want_size = torch_preprocess_image(image, IMG_SIZE, mean, std)
    got, got_size = rt_preprocess.preprocess_image(image, IMG_SIZE, mean, std)
    assert got_size == want_size == (82, 128)
    np.testing.assert_array_equal(got, want.numpy())
    with pytest.raises(ValueError, match="uint8"):
        rt_preprocess.preprocess_image(image.astype(np.float32), IMG_SIZE, mean, std)


@pytest.mark.parametrize("backend", ["opencv", "numpy"])
@pytest.mark.parametrize("original", [(90, 140), (600, 400), (50, 30)], ids=["up", "up-tall", "down"])
def test_mask_upsampling_matches_torch(backend, original, monkeypatch):
    if backend == "numpy":
        monkeypatch.setattr(rt_preprocess, "cv2", None)
    size = 256
    input_size = rt_preprocess.preprocess_shape(*original, size)
    logits = np.random.default_rng(0).normal(scale=3, size=(5, 2, size // 4, size // 4)).astype(np.float32)
    want = masks_to_original(torch.from_numpy(logits), input_size, original, size, return_logits=True).numpy()
    got = rt_preprocess.upsample_masks(logits, input_size, original, size, threshold=None, chunk_size=2)
    assert got.shape == want.shape == (5, 2, *original)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)
    binary = rt_preprocess.upsample_masks(logits, input_size, original, size, chunk_size=3)
    assert binary.dtype == bool and (binary != (want > 0)).mean() < 1e-4


# ------------------------------------------------------------------------------------------------ integrity
def test_truncated_or_foreign_files_are_named_not_tracebacks(exported, tmp_path):
    data = exported["integrated"].read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "text.onnx").write_text("not a graph")
    for name, expected in (("truncated", "cannot load it"), ("empty", "empty"), ("text", "cannot load it")):
        with pytest.raises(rt.GraphIntegrityError, match=expected):
            rt.load(tmp_path / f"{name}.onnx")


def test_damaged_weights_are_refused_by_their_digest(exported, tmp_path):
    import onnx

    model = onnx.load(str(exported["integrated"]))
    assert any(p.key == "powersam.weights_sha256" for p in model.metadata_props)
    largest = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    offset = bytes(exported["integrated"].read_bytes()).find(largest.raw_data) + len(largest.raw_data) // 2
    data = bytearray(exported["integrated"].read_bytes())
    data[offset : offset + 64] = bytes(range(64))  # what a few damaged bytes inside a weight tensor do
    (tmp_path / "damaged.onnx").write_bytes(bytes(data))
    with pytest.raises(rt.GraphIntegrityError, match="do not match the digest"):
        rt.load(tmp_path / "damaged.onnx")


def test_a_saturating_int8_graph_is_warned_about_on_cpus_without_vnni(tmp_path, monkeypatch, caplog):
    from powersam.runtime import session as session_module

    monkeypatch.setattr(session_module, "cpu_has_vnni", lambda: False)
    props = {"powersam.quantization": "int8-qdq-static; weights int8 per-channel symmetric; activations uint8 per-tensor"}
    with caplog.at_level("WARNING", logger="powersam.runtime.session"):
        session_module._warn_if_saturating(tmp_path / "g.onnx", props)
        assert "saturate" in caplog.text
        caplog.clear()
        seven = {"powersam.quantization": props["powersam.quantization"].replace("int8 per", "int8 (7-bit range) per")}
        session_module._warn_if_saturating(tmp_path / "g.onnx", seven)
        assert caplog.text == ""


def test_predictor_given_paths_says_how_to_open_them(tmp_path):
    with pytest.raises(TypeError, match="powersam.runtime.load"):
        rt.OnnxSamPredictor(str(tmp_path / "encoder.onnx"), str(tmp_path / "decoder.onnx"))
