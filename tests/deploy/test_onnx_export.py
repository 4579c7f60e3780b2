"""ONNX export: the integrated graph and the interactive pair against the PyTorch model, metadata, CLI helpers."""
from __future__ import annotations

import argparse
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from powersam.deploy.graphs import EncoderGraph, bicubic_upsample_2x
from powersam.deploy.metadata import FORMAT_VERSION, GraphMetadata
from powersam.cli.export import EXPORT_FORMATS, add_export_arguments, register_export_format, run_export
from powersam.deploy.onnx_export import export_onnx, interactive_paths
from powersam.models.zoo import build_model
from powersam.predictor import SamPredictor
from powersam.runtime.preprocess import preprocess_image

IMG_SIZE = 128
CLASSES = ["insulator", "bushing", "breaker"]


def calibrate_batch_norm(model: torch.nn.Module, forward) -> None:
    """Set every BatchNorm's statistics from one train-mode ``forward(model)`` on noise, so a random model's
    features and scores vary instead of collapsing onto the biases; leaves the model in eval mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        forward(model)
    model.eval()


def detecting_powersam(img_size: int = IMG_SIZE, seed: int = 0) -> torch.nn.Module:
    """A random-weight PowerSAM whose detector fires: BatchNorm statistics calibrated on noise and objectness
    biased up."""
    torch.manual_seed(seed)
    model = build_model("powersam_s", img_size=img_size, class_names=CLASSES)
    calibrate_batch_norm(model, lambda m: m.forward_integrated(torch.randn(2, 3, img_size, img_size)))
    make_head_fire(model.box_generator.bbox_head)
    return model


def make_head_fire(head: torch.nn.Module, weight_scale: float = 1.0) -> None:
    """Bias a random YOLOX head's objectness up (and classes to neutral) so it detects; ``weight_scale`` < 1 shrinks
    the predictor weights so that scores stay apart instead of saturating at 1."""
    with torch.no_grad():
        for conv_obj, conv_cls in zip(head.multi_level_conv_obj, head.multi_level_conv_cls):
            conv_obj.weight.mul_(weight_scale)
            conv_cls.weight.mul_(weight_scale)
            torch.nn.init.constant_(conv_obj.bias, 1.0)
            torch.nn.init.constant_(conv_cls.bias, 0.0)


@pytest.fixture(scope="module")
def model():
    return detecting_powersam()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    integrated = export_onnx(model, folder / "powersam.onnx", score_thr=0.3, nms_iou=0.6, max_det=50)
    pair = export_onnx(model, folder / "interactive", interactive=True)
    return {"integrated": integrated[0], "encoder": pair[0], "decoder": pair[1]}


def session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, size=(90, 140, 3), dtype=np.uint8)


def preprocess(model, image):
    return preprocess_image(image, model.img_size, model.pixel_mean.flatten().tolist(), model.pixel_std.flatten().tolist())


def run_integrated(sess, x, input_size, conf, iou, max_det):
    feeds = {
        "image": x,
        "input_size": np.asarray(input_size, dtype=np.int64),
        "score_thr": np.asarray(conf, dtype=np.float32),
        "nms_iou": np.asarray(iou, dtype=np.float32),
        "max_det": np.asarray(max_det, dtype=np.int64),
    }
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.parametrize(
    "conf, iou, max_det",
    [(0.3, 0.6, 50), (0.0, 0.5, 40), (0.0, 0.0, 100), (0.45, 1.0, 7)],
    ids=["default", "all-candidates", "iou0", "iou1-capped"],
)
def test_integrated_graph_matches_pytorch(model, exported, image, conf, iou, max_det):
    assert_integrated_parity(model, exported["integrated"], image, conf, iou, max_det)


def assert_integrated_parity(model, graph, image, conf, iou, max_det) -> int:
    """Same preprocessed input → same embedding, same detections in the same order, same masks; returns the count."""
    x, input_size = preprocess(model, image)
    out = run_integrated(session(graph), x, input_size, conf, iou, max_det)
    with torch.no_grad():
        dets, embedding, ref_input_size = model._detect_and_embed(image, conf, iou, max_det)
        ref_logits, _ = model.segment_boxes(embedding, dets["boxes"])
    assert tuple(ref_input_size) == input_size

    ref_embedding = embedding.numpy()
    assert np.abs(out["image_embeddings"] - ref_embedding).max() <= 1e-4 * np.abs(ref_embedding).max()
    n = dets["boxes"].shape[0]
    assert 0 < n <= max_det
    # Ties closer than float rounding could legitimately swap places; the models here have none.
    assert np.all(-np.diff(dets["scores"].numpy()) > 1e-6)
    assert out["boxes"].shape == (n, 4) and out["labels"].dtype == np.int64
    np.testing.assert_array_equal(out["labels"], dets["labels"].numpy())
    np.testing.assert_allclose(out["boxes"], dets["boxes"].numpy(), rtol=0, atol=1e-3)
    np.testing.assert_allclose(out["scores"], dets["scores"].numpy(), rtol=0, atol=1e-5)
    assert out["boxes"][:, [1, 3]].max() <= input_size[0], "boxes are clamped to the resized image"
    assert out["mask_logits"].shape == (n, 1, model.img_size // 4, model.img_size // 4)
    ref_masks = ref_logits.numpy() > 0
    assert min(mask_iou(a, b) for a, b in zip(out["mask_logits"] > 0, ref_masks)) >= 0.99
    return n


def test_trained_tiny_model_matches_pytorch(tiny_pipeline_run, tmp_path):
    """The same checks on weights that training moved (the tiny pipeline run's student, detector included)."""
    import powersam.runtime as rt
    from powersam.data.coco import CocoInstances

    run_dir, _, _ = tiny_pipeline_run
    trained = build_model(checkpoint=run_dir / "powersam_s.pt").eval()
    data = CocoInstances(run_dir / "data", split=None)
    integrated = export_onnx(trained, tmp_path / "trained.onnx")[0]
    encoder, _ = export_onnx(trained, tmp_path / "pair", interactive=True)
    onnx_predictor, torch_predictor = rt.load(encoder, threads=1), SamPredictor(trained)
    for index in range(2):
        sample = data[index]
        assert assert_integrated_parity(trained, integrated, sample.image, 0.0, 0.65, 5) == 5  # no near-ties
        onnx_predictor.set_image(sample.image)
        torch_predictor.set_image(sample.image)
        got = onnx_predictor.predict_batch(boxes=sample.boxes, multimask_output=False)
        want = torch_predictor.predict_batch(boxes=sample.boxes, multimask_output=False)
        np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-4)
        assert min(mask_iou(a, b) for a, b in zip(got[0][:, 0], want[0][:, 0])) >= 0.99


