"""Issue 13, item 1: memory of detect-and-segment must not grow with full-resolution planes per detection.

A 1600×2400 image with 16 detections held 16 full bool planes (61 MB) plus a 16-mask float32 chunk (246 MB) at
once; now masks are upsampled one at a time, on the window where they can be set, into run lengths. Both backends,
the Python API and the degenerate cases (1×1 image, 0 detections). The prompted path (``Model.segment``) is bounded
the same way: masks come back as run lengths, never N full-resolution planes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import powersam
import powersam.runtime as rt
from powersam.deploy.onnx_export import export_onnx
from powersam.inference.detect import ImageTooSmall
from powersam.masks import CompactMasks
from test_onnx_export import detecting_powersam  # helpers of the export tests

HEIGHT, WIDTH, DETECTIONS = 1600, 2400, 16
# Bytes the old pipeline held at once: N full-resolution bool planes + a float32 chunk of 16 planes.
OLD_PEAK = DETECTIONS * HEIGHT * WIDTH + 16 * 4 * HEIGHT * WIDTH
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    return detecting_powersam(img_size=64)


@pytest.fixture(scope="module")
def onnx_model(model, tmp_path_factory):
    path = export_onnx(model, tmp_path_factory.mktemp("bounded") / "model.onnx", max_det=DETECTIONS)[0]
    return rt.load(path, threads=1)


def big_image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


def test_onnx_predict_peak_memory_is_bounded(onnx_model):
    image = big_image()
    tracemalloc.start()
    try:
        result = onnx_model.predict(image, conf=0.0, iou=1.0, max_det=DETECTIONS)
        records = result.to_coco(1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(result) == len(records) == DETECTIONS
    assert isinstance(result.compact_masks, CompactMasks) and result.mask_areas().sum() > 0
    print(f"onnx: peak traced {peak / 2**20:.0f} MiB")
    # Old: 61 MB of planes + a 246 MB float chunk. Now: one mask's crop (≤ 4 MB) + bounded strips + logits.
    assert peak < 100 * 2**20 < OLD_PEAK, f"peak traced memory {peak / 2**20:.0f} MiB"


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc (peak RSS reset)")
def test_torch_predict_peak_rss_is_bounded():
    """PyTorch allocations are invisible to tracemalloc: measure the peak RSS of a fresh process around predict()."""
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np, torch
        sys.path.insert(0, {str(REPO / "tests" / "deploy")!r})
        torch.set_num_threads(1)
        from test_onnx_export import detecting_powersam

        def status(key):
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

        model = detecting_powersam(img_size=64)
        image = np.random.default_rng(0).integers(0, 256, size=({HEIGHT}, {WIDTH}, 3), dtype=np.uint8)
        model.predict(image[:64, :64], conf=0.0, max_det=2)  # warm up: lazy allocations of the first call
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        before = status("VmRSS")
        result = model.predict(image, conf=0.0, iou=1.0, max_det={DETECTIONS})
        records = result.to_coco(1)
        print(json.dumps({{"n": len(result), "records": len(records), "growth_kib": status("VmHWM") - before}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["n"] == report["records"] == DETECTIONS
    growth = report["growth_kib"] * 1024
    print(f"torch: peak RSS growth {growth / 2**20:.0f} MiB")
    # Old: ≥ 307 MB (planes + float chunk). Now: the resized input copy, one mask crop, strips, the run lengths.
    assert growth < 120 * 2**20 < OLD_PEAK, f"peak RSS grew by {growth / 2**20:.0f} MiB during predict"


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_degenerate_images(model, onnx_model, backend):
    net = model if backend == "torch" else onnx_model
    one_pixel = np.full((1, 1, 3), 128, np.uint8)
    # by default refused, named, before any network runs: it gave confident detections with empty masks
    for image, size in ((one_pixel, "1×1"), (big_image()[:15, :300], "300×15")):
        with pytest.raises(ImageTooSmall, match=f"image is {size} pixels.*min_side=0"):
            net.predict(image, conf=0.0, max_det=5)
    tiny = net.predict(one_pixel, conf=0.0, max_det=5, min_side=0)  # asked for: run, and flag the empty masks
    assert len(tiny) == 5 and tiny.masks.shape == (5, 1, 1) and len(tiny.to_coco(1)) == 5
    np.testing.assert_array_equal(tiny.empty_masks, tiny.mask_areas() == 0)
    none = net.predict(big_image()[:50, :70], max_det=0)
    assert len(none) == 0 and none.masks.shape == (0, 50, 70) and none.to_coco(1) == []
    strip = net.predict(big_image()[:8, :300], conf=0.0, max_det=3, min_side=0)  # masks touch the image border
    assert strip.masks.shape == (3, 8, 300)
    np.testing.assert_array_equal(strip.compact_masks.to_dense(), strip.masks)


# ------------------------------------------------------------------------------------------------ prompted
@pytest.fixture(scope="module")
def prompt_models(model, tmp_path_factory):
    encoder, _ = export_onnx(model, tmp_path_factory.mktemp("pair"), interactive=True)
    return {"torch": powersam.load(model), "onnx": powersam.load(encoder.parent, threads=1)}


def traced_peak(call):
    tracemalloc.start()
    try:
        out = call()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_segment_peak_memory_is_bounded(prompt_models, backend):
    """Model.segment held N×H×W bool planes (predict_batch's array): 24 boxes on 1600×2400 are 92 MB at once. Now
    the peak is one mask's crop plus the bounded upsampling strips, whatever the number of prompts."""
    net, prompts = prompt_models[backend], 24
    net.set_image(big_image())
    rng = np.random.default_rng(1)
    corners = rng.uniform([0, 0], [WIDTH - 400, HEIGHT - 400], size=(prompts, 2))
    boxes = np.hstack([corners, corners + rng.uniform(100, 400, size=(prompts, 2))])
    _, few = traced_peak(lambda: net.segment(boxes=boxes[:2]).to_coco(1))
    (result, records), peak = traced_peak(lambda: (lambda r: (r, r.to_coco(1)))(net.segment(boxes=boxes)))
    planes = prompts * HEIGHT * WIDTH
    assert len(result) == len(records) == prompts and result.mask_areas().sum() > 0
    assert "masks=compact" in repr(result)  # the held representation: run lengths, not planes
    assert result.compact_masks.nbytes < planes / 20  # noisy random-weight masks: many runs
    print(f"{backend}: segment peak traced {few / 2**20:.0f} MiB for 2 prompts, {peak / 2**20:.0f} MiB for {prompts}")
    assert peak - few < 12 * 2**20, "peak memory grows with the number of prompts"  # planes: + 85 MB
    assert peak < 64 * 2**20 < planes, f"peak traced memory {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_compact_prompted_masks_match_the_planes(prompt_models, backend):
    net = prompt_models[backend]
    image = big_image()[:90, :140]
    boxes = np.array([[10, 10, 60, 50], [20, 30, 139, 89], [0, 0, 140, 90]], dtype=np.float64)
    points = np.array([[[30, 30], [100, 60]], [[50, 40], [5, 5]], [[70, 45], [120, 80]]], dtype=np.float64)
    labels = np.array([[1, 0], [1, 1], [1, 0]])
    net.set_image(image)
    planes, scores, low_res = net.predictor.predict_batch(boxes=boxes, point_coords=points, point_labels=labels,
                                                          multimask_output=True)
    compact, scores_c, low_res_c = net.predictor.predict_compact(boxes=boxes, point_coords=points,
                                                                 point_labels=labels, multimask_output=True)
    np.testing.assert_array_equal(scores_c, scores)
    np.testing.assert_array_equal(low_res_c, low_res)
    dense = compact.to_dense().reshape(planes.shape)
    # ONNX: the same NumPy resize, exactly; PyTorch: F.interpolate vs NumPy differ by float rounding at the threshold
    differing = np.count_nonzero(dense != planes)
    assert differing == 0 if backend == "onnx" else differing <= planes.size // 10_000
    assert planes.any()
    segmented = net.segment(boxes=boxes)  # Results: the planes are still there when asked for
    assert segmented.masks.shape == (3, 90, 140) and segmented.masks.dtype == bool
