"""Same-process A/B timings behind docs/speed_profile.md (round two): each pair of variants runs round-robin in one
process, so machine noise hits both alike; the first round is a warm-up and is dropped.

* ``post``: ``SamPredictor.predict_batch``'s bool-mask post-processing, SAM's two bilinear steps over the whole
  frame (``masks_to_original``, the former path) against the composed one-pass window
  (:mod:`powersam.inference.direct_upsample`), on PowerSAM-S with 5 box prompts; also how many mask pixels differ.
* ``layout``: the re-parameterised RepViT encoder with ``channels_last`` off / on (``set_image`` timed stages).
* ``ort FILE.onnx``: ONNX Runtime session start-up with and without a saved optimised graph, and 2 threads with
  ``session.intra_op.allow_spinning`` on / off, on an exported encoder graph.
* ``int8 [S]``: exports PowerSAM-S (seeded random weights) as an interactive pair and an integrated graph at S,
  quantises them (static encoder / integrated as ``powersam export --int8`` does, calibrated on 4 photos; dynamic
  decoder MatMuls, :mod:`powersam.deploy.quantize_decoder`), lists the kernels ONNX Runtime actually runs per part
  (its per-node profile: op types, counts, ms), times FP32 against the INT8 variants round-robin and reports the
  mask IoU of each variant against FP32 (5 boxes on each of 3 photos).
* ``folds [S]``: the exported pair decoder and integrated graph with the mask decoder's inference folds (the
  default since session 15) against SAM's op sequence (exported under ``reference_ops()``): node counts, largest
  output difference, round-robin timings.
* ``gelu [S]``: INT8 encoder and integrated graphs with the erf-GELUs fused before quantisation (the default since
  session 15) against without, and FP32: round-robin timings, embedding cosine between the two INT8 forms.

    OMP_NUM_THREADS=1 python scripts/ab_inference.py post|layout [S] [--image PATH] [--rounds N]
    OMP_NUM_THREADS=1 python scripts/ab_inference.py ort path/to/encoder.onnx
    OMP_NUM_THREADS=1 python scripts/ab_inference.py int8 [S] [--rounds N] [--threads N]
    OMP_NUM_THREADS=2 python scripts/ab_inference.py folds|gelu [S] [--rounds N] [--threads 2]
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


# ------------------------------------------------------------------------------------------------ int8
INTEGER_OPS = ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul",
               "MatMulIntegerToFloat", "QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearGlobalAveragePool",
               "QLinearConcat", "QLinearLeakyRelu", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear")
PARTS = (("/mask_decoder", "decoder"), ("/prompt_encoder", "decoder"), ("/box_generator", "detector"),
         ("/transformer", "decoder"), ("/output_", "decoder"), ("/iou_prediction", "decoder"))


def _part(node: str, graph: str) -> str:
    if graph != "integrated":
        return graph
    return next((part for prefix, part in PARTS if node.startswith(prefix)), "encoder/other")


def _profile(path: Path, feeds: dict, graph: str) -> dict:
    """One profiled run after a warm-up: {(part, op type): [count, ms]} from ONNX Runtime's per-node events."""
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "p")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
        session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    start = runs[-1]["ts"]
    table: dict = {}
    for e in events:
        if e.get("cat") == "Node" and e["ts"] >= start and e["name"].endswith("_kernel_time"):
            key = (_part(e["name"], graph), e["args"]["op_name"])
            row = table.setdefault(key, [0, 0.0])
            row[0] += 1
            row[1] += e["dur"] / 1e3
    return table


def _print_profile(label: str, table: dict) -> None:
    total = sum(ms for _, ms in table.values())
    print(f"  {label}: {total:.1f} ms in kernels")
    for part in sorted({p for p, _ in table}):
        rows = sorted(((op, *v) for (p, op), v in table.items() if p == part), key=lambda r: -r[2])
        integer = sum(ms for op, _, ms in rows if op in INTEGER_OPS)
        shown = ", ".join(f"{op} {n}x {ms:.1f}" for op, n, ms in rows if ms >= 0.02 * total or op in INTEGER_OPS)
        print(f"    {part:13s} {sum(r[2] for r in rows):7.1f} ms (integer/Q-DQ kernels {integer:.1f}): {shown}")