@pytest.mark.parametrize("conf, max_det", [(0.999, 50), (0.3, 0)], ids=["nothing-scores", "max_det-0"])
def test_integrated_graph_with_zero_detections(model, exported, image, conf, max_det):
    sess = session(exported["integrated"])
    x, input_size = preprocess(model, image)
    out = run_integrated(sess, x, input_size, conf, 0.5, max_det)
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["labels"].shape == (0,)
    assert out["mask_logits"].shape == (0, 1, IMG_SIZE // 4, IMG_SIZE // 4)
    assert out["image_embeddings"].shape == (1, 256, IMG_SIZE // 16, IMG_SIZE // 16)


def test_non_finite_boxes_are_dropped_like_pytorch(model, image, tmp_path):
    """An overflowing exp gives infinite boxes; PyTorch's NMS drops them, so the graph must too."""
    import copy

    broken = copy.deepcopy(model)
    torch.nn.init.constant_(broken.box_generator.bbox_head.multi_level_conv_reg[2].bias, 100.0)  # exp(100·32) = inf
    path = export_onnx(broken, tmp_path / "inf.onnx")[0]
    x, input_size = preprocess(model, image)
    out = run_integrated(session(path), x, input_size, 0.0, 0.5, 200)
    with torch.no_grad():
        dets, _, _ = broken._detect_and_embed(image, 0.0, 0.5, 200)
    assert np.isfinite(out["boxes"]).all() and np.isfinite(out["mask_logits"]).all()
    assert len(out["boxes"]) == len(dets["boxes"]) > 0
    np.testing.assert_array_equal(out["labels"], dets["labels"].numpy())


def test_score_threshold_is_inclusive(model, exported, image):
    """score ≥ score_thr is kept, as in YOLOXHead.predict (ONNX NonMaxSuppression alone would use >)."""
    sess = session(exported["integrated"])
    x, input_size = preprocess(model, image)
    scores = run_integrated(sess, x, input_size, 0.3, 0.5, 50)["scores"]
    threshold = scores[2]
    kept = run_integrated(sess, x, input_size, threshold, 0.5, 50)["scores"]
    assert len(kept) == 3 and kept[-1] == threshold


def resize_modes_of(graph: onnx.ModelProto) -> set[str]:
    return {a.s.decode() for n in graph.graph.node if n.op_type == "Resize" for a in n.attribute if a.name == "mode"}


def test_integrated_graph_structure(exported):
    graph = onnx.load(str(exported["integrated"]))
    onnx.checker.check_model(graph, full_check=True)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = {node.op_type for node in graph.graph.node}
    assert "NonMaxSuppression" in ops and "BatchNormalization" not in ops
    resize_modes = resize_modes_of(graph)
    # The fuse neck's ×2 bicubic runs as Pad + depthwise Conv + DepthToSpace; only the PAFPN's nearest Resize remains.
    assert resize_modes == {"nearest"} and "DepthToSpace" in ops
    assert [i.name for i in graph.graph.input] == ["image", "input_size", "score_thr", "nms_iou", "max_det"]
    assert [o.name for o in graph.graph.output] == ["boxes", "scores", "labels", "mask_logits", "image_embeddings"]


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (2, 5, 7, 9), (1, 2, 1, 3)])
def test_bicubic_upsample_2x_equals_interpolate(shape):
    x = torch.randn(shape) * 10
    want = torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    torch.testing.assert_close(bicubic_upsample_2x(x), want, rtol=0, atol=2e-5)


