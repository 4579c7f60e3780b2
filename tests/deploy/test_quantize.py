"""INT8 static quantisation (ONNX Runtime, QDQ): node selection, calibration data, agreement with FP32, CLI hooks."""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

import powersam.runtime as rt
from powersam.data.synth import render_scene
from powersam.cli.export import register_export_formats
from powersam.deploy.metadata import GraphMetadata
from powersam.runtime.integrity import cpu_has_vnni
from powersam.cli.export import add_export_arguments, int8_runner
from powersam.deploy.onnx_export import export_onnx
from powersam.deploy.quantize import (
    QUANTIZATION_KEY,
    ImageCalibrationReader,
    calibration_images,
    quantize_export,
    quantize_onnx,
    quantized_path,
    select_nodes_to_quantize,
)
from powersam.runtime.preprocess import preprocess_image
from test_onnx_export import IMG_SIZE, detecting_powersam, mask_iou  # helpers of the export tests

# Measured on the random-weight powersam_s at S=128 with 4 synthetic calibration scenes (seeds 0-2 of the model):
# embedding cosine ≥ 0.981, box-prompt mask IoU vs FP32 mean 0.90-0.93 (min 0.82). The floors leave room for
# other CPUs' kernels while still failing on a broken calibration (uncalibrated ranges give cosine ≈ 0.5).
MIN_EMBEDDING_COSINE = 0.95
MIN_MEAN_MASK_IOU = 0.8
NUM_YOLOX_LEVELS = 3  # each level has class, box and objectness predictor convolutions kept in float