def _graph_feeds(image, metadata, integrated: bool) -> dict:
    """The feeds of one exported graph for ``image``, as the runtime prepares them: an encoder's image, or an
    integrated graph's inputs with a zero score threshold and 5 detections (so its decoder always runs)."""
    from powersam.deploy.quantize import ImageCalibrationReader

    if not integrated:
        return {"image": ImageCalibrationReader([image], metadata).feeds(0)["image"]}
    feeds = ImageCalibrationReader([image], metadata, max_det=5).feeds(0)
    feeds["score_thr"] = np.asarray(0.0, dtype=np.float32)
    return feeds


def _session(path, threads: int):
    """An ONNX Runtime session; spinning off beyond one thread, where the spinning workers of one variant would
    slow the next one down."""
    from powersam.runtime import GraphSession

    return GraphSession(path, threads=threads, spinning=None if threads == 1 else False)


def _int8_graphs(size: int, work: Path, photos: list[str]) -> dict[str, Path]:
    import torch

    from powersam.deploy.onnx_export import export_onnx
    from powersam.deploy.quantize import quantize_onnx
    from powersam.deploy.quantize_decoder import quantize_decoder_matmuls
    from powersam.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("powersam_s", img_size=size).eval()
    encoder, decoder = export_onnx(model, work / "pair", interactive=True, multimask_output=1)
    (integrated,) = export_onnx(model, work / "integrated.onnx", max_det=5)
    graphs = {"encoder": encoder, "decoder": decoder, "integrated": integrated}
    graphs["encoder int8"] = quantize_onnx(encoder, work / "encoder.int8.onnx", photos, num_calib=4)
    graphs["decoder int8-dyn"] = quantize_decoder_matmuls(decoder, work / "decoder.dyn.onnx")
    graphs["integrated int8"] = quantize_onnx(integrated, work / "integrated.int8.onnx", photos, num_calib=4)
    graphs["integrated int8+dec"] = quantize_decoder_matmuls(graphs["integrated int8"], work / "integrated.dyn.onnx")
    return graphs


def ab_int8(size: int, image_path: str, rounds: int, threads: int = 1) -> None:
    from powersam.bench.pipelines import synthetic_boxes
    from powersam.inference.timing import StageTimer
    from powersam.io import list_images, load_image
    from powersam.runtime import OnnxSamPredictor

    folder = Path(image_path).parent
    photos = [str(p) for p in list_images(folder)[:8]]
    images = [load_image(image_path)] + [load_image(p) for p in photos[-2:]]
    with tempfile.TemporaryDirectory() as tmp:
        g = _int8_graphs(size, Path(tmp), photos[:4])
        s = {name: _session(path, threads) for name, path in g.items()}
        pairs = {"fp32": ("encoder", "decoder"), "int8 enc": ("encoder int8", "decoder"),
                 "int8 dec": ("encoder", "decoder int8-dyn"), "int8 enc+dec": ("encoder int8", "decoder int8-dyn")}
        boxes = [synthetic_boxes(5, im.shape[:2], seed=i).numpy() for i, im in enumerate(images)]
        # --- what runs in integer form
        pred = OnnxSamPredictor(s["encoder"], s["decoder"])
        pred.set_image(images[0])
        int_feeds = _graph_feeds(images[0], s["integrated"].metadata, integrated=True)
        enc_feeds = _graph_feeds(images[0], s["encoder"].metadata, integrated=False)
        captured = {}
        run = pred.decoder.run
        pred.decoder.run = lambda feeds, outputs=None: captured.setdefault("f", feeds) and run(feeds, outputs)
        pred.predict_batch(boxes=boxes[0], multimask_output=False)
        pred.decoder.run = run
        print(f"S={size}, PowerSAM-S random weights, {threads} thread(s); ONNX Runtime per-node profile (2nd run)")
        for name, feeds, graph in (("encoder", enc_feeds, "encoder"), ("encoder int8", enc_feeds, "encoder"),
                                   ("decoder", captured["f"], "decoder"), ("decoder int8-dyn", captured["f"], "decoder"),
                                   ("integrated", int_feeds, "integrated"), ("integrated int8", int_feeds, "integrated"),
                                   ("integrated int8+dec", int_feeds, "integrated")):
            _print_profile(name, _profile(g[name], feeds, graph))
        # --- mask agreement with FP32 (same boxes), then round-robin timings
        masks: dict[str, list] = {name: [] for name in pairs}
        times: dict[str, list] = {name: [] for name in [*pairs, "integrated", "integrated int8", "integrated int8+dec"]}
        for r in range(rounds + 1):
            for name, (enc, dec) in pairs.items():
                p = OnnxSamPredictor(s[enc], s[dec])
                for i, (im, bx) in enumerate(zip(images, boxes)):
                    timer = StageTimer()
                    p.set_image(im, timer=timer)
                    out = p.predict_batch(boxes=bx, multimask_output=False, timer=timer)[0][:, 0]
                    if r == 0:
                        masks[name].append(out)
                    elif i == 0:
                        times[name].append(timer.ms)
            for name in ("integrated", "integrated int8", "integrated int8+dec"):
                start = time.perf_counter()
                s[name].run(int_feeds)
                if r:
                    times[name].append({"graph": (time.perf_counter() - start) * 1e3})
        print(f"mask IoU vs FP32 ({sum(len(m) for m in masks['fp32'])} masks on {len(images)} photos) and medians of "
              f"{rounds} round-robin rounds on {Path(image_path).name}")
        for name, rows in times.items():
            stages = ", ".join(f"{k} {_median(rows, k):.1f}" for k in rows[0])
            agree = ""
            if name in masks:
                ious = [_iou(a, b) for fa, fb in zip(masks["fp32"], masks[name]) for a, b in zip(fa, fb)]
                agree = f"; IoU mean {np.mean(ious):.3f} min {np.min(ious):.3f}"
            print(f"  {name:20s} {stages}{agree}")
        outs = {name: s[name].run(int_feeds) for name in ("integrated int8", "integrated int8+dec")}
        ious = [_iou(a > 0, b > 0) for a, b in zip(*(o["mask_logits"][:, 0] for o in outs.values()))]
        print(f"  integrated: decoder MatMuls int8 vs float, same detections: mask IoU mean {np.mean(ious):.3f} "
              f"min {np.min(ious):.3f} (low-res logits > 0, {len(ious)} masks)")


