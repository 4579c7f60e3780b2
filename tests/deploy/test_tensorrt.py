"""TensorRT: clear failures without TensorRT or a GPU (CLI exits 1), profile defaults, engine metadata, the build
driven end to end against a stand-in with TensorRT 11's API; real engines against ONNX Runtime only where TensorRT
and a CUDA GPU exist."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import onnx
import pytest

from powersam.cli import main
from powersam.cli.export import register_export_formats
from powersam.deploy.metadata import GraphMetadata
from powersam.deploy.tensorrt import (
    DIMENSION_RANGES,
    TensorRTSession,
    TensorRTUnavailable,
    build_engine,
    engine_metadata_path,
    engine_props,
    load_engine,
    require_tensorrt,
)
from powersam.deploy.onnx_export import export_onnx
from powersam.deploy.tensorrt.build import _set_profile
from tensorrt_standin import StandIn
from test_onnx_export import detecting_powersam


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make ``import tensorrt`` fail even where it is installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def install_cuda_runtime(monkeypatch, devices: int) -> None:
    """A stand-in ``cuda.bindings.runtime`` reporting ``devices`` CUDA devices."""
    success = "cudaSuccess"
    cudart = types.SimpleNamespace(
        cudaError_t=types.SimpleNamespace(cudaSuccess=success),
        cudaGetDeviceCount=lambda: (success, devices) if devices else ("cudaErrorNoDevice", 0),
    )
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)


@pytest.fixture
def tensorrt_without_gpu(monkeypatch):
    """A stand-in TensorRT and CUDA runtime binding that report no device."""
    install_cuda_runtime(monkeypatch, 0)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.0.0"))


def export_tensorrt(tmp_path, *extra: str) -> int:
    register_export_formats()
    return main(["export", "--model", "powersam_s", "--size", "128", "--format", "tensorrt",
                 "--out", str(tmp_path / "model.engine"), *extra])


def test_cli_without_tensorrt_exits_1(no_tensorrt, tmp_path, capsys):
    assert export_tensorrt(tmp_path, "--interactive", "--int8") == 1
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err and "pip install tensorrt" in err
    assert list(tmp_path.iterdir()) == [], "nothing is exported before TensorRT is known to be usable"


def test_cli_without_gpu_exits_1(tensorrt_without_gpu, tmp_path, capsys):
    assert export_tensorrt(tmp_path) == 1
    assert "no CUDA device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_old_tensorrt_is_refused(monkeypatch):
    install_cuda_runtime(monkeypatch, 1)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(TensorRTUnavailable, match="8.6.1 is too old"):
        require_tensorrt()


def test_api_without_tensorrt(no_tensorrt, tmp_path):
    with pytest.raises(TensorRTUnavailable, match="not installed"):
        require_tensorrt()
    assert issubclass(TensorRTUnavailable, RuntimeError), "the CLI maps RuntimeError to exit code 1"
    with pytest.raises(FileNotFoundError):  # argument errors come first
        build_engine(tmp_path / "missing.onnx", tmp_path / "x.engine")

    engine = tmp_path / "encoder.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(FileNotFoundError, match="sidecar"):
        TensorRTSession(engine)
    meta = GraphMetadata(graph="encoder", model_name="m", img_size=128, pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3)
    engine_metadata_path(engine).write_text(json.dumps({"metadata": meta.to_props()}))
    with pytest.raises(TensorRTUnavailable):
        TensorRTSession(engine)
    with pytest.raises(FileNotFoundError):
        load_engine(tmp_path / "missing-folder")


def test_engine_metadata_names_partner_engines():
    meta = GraphMetadata(graph="encoder", model_name="m", img_size=128, pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3,
                         partner="model.decoder.onnx")
    props = engine_props(meta.to_props())
    assert GraphMetadata.from_props(props).partner == "model.decoder.engine"
    assert engine_metadata_path("out/model.encoder.engine").name == "model.encoder.engine.json"
    no_partner = GraphMetadata(graph="integrated", model_name="m", img_size=128, pixel_mean=[0.0] * 3,
                               pixel_std=[1.0] * 3, class_names=["a"])
    assert engine_props(no_partner.to_props()) == no_partner.to_props()


class FakeTensor:
    def __init__(self, name, shape, is_shape_tensor=False):
        self.name, self.shape, self.is_shape_tensor = name, shape, is_shape_tensor


class FakeNetwork:
    def __init__(self, *tensors):
        self.tensors = tensors
        self.num_inputs = len(tensors)

    def get_input(self, i):
        return self.tensors[i]


class FakeProfile:
    def __init__(self):
        self.shapes, self.values = {}, {}

    def set_shape(self, name, low, opt, high):
        self.shapes[name] = (low, opt, high)

    def set_shape_input(self, name, low, opt, high):
        self.values[name] = (low, opt, high)


def test_profile_defaults_and_overrides():
    decoder = FakeNetwork(
        FakeTensor("image_embeddings", [1, 256, 8, 8]),
        FakeTensor("point_coords", [-1, -1, 2]),
        FakeTensor("point_labels", [-1, -1]),
        FakeTensor("mask_input", [-1, 1, 32, 32]),
        FakeTensor("has_mask_input", [1]),
    )
    meta = GraphMetadata(graph="decoder", model_name="m", img_size=128, pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3,
                         mask_tokens=[0])
    profile = FakeProfile()
    _set_profile(profile, decoder, meta, {}, {}, {"point_coords": (8, 5, 2)})
    prompts, points = DIMENSION_RANGES["num_prompts"], DIMENSION_RANGES["num_points"]
    assert set(profile.shapes) == {"point_coords", "point_labels", "mask_input"}, "static inputs need no profile"
    assert profile.shapes["point_coords"] == ((prompts[0], points[0], 2), (prompts[1], points[1], 2), (8, 5, 2))
    assert profile.shapes["mask_input"][2] == (DIMENSION_RANGES["num_mask_inputs"][2], 1, 32, 32)
    with pytest.raises(ValueError, match="unknown inputs"):
        _set_profile(FakeProfile(), decoder, meta, {"points": (1, 1, 2)}, {}, {})

    integrated = FakeNetwork(FakeTensor("image", [1, 3, 128, 128]), FakeTensor("max_det", [], is_shape_tensor=True))
    meta = GraphMetadata(graph="integrated", model_name="m", img_size=128, pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3,
                         class_names=["a"], max_det=50)
    profile = FakeProfile()
    _set_profile(profile, integrated, meta, {}, {}, {"max_det": [300]})
    assert profile.values == {"max_det": ([1], [50], [300])} and profile.shapes == {}
    unknown = FakeNetwork(FakeTensor("extra", [-1, 4]))
    with pytest.raises(ValueError, match="default range"):
        _set_profile(FakeProfile(), unknown, meta, {}, {}, {})


# ------------------------------------------------------------------------------------------------ TensorRT 11 stand-in
FLOAT16, INT8 = onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8


@pytest.fixture
def standin(monkeypatch):
    """TensorRT 11's API without a GPU (see tensorrt_standin.py), and a CUDA runtime with one device."""
    recorder = StandIn()
    install_cuda_runtime(monkeypatch, 1)
    monkeypatch.setitem(sys.modules, "tensorrt", recorder.module())
    return recorder


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt")
    model = detecting_powersam()
    integrated = export_onnx(model, folder / "powersam.onnx", max_det=30)[0]
    encoder, decoder = export_onnx(model, folder / "pair", interactive=True)
    return {"integrated": integrated, "encoder": encoder, "decoder": decoder}


