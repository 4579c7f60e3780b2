"""Same-process A/B of the detect-and-segment mask post-processing (docs/speed_profile.md, round four).

The workload is the bench's integrated frame: PowerSAM-S with seeded random weights (re-parameterised, as
``powersam bench`` builds it) at input S, the bench's 5 fixed boxes (``GivenBoxes``), on the 1080×1920 synthetic
frame and on a photo. Its detection and decoder run once per frame; the low-res logits K×1×s×s are then post-processed
round-robin (first round dropped) by:

* ``before``: ``masks_from_low_res`` + ``CompactMasks`` of git revision REV (default: the last commit before round four; loaded from
  ``git show`` into a scratch package, so both run in this process);
* ``after``: :func:`powersam.inference.detect.compact_masks` of the working tree (what ``predict`` runs);
* ``bench-torch-before``: what the torch rows of ``powersam bench`` timed before ``GivenBoxes`` forwarded
  ``low_res_numpy``: the backend's full-frame two-step ``upsample`` per mask, then REV's ``append_crop``;
* ``dense-onnx-before`` / ``dense-after``: ``predict_batch``'s bool planes as ``OnnxSamPredictor`` wrote them
  (``upsample_masks`` into a new N×1×H×W array, copied into the output) and as both predictors write them now
  (``threshold_low_res_into`` straight into the output).

It checks that ``before`` and ``after`` give the same run lengths and boxes, and the dense variants the same planes.

    OMP_NUM_THREADS=1 python scripts/ab_postprocess.py [S] [--image PATH] [--rounds N] [--before REV]
"""
from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_IMAGE = "../shared/data/distribution_grid_insulators/images/A_F_104.jpg"
BEFORE = "16d71c5"  # the last commit before round four
FILES = ("__init__.py", "masks.py", "inference/__init__.py", "inference/direct_upsample.py", "inference/upsample.py")


def load_revision(rev: str, where: Path):
    """REV's direct_upsample, masks and upsample modules as the scratch package ``powersam_before`` (their relative
    imports stay inside it; the package ``__init__`` files are left empty so nothing else is imported)."""
    root = Path(subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip())
    for name in FILES:
        target = where / "powersam_before" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        text = "" if name.endswith("__init__.py") else subprocess.check_output(
            ["git", "-C", str(root), "show", f"{rev}:powersam/{name}"], text=True)
        target.write_text(text)
    sys.path.insert(0, str(where))
    return (importlib.import_module("powersam_before.inference.direct_upsample"),
            importlib.import_module("powersam_before.masks"))


def workloads(size: int, image_path: str):
    """(name, model, low_res K×1×s×s tensor, input_size, original_size) of the bench frame and of the photo."""
    import torch

    from powersam.bench.frames import GivenBoxes
    from powersam.bench.pipelines import BenchSettings, _given_boxes, build_bench_model, synthetic_image
    from powersam.inference.timing import StageTimer
    from powersam.io import load_image

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_bench_model("powersam_s", BenchSettings(img_size=size))
    backend = GivenBoxes(model, 5, _given_boxes)
    for name, rgb in (("synthetic 1080x1920", synthetic_image((1080, 1920))), (Path(image_path).name,
                                                                                 load_image(image_path))):
        dets = backend.detect(rgb, 0.25, 0.5, 100, StageTimer())
        low_res = backend.decode(dets, np.arange(len(dets.boxes)))
        yield name, model, low_res, tuple(dets.input_size), tuple(rgb.shape[:2])


def main(argv: list[str]) -> None:
    options = {"--image": DEFAULT_IMAGE, "--rounds": "7", "--before": BEFORE}
    positional, items = [], iter(argv)
    for item in items:
        if item in options:
            options[item] = next(items, options[item])
        else:
            positional.append(item)
    size, rounds = int((positional or ["512"])[0]), int(options["--rounds"])

    from powersam.inference.detect import compact_masks
    from powersam.inference.direct_upsample import threshold_low_res_into
    from powersam.runtime.preprocess import upsample_masks

    with tempfile.TemporaryDirectory() as scratch:
        before_up, before_masks = load_revision(options["--before"], Path(scratch))
        for name, model, low_res, input_size, original_size in workloads(size, options["--image"]):
            logits, square = model.low_res_numpy(low_res)
            threshold, dense_shape = model.mask_threshold, (len(logits), 1, *original_size)

            def bench_torch_before():
                masks = before_masks.CompactMasks(original_size)
                for i in range(len(logits)):
                    masks.append_crop(model.upsample(low_res[i : i + 1], input_size, original_size)[0, 0], 0, 0)
                return masks

            def dense_onnx_before():
                out = np.empty(dense_shape, dtype=bool)
                out[...] = upsample_masks(logits[:, None], input_size, original_size, square, threshold)
                return out

            def dense_after():
                out = np.empty(dense_shape, dtype=bool)
                return threshold_low_res_into(logits[:, None], input_size, original_size, square, threshold, out)

            variants = {
                "before": lambda: before_up.masks_from_low_res(model.low_res_numpy(low_res)[0], input_size,
                                                               original_size, square, threshold),
                "after": lambda: compact_masks(model, low_res, input_size, original_size),
                "bench-torch-before": bench_torch_before,
                "dense-onnx-before": dense_onnx_before,
                "dense-after": dense_after,
            }
            times: dict[str, list[float]] = {key: [] for key in variants}
            got = {}
            for r in range(rounds + 1):
                for key, run in variants.items():
                    start = time.perf_counter()
                    got[key] = run()
                    if r:
                        times[key].append(1e3 * (time.perf_counter() - start))
            a, b = got["before"], got["after"]
            same = all(np.array_equal(a.counts(i), b.counts(i)) and a.box(i) == b.box(i) for i in range(len(a)))
            dense_same = np.array_equal(got["dense-onnx-before"], got["dense-after"])
            runs = [len(b.counts(i)) // 2 for i in range(len(b))]
            print(f"S={size}, {name} ({original_size[0]}x{original_size[1]}), {len(logits)} masks, mask area "
                  f"{float(np.mean(b.areas())) / np.prod(original_size):.2f}, runs per mask {min(runs)}-{max(runs)}; "
                  f"before == after: {same}, dense planes equal: {dense_same}")
            base = float(np.median(times["before"]))
            for key, rows in times.items():
                median = float(np.median(rows))
                print(f"  {key:19s} {median:7.1f} ms (median of {len(rows)}; {median / base:.2f}x of before)")


if __name__ == "__main__":
    main(sys.argv[1:])
