"""FP16 graphs for TensorRT: what stays float32, and agreement with the float32 export (run on ONNX Runtime's CPU
provider, which computes FP16 nodes without an FP16 kernel in float32 but rounds every tensor between nodes)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import powersam.runtime as rt
from powersam.cli import main
from powersam.cli.export import register_export_formats
from powersam.deploy.onnx_export import export_onnx
from powersam.deploy.onnx_graph import detection_path
from powersam.deploy.precision import (FLOAT32_OP_TYPES, PRECISION_KEY, drop_float16_round_trips,
                                       float16_blocked_nodes, to_float16)
from test_onnx_export import detecting_powersam, mask_iou  # helpers of the export tests
from test_quantize import props, scene

pytestmark = pytest.mark.usefixtures("quiet_onnxruntime")

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
# Measured on the random-weight powersam_s at S=128: embedding cosine 0.99999, box-prompt mask IoU ≥ 0.997 against
# float32, identical detections. On the model trained on real insulator photos (S=512, docs/benchmarks.md §3):
# the same detections on 15 held-out photos, boxes within 0.2 px, scores within 4e-4, mask IoU mean 0.99.
MIN_EMBEDDING_COSINE = 0.999
MIN_MASK_IOU = 0.95


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp16")
    model = detecting_powersam()
    integrated = export_onnx(model, folder / "powersam.onnx", score_thr=0.3, nms_iou=0.6, max_det=20)[0]
    encoder, decoder = export_onnx(model, folder / "pair", interactive=True)
    half = {
        "integrated": to_float16(integrated, folder / "powersam.fp16.onnx"),
        # the pair's halves keep their file names (the encoder names its partner) in a folder of their own
        "encoder": to_float16(encoder, folder / "pair16" / "encoder.onnx"),
        "decoder": to_float16(decoder, folder / "pair16" / "decoder.onnx"),
    }
    return {"integrated": integrated, "encoder": encoder, "decoder": decoder}, half


def input_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every node input, by inferred shapes."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    return types


def test_io_stays_float32_and_metadata_is_kept(graphs):
    source, half = graphs
    for kind in source:
        a, b = onnx.load(str(source[kind])), onnx.load(str(half[kind]))
        assert [(i.name, i.type.tensor_type.elem_type) for i in a.graph.input] == \
               [(i.name, i.type.tensor_type.elem_type) for i in b.graph.input]
        assert [(o.name, o.type.tensor_type.elem_type) for o in a.graph.output] == \
               [(o.name, o.type.tensor_type.elem_type) for o in b.graph.output]
        meta = props(half[kind])
        assert meta.pop(PRECISION_KEY).startswith("fp16") and meta == props(source[kind])
        weights = [t for t in b.graph.initializer if t.dims and np.prod(t.dims) > 64]
        assert weights and all(t.data_type == FLOAT16 for t in weights), f"{kind}: weights stored FP16"
        assert half[kind].stat().st_size < 0.6 * source[kind].stat().st_size


def test_detection_bookkeeping_and_norms_stay_float32(graphs):
    source, half = graphs
    model = onnx.load(str(source["integrated"]))
    predictors, bookkeeping = detection_path(model)
    by_name = {n.name: n for n in model.graph.node}
    assert len(predictors) == 9 and all(by_name[p].op_type == "Conv" for p in predictors)
    ops = {by_name[name].op_type for name in bookkeeping}
    assert {"NonMaxSuppression", "Exp", "Sigmoid", "TopK"} <= ops
    assert not any(name.startswith(("/mask_decoder", "/prompt_encoder")) for name in bookkeeping)
    assert float16_blocked_nodes(model, "integrated") == sorted(bookkeeping)
    assert float16_blocked_nodes(model, "encoder") == []

    converted = onnx.load(str(half["integrated"]))
    types = input_types(converted)
    float_inputs = lambda node: [types.get(x) for x in node.input if x and types.get(x) in (FLOAT, FLOAT16)]
    nodes = {n.name: n for n in converted.graph.node}
    for name in bookkeeping:
        assert all(t == FLOAT for t in float_inputs(nodes[name])), f"{name} ({nodes[name].op_type}) computes FP32"
    norms = [n for n in converted.graph.node if n.op_type in FLOAT32_OP_TYPES]
    assert norms and all(t == FLOAT for n in norms for t in float_inputs(n))
    matmuls = [n for n in converted.graph.node if n.op_type in ("Conv", "MatMul") and n.name not in predictors]
    assert matmuls and all(t == FLOAT16 for n in matmuls for t in float_inputs(n)), "the compute is FP16"


def test_float32_chains_do_not_round_trip_through_float16(graphs):
    """ONNX Runtime's converter casts between every two kept-float32 nodes (fp32 → fp16 → fp32), which would round
    box coordinates and scores to FP16 inside the float32 detection path; the conversion removes those pairs."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    source, half = graphs
    model = onnx.load(str(source["integrated"]))
    raw = convert_float_to_float16(model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST,
                                   *FLOAT32_OP_TYPES], node_block_list=float16_blocked_nodes(model, "integrated"))
    assert drop_float16_round_trips(raw) > 0, "the converter's round trips exist"
    converted = onnx.load(str(half["integrated"]))
    assert drop_float16_round_trips(converted) == 0, "none left in the written graph"