def sidecar(engine) -> dict:
    return json.loads(engine_metadata_path(engine).read_text())


def test_fp16_pair_builds_strongly_typed_from_fp16_graphs(standin, graphs, tmp_path):
    engines = [build_engine(graphs[k], tmp_path / f"{k}.engine") for k in ("encoder", "decoder")]
    assert [p.name for p in sorted(tmp_path.iterdir())] == [
        "decoder.engine", "decoder.engine.json", "encoder.engine", "encoder.engine.json"], "no conversion litter"
    strongly_typed = 1 << 1
    for network, config in zip(standin.networks, standin.configs):
        assert network.flags == strongly_typed and not config.flags, "precision comes from the graph, not flags"
        weights = [t for t in network.parsed.graph.initializer if len(t.dims) == 4]
        assert weights and all(t.data_type == FLOAT16 for t in weights)
        assert config.pools[0] == 4 * 2**30
    encoder, decoder = (sidecar(e) for e in engines)
    assert encoder["precision"] == decoder["precision"] == "fp16" and encoder["tensorrt_version"] == "11.4.0.106"
    assert GraphMetadata.from_props(encoder["metadata"]).partner == "decoder.engine"
    profile = standin.configs[1].profiles[0]
    assert set(profile.shapes) == {"point_coords", "point_labels", "mask_input"}
    assert profile.shapes["point_coords"][2][:2] == (DIMENSION_RANGES["num_prompts"][2], DIMENSION_RANGES["num_points"][2])