def scene(seed: int, height: int = 120, width: int = 160):
    image, instances = render_scene(np.random.default_rng(seed), height, width)
    boxes = []
    for _, mask in instances:
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return image, np.asarray(boxes, dtype=np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def props(path) -> dict[str, str]:
    """The graph's metadata without the weights digest, which every file has of its own (its weights differ)."""
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert len(meta.pop("powersam.weights_sha256", "")) == 64, f"{path} records no weights digest"
    return meta


def op_counts(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def convs_with_int8_weights(path) -> int:
    """Convolutions whose weight comes through a DequantizeLinear of an int8 initializer."""
    graph = onnx.load(str(path)).graph
    int8 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8}
    return sum(1 for n in graph.node if n.op_type == "Conv" and n.input[1] in dequantized)


@pytest.fixture(scope="module")
def model():
    return detecting_powersam()


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    for i in range(4):
        Image.fromarray(scene(i)[0]).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("quant")
    integrated = export_onnx(model, folder / "powersam.onnx", score_thr=0.3, max_det=20)[0]
    encoder, decoder = export_onnx(model, folder / "pair", interactive=True)
    return {"integrated": integrated, "encoder": encoder, "decoder": decoder}


@pytest.fixture(scope="module")
def int8_encoder(exported, calib_dir):
    # Not quantized_path(): the CLI hook test writes that file.
    return quantize_onnx(exported["encoder"], exported["encoder"].with_name("encoder.q.onnx"), calib_dir, num_calib=4)


@pytest.fixture(scope="module")
def int8_integrated(exported, calib_dir):
    src = exported["integrated"]
    return quantize_onnx(src, quantized_path(src), calib_dir, num_calib=4, method="percentile")


# ------------------------------------------------------------------------------------------------ interactive pair
def test_int8_encoder_graph_and_metadata(exported, int8_encoder):
    counts = op_counts(int8_encoder)
    total_convs = op_counts(exported["encoder"])["Conv"]
    assert counts["QuantizeLinear"] >= total_convs and counts["DequantizeLinear"] >= 2 * total_convs
    assert convs_with_int8_weights(int8_encoder) == total_convs, "every encoder convolution gets int8 weights"
    assert int8_encoder.stat().st_size < 0.5 * exported["encoder"].stat().st_size

    source, quantized = props(exported["encoder"]), props(int8_encoder)
    record = quantized.pop(QUANTIZATION_KEY)
    assert quantized == source, "the source's metadata is kept as is"
    assert record.startswith("int8-qdq-static") and "minmax on 4 images" in record and f"{total_convs} Conv" in record
    # each exported erf-GELU is one ONNX Runtime Gelu node, which the quantised graph then runs as one kernel
    gelus = [n for n in onnx.load(str(int8_encoder)).graph.node if n.op_type == "Gelu"]
    assert len(gelus) == op_counts(exported["encoder"])["Erf"] > 0 and counts["Erf"] == 0
    assert all(n.domain == "com.microsoft" for n in gelus) and "GELU as one com.microsoft Gelu node" in record


def test_int8_encoder_agrees_with_fp32(exported, int8_encoder):
    fp32 = rt.load(exported["encoder"], threads=1)
    int8 = rt.load(int8_encoder, threads=1)
    assert int8.decoder.path == exported["decoder"], "the INT8 encoder pairs with the float decoder"
    cosines, ious = [], []
    for seed in (100, 101, 102):  # not the calibration scenes
        image, boxes = scene(seed)
        results = []
        for predictor in (fp32, int8):
            predictor.set_image(image)
            masks, _, _ = predictor.predict_batch(boxes=boxes, multimask_output=False)
            results.append((predictor.features.copy(), masks[:, 0]))
        (emb_fp32, masks_fp32), (emb_int8, masks_int8) = results
        assert not np.array_equal(emb_fp32, emb_int8), "the INT8 graph really computes differently"
        cosines.append(cosine(emb_fp32, emb_int8))
        ious += [mask_iou(a, b) for a, b in zip(masks_fp32, masks_int8)]
    assert min(cosines) >= MIN_EMBEDDING_COSINE, cosines
    assert np.mean(ious) >= MIN_MEAN_MASK_IOU, ious


def test_decoder_is_kept_float(exported, tmp_path):
    out = quantize_onnx(exported["decoder"], tmp_path / "decoder.int8.onnx")
    assert op_counts(out) == op_counts(exported["decoder"])
    assert "QuantizeLinear" not in op_counts(out)
    assert props(out)[QUANTIZATION_KEY].startswith("none")
    with pytest.raises(ValueError, match="float32"):
        select_nodes_to_quantize(onnx.load(str(exported["decoder"])), "decoder")


# ------------------------------------------------------------------------------------------------ integrated graph
def test_integrated_float_tail(exported, int8_integrated):
    source = onnx.load(str(exported["integrated"]))
    chosen = set(select_nodes_to_quantize(source, "integrated"))
    convs = {n.name for n in source.graph.node if n.op_type == "Conv"}
    kept_float = convs - chosen
    assert len(kept_float) == 3 * NUM_YOLOX_LEVELS, sorted(kept_float)
    assert all("multi_level_conv_" in name for name in kept_float), "exactly the class/box/objectness predictors"
    assert not any(name.startswith(("/mask_decoder", "/prompt_encoder")) for name in chosen)

    counts = op_counts(int8_integrated)
    for op in ("NonMaxSuppression", "TopK", "LayerNormalization", "Softmax"):
        assert counts[op] >= 1, f"{op} stays in the graph, in float"
    # The pre-processed graph may merge nodes, but every quantised convolution has int8 weights.
    assert convs_with_int8_weights(int8_integrated) == counts["Conv"] - 3 * NUM_YOLOX_LEVELS
    assert "percentile" in props(int8_integrated)[QUANTIZATION_KEY]


def test_integrated_int8_runs_in_runtime(exported, int8_integrated):
    fp32 = rt.load(exported["integrated"], threads=1)
    int8 = rt.load(int8_integrated, threads=1)
    assert int8.class_names == fp32.class_names and int8.max_det == 20
    image, _ = scene(103)
    feeds = ImageCalibrationReader([image], fp32.metadata).feeds(0)  # the runtime's preprocessing
    feeds["score_thr"] = np.asarray(0.0, dtype=np.float32)
    out_fp32, out_int8 = fp32.session.run(feeds), int8.session.run(feeds)
    assert cosine(out_fp32["image_embeddings"], out_int8["image_embeddings"]) >= MIN_EMBEDDING_COSINE
    detections = out_int8["boxes"].shape[0]
    assert 0 < detections <= 20 and out_int8["boxes"].shape[1] == 4 and out_int8["mask_logits"].shape[0] == detections
    result = int8.predict(image, conf=0.0)
    assert len(result.boxes) == detections and result.masks.shape[1:] == image.shape[:2]
    empty = int8.predict(image, conf=1.0)  # degenerate: nothing passes the threshold
    assert len(empty.boxes) == 0


def test_tensorrt_form_is_symmetric_int8_with_float_biases(exported, calib_dir, tmp_path):
    """TensorRT reads only zero-point-0 int8 Q/DQ, and dequantizes nothing wider than 8 bits (no int32 biases)."""
    src = exported["encoder"]
    # The agreement check below runs the graph on ONNX Runtime's CPU kernels, whose 8-bit products saturate on CPUs
    # without VNNI (TensorRT's do not): there, 7-bit weights keep the check about the graph, not this CPU.
    out = quantize_onnx(src, src.with_name("encoder.trt.onnx"), calib_dir, num_calib=4, for_tensorrt=True,
                        reduce_range=cpu_has_vnni() is False)
    graph = onnx.load(str(out)).graph
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zero_points = [initializers[n.input[2]] for n in qdq]
    assert qdq and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    dequantized = [initializers[n.input[0]] for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in
                   initializers]
    assert dequantized and all(w.dtype == np.int8 for w in dequantized), "weights int8, biases left float"
    assert convs_with_int8_weights(out) == op_counts(src)["Conv"]
    assert "per-channel symmetric; activations int8 per-tensor symmetric; float biases" in props(out)[QUANTIZATION_KEY]
    assert op_counts(out)["Erf"] == op_counts(src)["Erf"] > 0, "TensorRT's form keeps the standard-op GELU"
    assert not [n for n in onnx.load(str(out)).graph.node if n.domain == "com.microsoft"]

    fp32, int8 = rt.load(src, threads=1), rt.load(out, threads=1)
    image, _ = scene(104)
    for predictor in (fp32, int8):
        predictor.set_image(image)
    assert cosine(fp32.features, int8.features) >= MIN_EMBEDDING_COSINE
    with pytest.raises(ValueError, match="for_tensorrt"):
        quantize_onnx(src, tmp_path / "x.onnx", activation_type="uint8", for_tensorrt=True)


# ------------------------------------------------------------------------------------------------ calibration data
def test_reader_feeds_what_the_runtime_feeds(exported, calib_dir):
    meta = GraphMetadata.from_props(props(exported["integrated"]))
    images = calibration_images(calib_dir, num_calib=4)
    reader = ImageCalibrationReader(images, meta)
    assert len(reader) == 4
    feeds = reader.get_next()
    expected, input_size = preprocess_image(np.asarray(Image.open(images[0]).convert("RGB")), IMG_SIZE,
                                            meta.pixel_mean, meta.pixel_std)
    np.testing.assert_array_equal(feeds["image"], expected)
    assert feeds["input_size"].tolist() == list(input_size) and feeds["input_size"].dtype == np.int64
    assert float(feeds["score_thr"]) == pytest.approx(0.3) and int(feeds["max_det"]) == 20
    assert feeds["score_thr"].shape == () and feeds["max_det"].dtype == np.int64
    assert int(ImageCalibrationReader(images, meta, max_det=1).feeds(0)["max_det"]) == 1

    reader.set_range(2, 4)  # ORT's chunked calibration
    assert [reader.get_next() is not None for _ in range(3)] == [True, True, False]
    with pytest.raises(ValueError, match="outside"):
        reader.set_range(3, 5)
    encoder_meta = GraphMetadata.from_props(props(exported["encoder"]))
    assert set(ImageCalibrationReader(images, encoder_meta).get_next()) == {"image"}
    with pytest.raises(ValueError, match="decoder"):
        ImageCalibrationReader(images, GraphMetadata.from_props(props(exported["decoder"])))
    with pytest.raises(ValueError, match="at least one"):
        ImageCalibrationReader([], meta)


def test_calibration_images_selection(calib_dir, tmp_path):
    assert calibration_images(calib_dir, num_calib=10) == sorted(calib_dir.iterdir())
    picked = calibration_images(calib_dir, num_calib=2)
    assert [p.name for p in picked] == ["000.png", "003.png"], "subsampled evenly, first and last kept"
    assert len(calibration_images(str(calib_dir / "*.png"), num_calib=3)) == 3
    synthetic = calibration_images(None, num_calib=2)
    assert len(synthetic) == 2 and synthetic[0].dtype == np.uint8 and synthetic[0].ndim == 3
    with pytest.raises(FileNotFoundError):
        calibration_images(tmp_path, num_calib=2)  # an empty folder
    with pytest.raises(ValueError, match="num_calib"):
        calibration_images(calib_dir, num_calib=0)
    with pytest.raises(ValueError, match="empty"):
        calibration_images([], num_calib=2)


def test_quantize_onnx_rejects_bad_arguments(exported, tmp_path):
    src = exported["encoder"]
    with pytest.raises(ValueError, match="method"):
        quantize_onnx(src, tmp_path / "x.onnx", method="entropy")
    with pytest.raises(ValueError, match="activation_type"):
        quantize_onnx(src, tmp_path / "x.onnx", activation_type="int4")
    with pytest.raises(ValueError, match="differ"):
        quantize_onnx(src, src)
    with pytest.raises(FileNotFoundError):
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "x.onnx")
    foreign = tmp_path / "foreign.onnx"
    plain = onnx.load(str(src))
    del plain.metadata_props[:]
    onnx.save(plain, str(foreign))
    with pytest.raises(ValueError, match="no PowerSAM metadata"):
        quantize_onnx(foreign, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


# ------------------------------------------------------------------------------------------------ export hooks
def test_int8_export_hook(exported, calib_dir):
    register_export_formats()
    register_export_formats()  # idempotent: a second call adds no duplicate options
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    args = parser.parse_args(["--model", "powersam_s", "--out", "x.onnx", "--interactive", "--int8",
                              "--calib", str(calib_dir), "--num-calib", "2"])
    assert args.int8 and args.num_calib == 2 and args.calib_method == "minmax"

    pair = [exported["encoder"], exported["decoder"]]
    written = int8_runner(lambda a: list(pair))(args)  # the float export is stubbed by the files made above
    assert written == [*pair, quantized_path(exported["encoder"])], "only the encoder gets an INT8 twin"
    assert "on 2 images" in props(written[-1])[QUANTIZATION_KEY]
    assert quantize_export([exported["decoder"]]) == []

    plain = parser.parse_args(["--model", "powersam_s", "--out", "x.onnx", "--calib", str(calib_dir)])
    with pytest.raises(ValueError, match="--int8"):
        int8_runner(lambda a: list(pair))(plain)
    assert int8_runner(lambda a: list(pair))(parser.parse_args(["--model", "m", "--out", "x.onnx"])) == pair


def test_failed_pre_processing_falls_back_without_litter(exported, tmp_path, monkeypatch, caplog):
    """ORT's symbolic shape inference cannot follow the decoder graph and dumps debug files into the cwd on failure;
    the pre-processing then runs without it, and when that fails too the graph is quantised as exported."""
    import powersam.deploy.quantize as quantize
    from powersam.deploy.quantize import _pre_process

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    caplog.set_level("INFO", logger="powersam.deploy.quantize")
    prepared = _pre_process(exported["decoder"], scratch / "prepared.onnx")
    assert "with symbolic shape inference failed" in caplog.text and "retrying without it" in caplog.text
    assert prepared == (scratch / "prepared.onnx").resolve() and prepared.exists()
    assert list(cwd.iterdir()) == [] and Path.cwd() == cwd

    def broken(*args, **kwargs):
        raise Exception("cannot")  # noqa: TRY002 - the tool's own habit

    monkeypatch.setattr(quantize, "quant_pre_process", broken)
    assert _pre_process(exported["decoder"], scratch / "again.onnx") == exported["decoder"]
    assert "quantising the graph as exported" in caplog.text
    assert list(cwd.iterdir()) == [] and Path.cwd() == cwd


def test_integrated_convolutions_get_integer_biases(int8_integrated):
    """Every quantised convolution of the integrated graph must be fusable into QLinearConv: its bias comes through
    a DequantizeLinear (int32), not an exporter Identity (which happens when the pre-processing is skipped)."""
    graph = onnx.load(str(int8_integrated)).graph
    producer = {out: node for node in graph.node for out in node.output}
    quantised = [n for n in graph.node if n.op_type == "Conv" and producer.get(n.input[1]) is not None
                 and producer[n.input[1]].op_type == "DequantizeLinear"]
    biased = [n for n in quantised if len(n.input) > 2 and n.input[2]]
    assert biased and all(producer.get(n.input[2]) is not None
                          and producer[n.input[2]].op_type == "DequantizeLinear" for n in biased)


def test_pre_processing_takes_paths_relative_to_the_callers_cwd(exported, tmp_path, monkeypatch, caplog):
    """`powersam bench --out docs/bench` hands relative graph paths in; they must not resolve against the scratch dir."""
    from powersam.deploy.quantize import _pre_process

    monkeypatch.chdir(exported["encoder"].parent)
    scratch = tmp_path / "scratch_rel"
    scratch.mkdir()
    prepared = _pre_process(Path(exported["encoder"].name), scratch / "prepared.onnx")
    assert "pre-processing failed" not in caplog.text
    assert prepared == (scratch / "prepared.onnx").resolve() and prepared.exists()
    assert Path.cwd() == exported["encoder"].parent


def test_seven_bit_weights_are_chosen_on_cpus_without_vnni(exported, calib_dir, tmp_path, monkeypatch):
    # Measured on an AVX2 EPYC: 8-bit weights with uint8 activations gave an embedding cosine of 0.75 against FP32.
    import powersam.deploy.quantize as quantize_module

    for has_vnni, expected in ((False, True), (True, False)):
        monkeypatch.setattr(quantize_module, "cpu_has_vnni", lambda: has_vnni)
        out = quantize_onnx(exported["encoder"], tmp_path / f"e{has_vnni}.onnx", calib_dir, num_calib=2)
        assert ("(7-bit range)" in props(out)[QUANTIZATION_KEY]) is expected


def test_decoder_matmuls_dynamic_int8_agrees_with_fp32(exported, tmp_path):
    """Opt-in dynamic INT8 of the decoder's weight MatMuls: only those change, masks agree with the float decoder."""
    from powersam.deploy.quantize_decoder import quantize_decoder_matmuls, weight_matmuls

    out = quantize_decoder_matmuls(exported["decoder"], tmp_path / "decoder.dyn.onnx")
    chosen = len(weight_matmuls(onnx.load(str(exported["decoder"]))))
    counts, source = op_counts(out), op_counts(exported["decoder"])
    assert counts["MatMulInteger"] == chosen and counts["DynamicQuantizeLinear"] >= 1
    assert counts["Softmax"] == source["Softmax"] and "decoder int8-dynamic" in props(out)[QUANTIZATION_KEY]
    fp32 = rt.load(exported["encoder"], threads=1)
    int8 = rt.OnnxSamPredictor(fp32.encoder, rt.GraphSession(out, threads=1))
    ious = []
    for seed in (100, 101):
        image, boxes = scene(seed)
        results = [p.set_image(image) or p.predict_batch(boxes=boxes, multimask_output=False)[0] for p in (fp32, int8)]
        ious += [mask_iou(a, b) for a, b in zip(results[0][:, 0], results[1][:, 0])]
    assert np.mean(ious) >= MIN_MEAN_MASK_IOU, ious
    with pytest.raises(ValueError, match="mask decoder"):
        quantize_decoder_matmuls(exported["encoder"], tmp_path / "x.onnx")


def test_int8_decoder_export_pairs_the_two_int8_halves(exported, calib_dir, tmp_path):
    """``decoder=True`` (``--int8-decoder``): the pair's INT8 encoder and its dynamic-INT8 decoder name each other,
    so loading either opens both; an integrated graph carries both quantisations in its one file."""
    import shutil

    pair = [Path(shutil.copy(exported[k], tmp_path / exported[k].name)) for k in ("encoder", "decoder")]
    encoder_int8, decoder_int8 = quantize_export(pair, calib_dir, 2, decoder=True)
    assert (encoder_int8.name, decoder_int8.name) == ("encoder.int8.onnx", "decoder.int8.onnx")
    assert props(encoder_int8)["powersam.partner"] == "decoder.int8.onnx"
    assert props(decoder_int8)["powersam.partner"] == "encoder.int8.onnx"
    assert op_counts(decoder_int8)["MatMulInteger"] > 0 and op_counts(pair[1])["MatMulInteger"] == 0
    for path in (encoder_int8, decoder_int8):
        predictor = rt.load(path, threads=1)
        assert (predictor.encoder.path, predictor.decoder.path) == (encoder_int8, decoder_int8)
    image, boxes = scene(100)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict_batch(boxes=boxes, multimask_output=False)
    assert masks.shape[:2] == (len(boxes), 1) and np.isfinite(scores).all()
    assert quantize_export(pair, calib_dir, 2) == [encoder_int8], "without it the encoder pairs with the float decoder"
    assert props(encoder_int8)["powersam.partner"] == "decoder.onnx"

    integrated = Path(shutil.copy(exported["integrated"], tmp_path / exported["integrated"].name))
    (out,) = quantize_export([integrated], calib_dir, 2, decoder=True)
    record = props(out)[QUANTIZATION_KEY]
    assert record.startswith("int8-qdq-static") and "decoder int8-dynamic" in record
    assert op_counts(out)["MatMulInteger"] > 0 and convs_with_int8_weights(out) > 0
    detections = rt.load(out, threads=1).predict(scene(101)[0], conf=0.0)
    assert np.isfinite(detections.scores).all()


def test_int8_decoder_flag_needs_an_onnx_int8_export(exported):
    register_export_formats()
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    pair = [exported["encoder"], exported["decoder"]]
    args = parser.parse_args(["--model", "m", "--out", "x.onnx", "--int8-decoder"])
    with pytest.raises(ValueError, match="--int8-decoder only applies with --int8"):
        int8_runner(lambda a: list(pair))(args)
    from powersam.cli.export import tensorrt_runner

    args = parser.parse_args(["--model", "m", "--out", "x.engine", "--format", "tensorrt", "--int8", "--int8-decoder"])
    with pytest.raises(ValueError, match="--int8-decoder is for ONNX Runtime"):
        tensorrt_runner(lambda a: list(pair))(args)