def test_integrated_fp16_agrees_with_fp32(graphs):
    source, half = graphs
    fp32, fp16 = rt.load(source["integrated"], threads=1), rt.load(half["integrated"], threads=1)
    image, _ = scene(5)
    a, b = fp32.predict(image, conf=0.3), fp16.predict(image, conf=0.3)
    assert len(a.boxes) > 0 and len(a.boxes) == len(b.boxes)
    # Near-tied scores of the random-weight detector may swap places: pair each detection with its nearest twin.
    twin = [int(np.argmin(np.abs(b.boxes - box).max(1) + 1e3 * (b.labels != label)))
            for box, label in zip(a.boxes, a.labels)]
    assert sorted(twin) == list(range(len(b.boxes))), "one FP16 detection for each FP32 detection"
    np.testing.assert_array_equal(a.labels, b.labels[twin])
    np.testing.assert_allclose(a.boxes, b.boxes[twin], atol=1.0)
    np.testing.assert_allclose(a.scores, b.scores[twin], atol=5e-3)
    assert min(mask_iou(x, b.masks[j]) for x, j in zip(a.masks, twin)) >= MIN_MASK_IOU


def test_interactive_fp16_agrees_with_fp32(graphs):
    source, half = graphs
    fp32, fp16 = rt.load(source["encoder"], threads=1), rt.load(half["encoder"], threads=1)
    image, boxes = scene(6)
    masks = []
    for predictor in (fp32, fp16):
        predictor.set_image(image)
        masks.append(predictor.predict_batch(boxes=boxes, multimask_output=False)[0][:, 0])
    a, b = fp32.features.ravel().astype(np.float64), fp16.features.ravel().astype(np.float64)
    assert not np.array_equal(a, b), "the FP16 graph really computes differently"
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= MIN_EMBEDDING_COSINE
    assert min(mask_iou(x, y) for x, y in zip(*masks)) >= MIN_MASK_IOU


def test_bad_arguments(graphs, tmp_path):
    source, _ = graphs
    with pytest.raises(FileNotFoundError):
        to_float16(tmp_path / "missing.onnx", tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="differ"):
        to_float16(source["encoder"], source["encoder"])
    int8 = onnx.load(str(source["encoder"]))
    entry = int8.metadata_props.add()
    entry.key, entry.value = "powersam.quantization", "int8-qdq-static; ..."
    onnx.save(int8, str(tmp_path / "int8.onnx"))
    with pytest.raises(ValueError, match="INT8"):
        to_float16(tmp_path / "int8.onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_fp16_export_hook_pairs_the_twins(tmp_path, capsys):
    register_export_formats()
    out = tmp_path / "pair"
    assert main(["export", "--model", "powersam_s", "--size", "128", "--interactive", "--fp16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("encoder.onnx", "decoder.onnx", "encoder.fp16.onnx", "decoder.fp16.onnx"):
        assert f"wrote {out / name}" in printed
    assert props(out / "encoder.fp16.onnx")["powersam.partner"] == "decoder.fp16.onnx"
    assert props(out / "encoder.onnx")["powersam.partner"] == "decoder.onnx", "the float pair is untouched"
    predictor = rt.load(out / "encoder.fp16.onnx", threads=1)
    assert predictor.decoder.path == out / "decoder.fp16.onnx"