def ab_gelu(size: int, image_path: str, rounds: int, threads: int = 1) -> None:
    """INT8 encoder and integrated graphs quantised with the erf-GELUs fused into one node each
    (:func:`powersam.deploy.quantize.fuse_gelu`, the default since session 15) against the same without it, and the
    float graphs: round-robin timings of one graph run each, and the embedding cosine between the two INT8 forms."""
    import contextlib
    from unittest import mock

    import torch

    import powersam.deploy.quantize as quantize
    from powersam.deploy.onnx_export import export_onnx
    from powersam.io import list_images, load_image
    from powersam.models.zoo import build_model
    torch.manual_seed(0)
    model = build_model("powersam_s", img_size=size).eval()
    photos = [str(p) for p in list_images(Path(image_path).parent)[:4]]
    image = load_image(image_path)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        encoder = export_onnx(model, work / "pair", interactive=True, multimask_output=1)[0]
        (integrated,) = export_onnx(model, work / "m.onnx", max_det=5)
        graphs = {"encoder fp32": encoder, "integrated fp32": integrated}
        for form in ("gelu fused", "gelu as exported"):
            as_exported = mock.patch.object(quantize, "fuse_gelu", lambda src, dst: src)
            with contextlib.nullcontext() if form == "gelu fused" else as_exported:
                for name, src in (("encoder", encoder), ("integrated", integrated)):
                    graphs[f"{name} int8, {form}"] = quantize.quantize_onnx(
                        src, work / f"{name}.{len(graphs)}.onnx", photos, num_calib=4)
        sessions = {k: _session(v, threads) for k, v in graphs.items()}
        integrated_feeds = _graph_feeds(image, sessions["integrated fp32"].metadata, integrated=True)
        encoder_feeds = _graph_feeds(image, sessions["encoder fp32"].metadata, integrated=False)
        times: dict[str, list] = {k: [] for k in sessions}
        outputs = {}
        for r in range(rounds + 1):
            for name, session in sessions.items():
                feeds = integrated_feeds if name.startswith("integrated") else encoder_feeds
                time.sleep(0.05)  # untimed: spinning threads of one run must not slow the next
                start = time.perf_counter()
                outputs[name] = session.run(feeds)
                if r:
                    times[name].append((time.perf_counter() - start) * 1e3)
        print(f"S={size}, PowerSAM-S random weights, {threads} thread(s), medians of {rounds} round-robin rounds, ms")
        for name, values in times.items():
            print(f"  {name:34s} {np.median(values):7.1f}")
        a, b = (outputs[f"encoder int8, {form}"] for form in ("gelu fused", "gelu as exported"))
        key = next(k for k in a if "embed" in k)
        x, y = np.ravel(a[key]).astype(np.float64), np.ravel(b[key]).astype(np.float64)
        print(f"  embedding cosine, INT8 with / without the fusion: {x @ y / np.linalg.norm(x) / np.linalg.norm(y):.5f}")