def test_metadata_round_trip(model, exported):
    props = {p.key: p.value for p in onnx.load(str(exported["integrated"])).metadata_props}
    meta = GraphMetadata.from_props(props)
    assert meta.graph == "integrated" and meta.model_name == "powersam_s" and meta.img_size == IMG_SIZE
    assert meta.class_names == CLASSES and json.loads(props["powersam.class_names"]) == CLASSES
    assert meta.pixel_mean == pytest.approx(model.pixel_mean.flatten().tolist())
    assert meta.pixel_std == pytest.approx(model.pixel_std.flatten().tolist())
    assert (meta.score_thr, meta.nms_iou, meta.max_det) == (pytest.approx(0.3), pytest.approx(0.6), 50)
    assert meta.upsample_mode == "bicubic" and meta.format_version == FORMAT_VERSION and meta.powersam_version
    assert GraphMetadata.from_props(meta.to_props()) == meta

    encoder = GraphMetadata.from_props({p.key: p.value for p in onnx.load(str(exported["encoder"])).metadata_props})
    decoder = GraphMetadata.from_props({p.key: p.value for p in onnx.load(str(exported["decoder"])).metadata_props})
    assert (encoder.graph, encoder.partner) == ("encoder", "decoder.onnx")
    assert (decoder.graph, decoder.partner) == ("decoder", "encoder.onnx")
    assert decoder.mask_tokens == [0, 1, 2, 3] and decoder.num_mask_tokens == 4


def test_metadata_rejects_foreign_or_newer_files():
    with pytest.raises(ValueError, match="no PowerSAM metadata"):
        GraphMetadata.from_props({"producer": "someone"}, source="x.onnx")
    meta = GraphMetadata(graph="encoder", model_name="m", img_size=64, pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1])
    newer = {**meta.to_props(), "powersam.format_version": str(FORMAT_VERSION + 1)}
    with pytest.raises(ValueError, match="newer"):
        GraphMetadata.from_props(newer)
    with pytest.raises(ValueError, match="graph must be one of"):
        GraphMetadata(graph="both", model_name="m", img_size=64, pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1])


