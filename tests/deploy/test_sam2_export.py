"""SAM 2 as an interactive ONNX pair: high-resolution features between the graphs, SAM 2's prompt tokens, squashed
input and single-mask fallback, against the PyTorch SamPredictor (itself checked against Meta's SAM 2 elsewhere)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

import powersam.runtime as rt
from powersam.deploy.metadata import HIGH_RES_NAMES, GraphMetadata
from powersam.deploy.onnx_export import export_onnx
from powersam.models.zoo import build_model
from powersam.predictor import SamPredictor

pytestmark = pytest.mark.usefixtures("quiet_onnxruntime")

SIZE = 128  # hiera_t: 32² tokens


@pytest.fixture(scope="module")
def sam2():
    torch.manual_seed(0)
    return build_model("sam2_hiera_t", img_size=SIZE).eval()


@pytest.fixture(scope="module")
def pair(sam2, tmp_path_factory):
    return export_onnx(sam2, tmp_path_factory.mktemp("sam2") / "pair", interactive=True)


@pytest.fixture(scope="module")
def predictors(sam2, pair):
    image = np.random.default_rng(0).integers(0, 256, size=(90, 130, 3), dtype=np.uint8)  # not square: squashed
    onnx_predictor, torch_predictor = rt.load(pair[0], threads=1), SamPredictor(sam2)
    onnx_predictor.set_image(image)
    torch_predictor.set_image(image)
    return onnx_predictor, torch_predictor


def metadata(path) -> GraphMetadata:
    return GraphMetadata.from_props({p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                                     .metadata_props})


def test_graph_interface_and_metadata(pair):
    encoder, decoder = (onnx.load(str(p)) for p in pair)
    assert [o.name for o in encoder.graph.output] == ["image_embeddings", *HIGH_RES_NAMES]
    assert [i.name for i in decoder.graph.input][-2:] == list(HIGH_RES_NAMES)
    # the window position embedding's tiling traces to a plain Tile (a `tile` call exported as an If subgraph)
    assert not {"If", "Loop"} & {node.op_type for node in encoder.graph.node}
    enc, dec = metadata(pair[0]), metadata(pair[1])
    assert enc.resize_mode == "squash" and dec.prompt_order == "sam2"
    assert (dec.stability_delta, dec.stability_thresh) == (pytest.approx(0.05), pytest.approx(0.98))
    assert dec.mask_tokens == [0, 1, 2, 3]


def test_embedding_and_high_res_features_match(predictors):
    onnx_predictor, torch_predictor = predictors
    reference = torch_predictor.features.numpy()
    assert np.abs(onnx_predictor.features - reference).max() <= 1e-4 * np.abs(reference).max()
    assert [f.shape for f in onnx_predictor._high_res] == [(1, 32, SIZE // 4, SIZE // 4), (1, 64, SIZE // 8, SIZE // 8)]


@pytest.mark.parametrize("prompt", [
    dict(box=np.array([10, 20, 100, 80]), multimask_output=False),  # corners + padding, single-mask fallback
    dict(point_coords=[[30, 40], [90, 60]], point_labels=[1, 0]),  # clicks + padding, three masks
    dict(point_coords=[[30, 40]], point_labels=[1], box=np.array([10, 20, 100, 80]), multimask_output=False),
    dict(point_coords=[[60, 50]], point_labels=[1], multimask_output=4),
], ids=["box", "clicks", "box+click", "all-tokens"])
def test_prompts_match_pytorch(predictors, prompt):
    onnx_predictor, torch_predictor = predictors
    (got_masks, got_scores, got_low), (want_masks, want_scores, want_low) = (
        onnx_predictor.predict(**prompt), torch_predictor.predict(**prompt))
    np.testing.assert_allclose(got_scores, want_scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_low, want_low, rtol=0, atol=1e-4 * np.abs(want_low).max())
    for got, want in zip(got_masks, want_masks):
        assert np.logical_and(got, want).sum() / max(np.logical_or(got, want).sum(), 1) >= 0.99


def test_single_mask_fallback_picks_the_same_token_per_prompt(predictors):
    onnx_predictor, torch_predictor = predictors
    boxes = np.array([[5, 5, 60, 50], [40, 30, 125, 88], [0, 0, 130, 90], [70, 10, 90, 30]])
    got = onnx_predictor.predict_batch(boxes=boxes, multimask_output=False)
    want = torch_predictor.predict_batch(boxes=boxes, multimask_output=False)
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-5)
    all_tokens = onnx_predictor.predict_batch(boxes=boxes, multimask_output=4)[1]
    assert all(score in row for score, row in zip(got[1][:, 0], all_tokens)), "one of the decoder's own outputs"


def test_squashed_masks_are_resized_straight_to_the_original_size(predictors):
    """As Meta's SAM2ImagePredictor.postprocess_masks: one bilinear resize of the low-res logits."""
    _, torch_predictor = predictors
    logits, _, low_res = torch_predictor.predict(box=np.array([10, 20, 100, 80]), multimask_output=False,
                                                 return_logits=True)
    direct = F.interpolate(torch.from_numpy(low_res)[None], (90, 130), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(logits, direct.numpy(), rtol=0, atol=1e-5)


def test_misuse_is_refused(sam2, pair, tmp_path):
    predictor = rt.load(pair[0], threads=1)
    with pytest.raises(ValueError, match="high_res_features"):
        predictor.set_image_embedding(np.zeros((1, 256, SIZE // 16, SIZE // 16), np.float32), (90, 130), (SIZE, SIZE))
    with pytest.raises(ValueError, match="multimask_output=None"):
        export_onnx(sam2, tmp_path / "single", interactive=True, multimask_output=False)
