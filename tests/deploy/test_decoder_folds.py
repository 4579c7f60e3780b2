"""The mask decoder's inference folds in exported graphs: at an input with >= MANY_TOKENS image tokens the exported
decoder carries them (fewer nodes than SAM's op sequence) and must give SAM's outputs for any prompt batch, point
count and mask-input sharing, including ones the trace did not see (one prompt, more tokens than FEW_TOKENS)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from powersam.deploy.onnx_export import export_onnx
from powersam.models.sam.transformer import FEW_TOKENS, MANY_TOKENS, reference_ops
from test_onnx_export import assert_integrated_parity, decoder_feeds, detecting_powersam, session

FOLD_SIZE = 256  # 16×16 = 256 image tokens: the folds apply (at the export tests' 128 they do not)


@pytest.fixture(scope="module")
def model():
    assert (FOLD_SIZE // 16) ** 2 >= MANY_TOKENS
    return detecting_powersam(FOLD_SIZE, seed=3)


@pytest.fixture(scope="module")
def decoders(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("folds")
    folded = export_onnx(model, folder / "folded", interactive=True)[1]
    with reference_ops():
        plain = export_onnx(model, folder / "plain", interactive=True)[1]
    return folded, plain


def node_count(path) -> int:
    return len(onnx.load(str(path)).graph.node)


def reference_decoder(model, embedding, coords, labels, mask_input):
    """SAM's op sequence in PyTorch (no folds), all four mask tokens."""
    with torch.no_grad(), reference_ops():
        points = (torch.from_numpy(coords), torch.from_numpy(labels).int())
        masks = None if mask_input is None else torch.from_numpy(mask_input)
        sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=masks)
        sparse = sparse[:, :-1]  # the graph leaves the padding point to the caller
        if dense.shape[0] != coords.shape[0]:
            dense = dense.expand(coords.shape[0], -1, -1, -1)
        return model.mask_decoder(torch.from_numpy(embedding), model.prompt_encoder.get_dense_pe(), sparse, dense,
                                  multimask_output=4)


def test_the_exported_decoder_carries_the_folds(decoders):
    folded, plain = decoders
    assert node_count(folded) < node_count(plain)


@pytest.mark.parametrize("batch, points, mask", [
    (1, 1, None), (3, 2, None), (4, 3, "shared"), (3, 2, "per-prompt"), (2, FEW_TOKENS, None),
])
def test_folded_decoder_graph_gives_sams_outputs(model, decoders, batch, points, mask):
    rng = np.random.default_rng(batch * 10 + points)
    grid = FOLD_SIZE // 16
    embedding = rng.normal(size=(1, 256, grid, grid)).astype(np.float32)
    coords = rng.uniform(0, FOLD_SIZE, size=(batch, points, 2)).astype(np.float32)
    labels = rng.choice([0, 1], size=(batch, points)).astype(np.float32)
    mask_input = None
    if mask is not None:
        mask_input = rng.normal(size=(1 if mask == "shared" else batch, 1, 4 * grid, 4 * grid)).astype(np.float32)
    ref_masks, ref_iou = (t.numpy() for t in reference_decoder(model, embedding, coords, labels, mask_input))
    for graph in decoders:
        masks, iou = session(graph).run(None, decoder_feeds(embedding, coords, labels, mask_input))
        assert masks.shape == ref_masks.shape == (batch, 4, 4 * grid, 4 * grid)
        np.testing.assert_allclose(masks, ref_masks, rtol=0, atol=1e-4 * np.abs(ref_masks).max())
        np.testing.assert_allclose(iou, ref_iou, rtol=0, atol=1e-5)


@pytest.mark.parametrize("max_det", [1, 6])
def test_folded_integrated_graph_matches_pytorch(model, tmp_path_factory, max_det):
    """The integrated graph is traced with several detections; one detection (and more) must decode alike."""
    graph = export_onnx(model, tmp_path_factory.mktemp("folds_int") / "m.onnx", score_thr=0.0, max_det=max_det)[0]
    image = np.random.default_rng(5).integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    assert assert_integrated_parity(model, graph, image, 0.0, 0.6, max_det) == max_det
