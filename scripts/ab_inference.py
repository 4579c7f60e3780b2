"""Same-process A/B timings behind docs/speed_profile.md (round two): each pair of variants runs round-robin in one
process, so machine noise hits both alike; the first round is a warm-up and is dropped.

* ``post``: ``SamPredictor.predict_batch``'s bool-mask post-processing, SAM's two bilinear steps over the whole
  frame (``masks_to_original``, the former path) against the composed one-pass window
  (:mod:`powersam.inference.direct_upsample`), on PowerSAM-S with 5 box prompts; also how many mask pixels differ.
* ``layout``: the re-parameterised RepViT encoder with ``channels_last`` off / on (``set_image`` timed stages).
* ``ort FILE.onnx``: ONNX Runtime session start-up with and without a saved optimised graph, and 2 threads with
  ``session.intra_op.allow_spinning`` on / off, on an exported encoder graph.

    OMP_NUM_THREADS=1 python scripts/ab_inference.py post|layout [S] [--image PATH] [--rounds N]
    OMP_NUM_THREADS=1 python scripts/ab_inference.py ort path/to/encoder.onnx
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_IMAGE = "../shared/data/distribution_grid_insulators/images/A_F_104.jpg"


def _median(rows: list[dict], key: str) -> float:
    return float(np.median([row[key] for row in rows]))


def _predictor(size: int, image_path: str):
    import torch

    from powersam.bench.pipelines import synthetic_boxes
    from powersam.io import load_image
    from powersam.models.zoo import build_model
    from powersam.predictor import SamPredictor

    torch.set_num_threads(1)
    torch.manual_seed(0)
    image = load_image(image_path)
    model = build_model("powersam_s", img_size=size).eval()
    model.image_encoder.reparameterize()
    return model, SamPredictor(model), image, synthetic_boxes(5, image.shape[:2]).numpy()


def ab_post(size: int, image_path: str, rounds: int) -> None:
    import torch

    from powersam.inference.timing import StageTimer
    from powersam.predictor import SamPredictor
    from powersam.transforms import masks_to_original, upsample_chunk_size

    _, predictor, image, boxes = _predictor(size, image_path)
    predictor.set_image(image)
    composed = SamPredictor._upsample_into

    def two_step(self, low_res, out, return_logits):
        chunk = upsample_chunk_size(low_res.shape[1], self._input_size, self._original_size, self.img_size)
        with torch.inference_mode():
            masks_to_original(low_res, self._input_size, self._original_size, self.img_size,
                              threshold=self._mask_threshold(), return_logits=return_logits, chunk_size=chunk,
                              out=torch.from_numpy(out), resize_mode=self._resize_mode())

    times: dict[str, list[dict]] = {"two-step": [], "composed": []}
    masks = {}
    try:
        for r in range(rounds + 1):
            for name, hook in (("two-step", two_step), ("composed", composed)):
                SamPredictor._upsample_into = hook
                timer = StageTimer()
                masks[name] = predictor.predict_batch(boxes=boxes, timer=timer)[0]
                if r:
                    times[name].append(timer.ms)
    finally:
        SamPredictor._upsample_into = composed
    differ = int((masks["two-step"] != masks["composed"]).sum())
    print(f"S={size}, frame {image.shape[:2]}, 5 boxes, mask area {masks['composed'].mean():.3f}, "
          f"pixels differing {differ} of {masks['composed'].size}")
    for name, rows in times.items():
        print(f"  {name:9s} postprocess {_median(rows, 'postprocess'):7.1f} ms (median of {len(rows)})")


def ab_layout(size: int, image_path: str, rounds: int) -> None:
    from powersam.inference.timing import StageTimer

    model, predictor, image, _ = _predictor(size, image_path)
    times: dict[bool, list[dict]] = {False: [], True: []}
    embeddings = {}
    for r in range(rounds + 1):
        for channels_last in (False, True):
            model.image_encoder.channels_last = channels_last
            timer = StageTimer()
            predictor.set_image(image, timer=timer)
            embeddings[channels_last] = predictor.get_image_embedding().clone()
            if r:
                times[channels_last].append(timer.ms)
    diff = float((embeddings[True] - embeddings[False]).abs().max())
    print(f"S={size}: embedding max |diff| {diff:.2e}")
    for channels_last, rows in times.items():
        label = "channels_last" if channels_last else "NCHW"
        print(f"  {label:13s} encoder {_median(rows, 'encoder'):7.1f} ms (median of {len(rows)})")


def ab_ort(path: Path, rounds: int) -> None:
    import onnxruntime as ort

    first = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in first.shape])
    feeds = {first.name: x.astype(np.float32)}

    def session(threads: int, spin: str | None = None, source: Path = path, save: Path | None = None, plain=False):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        if spin is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        if save is not None:
            options.optimized_model_filepath = str(save)
        if plain:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        start = time.perf_counter()
        made = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        return made, (time.perf_counter() - start) * 1e3

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "optimised.onnx"
        session(1, save=saved)
        starts: dict[str, list[float]] = {"ORT_ENABLE_ALL at load": [], "saved optimised graph": []}
        for _ in range(rounds):
            starts["ORT_ENABLE_ALL at load"].append(session(1)[1])
            starts["saved optimised graph"].append(session(1, source=saved, plain=True)[1])
        for name, values in starts.items():
            print(f"  session start, {name:24s} {np.median(values):7.1f} ms")
        sessions = {"1 thread": session(1)[0], "2 threads, spinning": session(2, "1")[0],
                    "2 threads, no spinning": session(2, "0")[0]}
        runs: dict[str, list[float]] = {name: [] for name in sessions}
        for r in range(rounds + 1):
            for name, made in sessions.items():
                start = time.perf_counter()
                made.run(None, feeds)
                if r:
                    runs[name].append((time.perf_counter() - start) * 1e3)
        for name, values in runs.items():
            print(f"  run, {name:24s} {np.median(values):7.1f} ms (median of {len(values)})")


def main(argv: list[str]) -> None:
    """``what [arg] [--image PATH] [--rounds N]`` (plain ``sys.argv`` parsing: argparse lives in powersam/cli)."""
    options = {"--image": DEFAULT_IMAGE, "--rounds": "5"}
    positional = []
    items = iter(argv)
    for item in items:
        if item in options:
            options[item] = next(items, options[item])
        else:
            positional.append(item)
    if not positional or positional[0] not in ("post", "layout", "ort") or len(positional) > 2:
        raise SystemExit(__doc__)
    what, arg, rounds = positional[0], (positional[1:] or [None])[0], int(options["--rounds"])
    if what == "ort":
        if arg is None:
            raise SystemExit("ort needs the path of an exported graph")
        ab_ort(Path(arg), rounds)
    elif what == "post":
        ab_post(int(arg or 1024), options["--image"], rounds)
    else:
        ab_layout(int(arg or 1024), options["--image"], rounds)


if __name__ == "__main__":
    main(sys.argv[1:])