def test_int8_integrated_builds_from_symmetric_qdq(standin, graphs, tmp_path, caplog):
    engine = build_engine(graphs["integrated"], tmp_path / "powersam.engine", "int8", num_calib=2)
    parsed = standin.networks[0].parsed
    initializers = {t.name: t for t in parsed.graph.initializer}
    quantize = [n for n in parsed.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize, "INT8 comes from Q/DQ nodes in the graph"
    for node in quantize:
        zero_point = onnx.numpy_helper.to_array(initializers[node.input[2]])
        assert zero_point.dtype == np.int8 and not zero_point.any()
    assert sidecar(engine)["precision"] == "int8"
    assert standin.configs[0].profiles[0].values == {"max_det": ([1], [30], [30])}

    with caplog.at_level("WARNING"):
        build_engine(graphs["decoder"], tmp_path / "decoder.engine", "int8")
    assert "not INT8-quantised" in caplog.text and sidecar(tmp_path / "decoder.engine")["precision"] == "fp16"


def test_fp32_builds_from_the_export_itself(standin, graphs, tmp_path):
    engine = build_engine(graphs["encoder"], tmp_path / "encoder.engine", "fp32", workspace_gb=0.5)
    assert standin.networks[0].parsed_path == str(graphs["encoder"])
    assert sidecar(engine)["precision"] == "fp32" and standin.configs[0].pools[0] == 2**29
    with pytest.raises(ValueError, match="precision"):
        build_engine(graphs["encoder"], tmp_path / "x.engine", "int4")
    with pytest.raises(ValueError, match="workspace"):
        build_engine(graphs["encoder"], tmp_path / "x.engine", workspace_gb=0)


def test_cli_builds_engines(standin, tmp_path, capsys):
    assert export_tensorrt(tmp_path, "--interactive") == 0
    out = capsys.readouterr().out
    for name in ("model.encoder.onnx", "model.decoder.onnx", "model.encoder.engine", "model.decoder.engine"):
        assert f"wrote {tmp_path / name}" in out
    assert sidecar(tmp_path / "model.encoder.engine")["precision"] == "fp16"
    assert export_tensorrt(tmp_path / "x", "--int8", "--no-fp16") == 1
    assert "choose one" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ real TensorRT
def _tensorrt_or_skip():
    pytest.importorskip("tensorrt")
    try:
        require_tensorrt()
    except TensorRTUnavailable as err:
        pytest.skip(str(err))


def test_encoder_engine_matches_onnx_runtime(tmp_path):
    """Only on a machine with TensorRT and a CUDA GPU: FP32 engine of the encoder ≈ ONNX Runtime."""
    _tensorrt_or_skip()
    import powersam.runtime as rt

    encoder, decoder = export_onnx(detecting_powersam(), tmp_path / "pair", interactive=True)
    engines = [build_engine(p, p.with_suffix(".engine"), precision="fp32") for p in (encoder, decoder)]
    predictor = load_engine(engines[0])
    reference = rt.load(encoder, threads=1)
    image = np.random.default_rng(0).integers(0, 256, size=(90, 140, 3), dtype=np.uint8)
    for p in (predictor, reference):
        p.set_image(image)
    np.testing.assert_allclose(predictor.features, reference.features, atol=1e-3, rtol=1e-3)
    box = np.array([10, 10, 80, 60])
    masks_trt, _, _ = predictor.predict(box=box, multimask_output=False)
    masks_ort, _, _ = reference.predict(box=box, multimask_output=False)
    assert (masks_trt == masks_ort).mean() > 0.99


def test_predict_and_eval_route_engines_to_tensorrt(tmp_path):
    from powersam.deploy.predict.segment import is_onnx, load_model

    assert is_onnx("model.engine") and is_onnx("model.ENGINE") and not is_onnx("model.pt")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(str(tmp_path / "missing.engine"))
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(FileNotFoundError, match="sidecar"):  # reached TensorRTSession, not ONNX Runtime
        load_model(str(engine))
    folder = tmp_path / "pair"
    folder.mkdir()
    (folder / "encoder.engine").write_bytes(b"")
    assert is_onnx(folder)
