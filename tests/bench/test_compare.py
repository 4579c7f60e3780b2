"""``powersam bench --compare-reference``: the reference flow is SAM's, and the report has the agreed structure.

No timing is asserted: a tiny configuration (S=128, a 90×160 image, 2 boxes, 1 repeat) checks the report's fields,
that every path decoded masks of the same shape, and that they agree with the reference flow within the tolerances
the equivalence tests use.
"""
from __future__ import annotations

import argparse
import importlib
import json

import numpy as np
import pytest
import torch

from powersam.bench.compare import FP32_MIN_IOU, INT8_MIN_MEAN_IOU, CompareSettings, agreement, compare_markdown
from powersam.bench.reference import ReferenceSamPredictor
from powersam.cli.bench import add_bench_arguments, run_bench
from powersam.transforms import ResizeLongestSide
from reference_impls import import_segment_anything

# --ort-spinning default,off: the plain ONNX rows keep their names, each followed by its spinning-off twin
PATHS = ["reference", "reference-reparam", "torch", "onnx", "onnx[spin=off]", "onnx-int8", "onnx-int8[spin=off]"]


def _tiny_meta_sam(img_size: int = 256) -> torch.nn.Module:
    import_segment_anything()
    modeling = importlib.import_module("segment_anything.modeling")
    torch.manual_seed(0)
    dim = 32
    encoder = modeling.ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=64, depth=1, num_heads=2,
                                       out_chans=dim, window_size=4, global_attn_indexes=(0,))
    prompt_encoder = modeling.PromptEncoder(embed_dim=dim, image_embedding_size=(img_size // 16, img_size // 16),
                                            input_image_size=(img_size, img_size), mask_in_chans=4)
    decoder = modeling.MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=2,
                                   iou_head_hidden_dim=32,
                                   transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64,
                                                                          num_heads=2))
    return modeling.Sam(encoder, prompt_encoder, decoder).eval()


def test_reference_flow_equals_segment_anything_predictor():
    """The re-stated flow gives Meta's predict_torch masks and IoU on Meta's own model (rounding only)."""
    sam = _tiny_meta_sam()
    predictor_module = importlib.import_module("segment_anything.predictor")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 140, 3), dtype=np.uint8)
    image[20:60, 30:90] = [200, 40, 40]
    boxes = np.array([[10.0, 5.0, 80.0, 60.0], [40.0, 30.0, 139.0, 89.0], [0.0, 0.0, 30.0, 20.0]])

    ours = ReferenceSamPredictor(sam)
    ours.set_image(image)
    masks, iou = ours.predict_boxes(boxes)

    theirs = predictor_module.SamPredictor(sam)
    resize = ResizeLongestSide(256)
    theirs.set_torch_image(torch.as_tensor(resize.apply_image(image)).permute(2, 0, 1)[None].contiguous(),
                           image.shape[:2])
    box_t = torch.as_tensor(theirs.transform.apply_boxes(boxes, image.shape[:2]), dtype=torch.float32)
    with torch.no_grad():
        want_masks, want_iou, _ = theirs.predict_torch(None, None, boxes=box_t, multimask_output=False,
                                                       return_logits=True)
    torch.testing.assert_close(ours.features, theirs.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(iou, want_iou.numpy(), rtol=1e-5, atol=1e-5)
    want = want_masks.numpy()
    assert masks.shape == want.shape and masks.dtype == np.bool_
    assert ((masks != (want > 0)) & (np.abs(want) > 1e-4)).sum() == 0  # only logits within rounding of 0 may flip


def test_agreement_counts_iou_and_differing_pixels():
    ref = np.zeros((2, 1, 4, 5), dtype=bool)
    ref[0, 0, :2] = True
    ref[1, 0, :, :1] = True
    other = ref.copy()
    other[0, 0, 0, 0] = False
    record = agreement(other, ref)
    assert record["iou"] == [pytest.approx(9 / 10), 1.0] and record["differing_fraction"] == pytest.approx(1 / 40)
    assert agreement(other[:, :, :3], ref) == {"shape": [2, 1, 3, 5], "same_shape": False}
    with pytest.raises(ValueError, match="boxes >= 1"):
        CompareSettings(boxes=0)
    with pytest.raises(ValueError, match="settle >= 0"):
        CompareSettings(settle=-0.1)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("compare")
    args = add_bench_arguments(argparse.ArgumentParser()).parse_args(
        ["--compare-reference", "--size", "128", "--frame", "90x160", "--boxes", "2", "--repeats", "1",
         "--warmup", "0", "--num-calib", "4", "--probe-size", "64", "--ort-spinning", "default,off",
         "--out", str(out)])
    assert run_bench(args) == 0
    return json.loads((out / "reference.json").read_text()), (out / "reference.md").read_text()


def test_report_structure_and_masks_agree(report):
    payload, markdown = report
    assert set(payload) >= {"machine", "settings", "paths", "roofline", "command"}
    assert payload["settings"]["frame"] == [90, 160] and payload["settings"]["boxes"] == 2
    assert payload["settings"]["ort_spinning"] == ["default", "off"]
    assert payload["settings"]["settle_ms"] == 50.0  # the default pause before every frame
    assert [p["path"] for p in payload["paths"]] == PATHS
    reference_ms = payload["paths"][0]["latency_ms_median"]
    roof = payload["roofline"]
    assert roof["probe_gflops_median"] > 0
    for key in ("full", "paper"):
        work = roof["work"][key]
        assert work["total_gmacs"] == pytest.approx(work["encoder_gmacs"] + 2 * work["decoder_gmacs_per_box"])
        assert roof["roofline_ms"][key] == pytest.approx(2e3 * work["total_gmacs"] / roof["probe_gflops_roofline"])
    for path in payload["paths"]:
        assert set(path["parts_ms"]) == {"preprocess", "encoder", "decoder", "postprocess"}
        assert path["vs_reference"] == pytest.approx(path["latency_ms_median"] / reference_ms)
        assert path["vs_roofline_best"]["full"] == pytest.approx(
            path["latency_ms_median"] / roof["roofline_ms"]["full"])
        assert 0 < path["vs_roofline"]["full"] <= path["vs_roofline_best"]["full"] * (1 + 1e-9)  # paired <= bound
        agree = path["agreement"]
        assert agree["shape"] == [2, 1, 90, 160], path["path"]
        if path["path"].startswith("onnx-int8"):
            assert agree["mean_iou"] >= INT8_MIN_MEAN_IOU, agree
        else:
            assert agree["min_iou"] >= FP32_MIN_IOU, (path["path"], agree)
        assert agree["within_tolerance"] is True
    assert payload["paths"][0]["agreement"]["differing_fraction"] == 0.0
    assert markdown.count("\n| ") == len(PATHS) + 3  # header row, the paths, two roofline rows
    assert "right before every frame" in markdown
    assert compare_markdown(payload) in markdown


def test_compare_rejects_detected_boxes(tmp_path, capsys):
    args = add_bench_arguments(argparse.ArgumentParser()).parse_args(
        ["--compare-reference", "--boxes", "detected", "--out", str(tmp_path)])
    assert run_bench(args) == 1 and "K given boxes" in capsys.readouterr().err