def test_encoder_graph_matches_pytorch(model, exported, image):
    x, _ = preprocess(model, image)
    sess = session(exported["encoder"])
    names = [o.name for o in sess.get_outputs()]
    assert names == ["image_embeddings", "stage1", "stage2", "stage3"]
    outputs = dict(zip(names, sess.run(None, {"image": x})))
    with torch.no_grad():
        stage1, stage2, stage3, embedding = model.image_encoder.forward_multiscale(torch.from_numpy(x))
    for name, ref in zip(names, (embedding, stage1, stage2, stage3)):
        ref = ref.numpy()
        assert np.abs(outputs[name] - ref).max() <= 1e-4 * np.abs(ref).max(), name


def decoder_feeds(embedding, coords, labels, mask_input=None):
    s = 4 * embedding.shape[-1]
    return {
        "image_embeddings": embedding,
        "point_coords": np.asarray(coords, dtype=np.float32),
        "point_labels": np.asarray(labels, dtype=np.float32),
        "mask_input": np.zeros((1, 1, s, s), np.float32) if mask_input is None else mask_input.astype(np.float32),
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
    }


@pytest.mark.parametrize("batch, points", [(1, 1), (3, 2), (5, 4)])
def test_decoder_graph_matches_pytorch_for_dynamic_batch_and_points(model, exported, batch, points):
    rng = np.random.default_rng(batch)
    embedding = rng.normal(size=(1, 256, IMG_SIZE // 16, IMG_SIZE // 16)).astype(np.float32)
    coords = rng.uniform(0, IMG_SIZE, size=(batch, points, 2)).astype(np.float32)
    labels = rng.choice([-1, 0, 1, 2, 3], size=(batch, points)).astype(np.float32)
    masks, iou = session(exported["decoder"]).run(None, decoder_feeds(embedding, coords, labels))
    with torch.no_grad():
        points = (torch.from_numpy(coords), torch.from_numpy(labels).int())
        sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=None)
        sparse = sparse[:, :-1]  # the PyTorch encoder appends a padding point; the graph leaves that to the caller
        ref_masks, ref_iou = model.mask_decoder(
            torch.from_numpy(embedding), model.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=4
        )
    assert masks.shape == (batch, 4, IMG_SIZE // 4, IMG_SIZE // 4) and iou.shape == (batch, 4)
    np.testing.assert_allclose(masks, ref_masks.numpy(), rtol=0, atol=1e-4 * np.abs(ref_masks.numpy()).max())
    np.testing.assert_allclose(iou, ref_iou.numpy(), rtol=0, atol=1e-5)


def test_decoder_broadcasts_a_single_mask_input(model, exported):
    """A 1×1×s×s mask input serves every prompt of the batch, as in the PyTorch decoder."""
    rng = np.random.default_rng(7)
    embedding = rng.normal(size=(1, 256, IMG_SIZE // 16, IMG_SIZE // 16)).astype(np.float32)
    coords = rng.uniform(0, IMG_SIZE, size=(3, 2, 2))
    labels = np.array([[1, -1], [0, -1], [1, -1]])
    mask = rng.normal(size=(1, 1, IMG_SIZE // 4, IMG_SIZE // 4)).astype(np.float32)
    sess = session(exported["decoder"])
    shared = sess.run(None, decoder_feeds(embedding, coords, labels, mask))[0]
    repeated = sess.run(None, decoder_feeds(embedding, coords, labels, np.repeat(mask, 3, axis=0)))[0]
    unmasked = sess.run(None, decoder_feeds(embedding, coords, labels))[0]
    np.testing.assert_allclose(shared, repeated, rtol=0, atol=1e-5)
    assert np.abs(shared - unmasked).max() > 1e-3, "has_mask_input switches the mask embedding on"


def test_interactive_pair_matches_sam_predictor(model, exported, image):
    import powersam.runtime as rt

    onnx_predictor = rt.load(exported["encoder"], threads=1)
    torch_predictor = SamPredictor(model)
    onnx_predictor.set_image(image)
    torch_predictor.set_image(image)
    box = np.array([10, 20, 100, 80])
    for kwargs in (
        dict(box=box, multimask_output=False),
        dict(point_coords=[[30, 40], [60, 50]], point_labels=[1, 0]),
        dict(point_coords=[[30, 40]], point_labels=[1], box=box, multimask_output=4),
    ):
        got, want = onnx_predictor.predict(**kwargs), torch_predictor.predict(**kwargs)
        np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-5)
        np.testing.assert_allclose(got[2], want[2], rtol=0, atol=1e-4)
        assert min(mask_iou(a, b) for a, b in zip(got[0], want[0])) >= 0.99


@pytest.fixture(scope="module")
def single_mask_bilinear(model, tmp_path_factory):
    """An interactive pair exported with a fixed single-mask decoder and bilinear fuse upsampling."""
    folder = tmp_path_factory.mktemp("variant")
    return export_onnx(
        model, folder / "single.onnx", interactive=True, multimask_output=False, upsample_mode="bilinear"
    )


def test_fixed_multimask_export(single_mask_bilinear):
    paths = single_mask_bilinear
    assert [p.name for p in paths] == ["single.encoder.onnx", "single.decoder.onnx"]
    assert interactive_paths(paths[0].parent / "single.onnx") == tuple(paths)
    decoder = GraphMetadata.from_props({p.key: p.value for p in onnx.load(str(paths[1])).metadata_props})
    assert decoder.mask_tokens == [0] and decoder.partner == "single.encoder.onnx"

    import powersam.runtime as rt

    predictor = rt.load(paths[1])  # the decoder finds its encoder through the metadata
    predictor.set_image(np.zeros((40, 50, 3), np.uint8))
    masks, scores, _ = predictor.predict(box=[5, 5, 30, 30], multimask_output=False)
    assert masks.shape == (1, 40, 50) and scores.shape == (1,)
    with pytest.raises(ValueError, match="re-export"):
        predictor.predict(box=[5, 5, 30, 30], multimask_output=True)


def test_bilinear_export_swaps_only_the_fuse_upsampling(model, single_mask_bilinear):
    graph = onnx.load(str(single_mask_bilinear[0]))
    assert resize_modes_of(graph) == {"linear"}
    assert GraphMetadata.from_props({p.key: p.value for p in graph.metadata_props}).upsample_mode == "bilinear"
    x = torch.randn(1, 3, IMG_SIZE, IMG_SIZE)
    got = session(single_mask_bilinear[0]).run(["image_embeddings"], {"image": x.numpy()})[0]
    with torch.no_grad():
        bilinear = EncoderGraph(model.image_encoder, "bilinear")(x)[0].numpy()
        bicubic = model.image_encoder(x).numpy()
    assert np.abs(got - bilinear).max() <= 1e-4 * np.abs(bilinear).max()
    assert np.abs(got - bicubic).max() > 1e-3 * np.abs(bicubic).max(), "bilinear really differs from bicubic"
    assert model.image_encoder.fuse_stage3.op_list[1].mode == "bicubic", "the caller's model is untouched"
    assert not model.image_encoder.is_reparameterized


def test_export_rejects_bad_requests(model, tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "a.onnx", opset=13)
    with pytest.raises(ValueError, match="img_size"):
        export_onnx(model, tmp_path / "a.onnx", img_size=256)
    with pytest.raises(ValueError, match="checkpoint"):
        export_onnx(model, tmp_path / "a.onnx", checkpoint="weights.pth")
    with pytest.raises(ValueError, match="multimask_output"):
        export_onnx(model, tmp_path / "a.onnx", multimask_output=3)
    with pytest.raises(ValueError, match="score_thr"):
        export_onnx(model, tmp_path / "a.onnx", score_thr=1.5)
    sam_only = build_model("powersam_s", img_size=64, with_detector=False)
    with pytest.raises(ValueError, match="interactive=True"):
        export_onnx(sam_only, tmp_path / "a.onnx")
    with pytest.raises(TypeError):
        export_onnx(42, tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()


def test_cli_helpers_export_and_accept_new_formats(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    args = parser.parse_args(
        ["--model", "powersam_s", "--out", str(tmp_path / "cli"), "--size", "64", "--interactive", "--multimask", "1"]
    )
    assert args.format == "onnx" and args.multimask == 1
    assert run_export(args) == 0
    assert (tmp_path / "cli" / "encoder.onnx").is_file() and (tmp_path / "cli" / "decoder.onnx").is_file()
    assert "wrote" in capsys.readouterr().out

    calls = []
    register_export_format("fake", lambda a: calls.append(a.fake_flag) or [], lambda p: p.add_argument("--fake-flag"))
    try:
        parser = argparse.ArgumentParser()
        add_export_arguments(parser)
        args = parser.parse_args(["--model", "powersam_s", "--out", "x", "--format", "fake", "--fake-flag", "on"])
        assert run_export(args) == 0 and calls == ["on"]
    finally:
        EXPORT_FORMATS.pop("fake")
        from powersam.cli import export as export_cli

        export_cli._ARGUMENT_HOOKS.pop()
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    with pytest.raises(SystemExit):  # unregistered again
        parser.parse_args(["--model", "powersam_s", "--out", "x", "--format", "fake"])


def test_graphs_past_the_protobuf_limit_keep_their_weights_beside(model, image, tmp_path, monkeypatch):
    """SAM ViT-H's encoder exceeds protobuf's 2 GiB: such graphs are written as X.onnx + X.onnx.data. Simulated here
    by lowering the threshold; the tracer's one-file-per-tensor output must not litter the folder."""
    import powersam.runtime as rt
    from powersam.deploy import onnx_io, quantize
    from powersam.deploy.precision import to_float16

    single_file = export_onnx(model, tmp_path / "small", interactive=True)[0]
    assert not onnx_io.external_data_path(single_file).exists()
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_BYTES", 2**20)
    encoder, decoder = export_onnx(model, tmp_path / "pair", interactive=True)
    assert sorted(p.name for p in (tmp_path / "pair").iterdir()) == [
        "decoder.onnx", "decoder.onnx.data", "encoder.onnx", "encoder.onnx.data"]
    assert encoder.stat().st_size < 2**20 < onnx_io.external_data_path(encoder).stat().st_size
    big, small = rt.load(encoder, threads=1), rt.load(single_file, threads=1)
    for predictor in (big, small):
        predictor.set_image(image)
    np.testing.assert_array_equal(big.features, small.features)

    half = to_float16(encoder, tmp_path / "half" / "encoder.onnx")
    to_float16(encoder, half)  # rewriting replaces the data file instead of appending to it
    assert onnx_io.external_data_path(half).stat().st_size < 0.6 * onnx_io.external_data_path(encoder).stat().st_size
    int8 = quantize.quantize_onnx(encoder, tmp_path / "pair" / "encoder.int8.onnx", num_calib=1)
    predictor = rt.load(int8, threads=1)
    predictor.set_image(image)
    assert predictor.features.shape == small.features.shape


def test_cli_export_from_a_checkpoint_alone(tiny_pipeline_run, tmp_path, capsys):
    """A checkpoint written by powersam names its model and input size: `powersam export --checkpoint X` is enough."""
    from powersam.cli import main

    run_dir, cfg, _ = tiny_pipeline_run
    out = tmp_path / "student.onnx"
    assert main(["export", "--checkpoint", str(run_dir / "powersam_s.pt"), "--out", str(out)]) == 0
    meta = GraphMetadata.from_props({p.key: p.value for p in onnx.load(str(out)).metadata_props})
    assert (meta.graph, meta.model_name, meta.img_size) == ("integrated", "powersam_s", cfg.img_size)
    assert main(["export", "--out", str(tmp_path / "none.onnx")]) == 1
    assert "model name" in capsys.readouterr().err