def ab_folds(size: int, image_path: str, rounds: int, threads: int = 1) -> None:
    """Exported graphs with the decoder's inference folds (the default) against SAM's op sequence
    (``reference_ops()`` during the export): node counts, output differences, round-robin timings of the pair's
    decoder (5 boxes) and of the integrated graph (5 detections)."""
    import contextlib

    import onnx
    import torch

    from powersam.bench.pipelines import synthetic_boxes
    from powersam.deploy.onnx_export import export_onnx
    from powersam.inference.timing import StageTimer
    from powersam.io import load_image
    from powersam.models.sam.transformer import reference_ops
    from powersam.models.zoo import build_model
    from powersam.runtime import OnnxSamPredictor

    torch.manual_seed(0)
    model = build_model("powersam_s", img_size=size).eval()
    image = load_image(image_path)
    boxes = synthetic_boxes(5, image.shape[:2], seed=0).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        work, graphs = Path(tmp), {}
        for name in ("folded", "plain"):
            with reference_ops() if name == "plain" else contextlib.nullcontext():
                graphs[name] = (export_onnx(model, work / name, interactive=True, multimask_output=1)
                                + export_onnx(model, work / f"{name}.onnx", max_det=5))
        sessions = {k: [_session(p, threads) for p in v] for k, v in graphs.items()}
        feeds = _graph_feeds(image, sessions["folded"][2].metadata, integrated=True)
        times = {f"{k} {part}": [] for k in sessions for part in ("pair decoder, 5 boxes", "integrated graph")}
        outputs: dict[str, tuple] = {}
        for r in range(rounds + 1):
            for name, (encoder, decoder, integrated) in sessions.items():
                predictor = OnnxSamPredictor(encoder, decoder)
                predictor.set_image(image)
                timer = StageTimer()
                low_res = predictor.predict_batch(boxes=boxes, multimask_output=False, timer=timer)[2]
                time.sleep(0.05)  # untimed: spinning threads of one run must not slow the next
                start = time.perf_counter()
                masks = integrated.run(feeds)["mask_logits"]
                elapsed = (time.perf_counter() - start) * 1e3
                time.sleep(0.05)
                outputs[name] = (low_res, masks)
                if r:
                    times[f"{name} pair decoder, 5 boxes"].append(timer.ms["decoder"])
                    times[f"{name} integrated graph"].append(elapsed)
        for name, paths in graphs.items():
            print(f"{name}: decoder graph {len(onnx.load(str(paths[1])).graph.node)} nodes")
        print(f"S={size}, PowerSAM-S random weights, {threads} thread(s), medians of {rounds} round-robin rounds, ms")
        for name, values in times.items():
            print(f"  {name:36s} {np.median(values):7.1f}")
        for index, what in enumerate(("pair low-res logits", "integrated mask logits")):
            diff = np.abs(outputs["folded"][index] - outputs["plain"][index]).max()
            print(f"  {what}: largest difference folded vs plain {diff:.2e}")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def main(argv: list[str]) -> None:
    """``what [arg] [--image PATH] [--rounds N] [--threads N]`` (plain ``sys.argv`` parsing: argparse lives in
    powersam/cli); ``--threads`` applies to ``int8``, ``folds`` and ``gelu``."""
    options = {"--image": DEFAULT_IMAGE, "--rounds": "5", "--threads": "1"}
    positional = []
    items = iter(argv)
    for item in items:
        if item in options:
            options[item] = next(items, options[item])
        else:
            positional.append(item)
    if not positional or positional[0] not in ("post", "layout", "ort", "int8", "folds", "gelu") or len(positional) > 2:
        raise SystemExit(__doc__)
    what, arg, rounds = positional[0], (positional[1:] or [None])[0], int(options["--rounds"])
    if what == "ort":
        if arg is None:
            raise SystemExit("ort needs the path of an exported graph")
        ab_ort(Path(arg), rounds)
    elif what == "gelu":
        ab_gelu(int(arg or 1024), options["--image"], rounds, int(options["--threads"]))
    elif what == "folds":
        ab_folds(int(arg or 1024), options["--image"], rounds, int(options["--threads"]))
    elif what == "int8":
        ab_int8(int(arg or 1024), options["--image"], rounds, int(options["--threads"]))
    elif what == "post":
        ab_post(int(arg or 1024), options["--image"], rounds)
    else:
        ab_layout(int(arg or 1024), options["--image"], rounds)


if __name__ == "__main__":
    main(sys.argv[1:])
