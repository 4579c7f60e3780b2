"""``powersam bench --compare-reference``: the segmentation table of issue 14 in one run.

One image (a real photo resized to the frame, or the synthetic one), K box prompts, masks at full resolution; every
path below decodes the same boxes on the same weights (PowerSAM-S, seeded random init in the official module
layout: timing does not depend on the values), round-robin in one process (:func:`powersam.bench.runner.
run_interleaved`), median of ``repeats``:

==================  ===============================================================================================
reference           SAM's predictor flow re-stated in eager PyTorch (:mod:`powersam.bench.reference`) around the
                    official, not re-parameterised, RepViT encoder: what a user of the original code runs
reference-reparam   the same flow with the re-parameterised encoder (separates the encoder's share of the gain)
torch               :class:`powersam.SamPredictor` on the re-parameterised model (``set_image`` + ``predict_batch``)
onnx                :class:`powersam.runtime.OnnxSamPredictor` on the exported FP32 encoder / decoder pair
onnx-int8           the same with the INT8 (QDQ, static) encoder; the decoder graph as :func:`quantize_onnx` makes it
onnx[spin=on|off]   with ``ort_spinning`` (``--ort-spinning on,off``): the ONNX rows again, their sessions with ORT's
                    worker threads spinning / sleeping after a run (the plain ``onnx`` row: ORT's default)
matmul probe        a dense float32 ``torch.mm`` (n×n by n×n) right before every frame → GFLOP/s of this machine then
==================  ===============================================================================================

The roofline of the work is ``2 × MACs / probe FLOP/s`` with MACs = encoder + K × (prompt encoder + mask decoder for
one box), counted by :func:`powersam.utils.model_info.model_info` in both conventions (``full``: every matmul, the
true transposed-convolution cost; ``paper``: thop's, as the issue's 26.2 GMACs). ``vs_roofline``: the median of
each frame against the probe reading just before it; ``vs_roofline_best``: the median frame against the run's best
reading (:mod:`powersam.bench.roofline`).

Besides the timings the payload records how every path's masks agree with the reference's (shape, IoU per mask,
fraction of differing pixels) and whether that is within the tolerances the project's equivalence tests use
(FP32: mask IoU ≥ 0.99 as ``tests/deploy/test_runtime.py``; INT8: mean IoU ≥ 0.8 as ``tests/deploy/test_quantize.py``).
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..inference.timing import StageTimer
from .pipelines import SPIN_NAMES, check_ort_spinning, ort_label, pinned_threads, synthetic_boxes, synthetic_image
from .roofline import MatmulProbe, paired_multiple, probe_summary, roofline_ms
from .runner import DEFAULT_SETTLE_S, Pipeline, machine_info, run_interleaved, timing_record

MODEL = "powersam_s"
STAGES = ("preprocess", "encoder", "decoder", "postprocess")
FP32_MIN_IOU = 0.99  # tests/deploy/test_runtime.py: ONNX Runtime masks vs PyTorch
INT8_MIN_MEAN_IOU = 0.8  # tests/deploy/test_quantize.py: MIN_MEAN_MASK_IOU, INT8 vs FP32


@dataclass
class CompareSettings:
    """What one comparison run measures (see the module doc). ``image``: a photo resized to ``frame`` (None: the
    synthetic image); ``num_calib``: synthetic calibration scenes of the INT8 encoder; ``probe_size``: n of the
    n×n matmul probe; ``work_dir``: where the graphs are exported (a temporary folder when None); ``ort_spinning``:
    the ONNX Runtime spinning settings each ONNX path is timed with, one row each (see
    :class:`~powersam.bench.pipelines.BenchSettings`; default ORT's own only); ``settle``: untimed seconds slept
    before every frame (:func:`~powersam.bench.runner.run_interleaved`)."""

    img_size: int = 1024
    frame: tuple[int, int] = (1080, 1920)
    boxes: int = 5
    threads: Optional[int] = 1
    repeats: int = 7
    warmup: int = 2
    image: Optional[Path] = None
    num_calib: int = 8
    probe_size: int = 1024
    int8: bool = True
    work_dir: Optional[Path] = None
    seed: int = 0
    ort_spinning: tuple[Optional[bool], ...] = (None,)
    settle: float = DEFAULT_SETTLE_S

    def __post_init__(self) -> None:
        check_ort_spinning(self.ort_spinning)
        if self.boxes < 1 or self.repeats < 1 or self.warmup < 0 or self.num_calib < 1 or self.probe_size < 16 \
                or not self.settle >= 0:
            raise ValueError("need boxes >= 1, repeats >= 1, warmup >= 0, num_calib >= 1, probe_size >= 16 and "
                             "settle >= 0")


def load_frame(settings: CompareSettings) -> tuple[np.ndarray, str]:
    """The H×W×3 uint8 image every path gets, and where it came from."""
    height, width = settings.frame
    if settings.image is None:
        return synthetic_image(settings.frame, settings.seed), f"synthetic {height}x{width} (seed {settings.seed})"
    from PIL import Image

    from ..io import load_image

    rgb = load_image(str(settings.image))
    source = f"{settings.image} ({rgb.shape[0]}x{rgb.shape[1]}"
    if rgb.shape[:2] != (height, width):
        rgb = np.array(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))
        source += f", resized to {height}x{width}"
    return rgb, source + ")"


def _prompt_frame(run: Callable[[np.ndarray, StageTimer], np.ndarray], image: np.ndarray,
                  outputs: dict[str, np.ndarray], key: str) -> Callable[[dict], dict]:
    def frame(_state: dict) -> dict:
        timer = StageTimer()
        outputs[key] = run(image, timer)
        return timer.ms

    return frame


def _predictor_run(predictor: Any, boxes: np.ndarray) -> Callable[[np.ndarray, StageTimer], np.ndarray]:
    def run(image: np.ndarray, timer: StageTimer) -> np.ndarray:
        predictor.set_image(image, timer=timer)
        return predictor.predict_batch(boxes=boxes, multimask_output=False, timer=timer)[0]

    return run


def _reference_run(predictor: Any, boxes: np.ndarray) -> Callable[[np.ndarray, StageTimer], np.ndarray]:
    def run(image: np.ndarray, timer: StageTimer) -> np.ndarray:
        predictor.set_image(image, timer=timer)
        return predictor.predict_boxes(boxes, timer=timer)[0]

    return run


def _onnx_paths(model: torch.nn.Module, settings: CompareSettings, work: Path) -> dict[str, list[Path]]:
    from ..deploy.onnx_export import export_onnx

    paths = {"onnx": export_onnx(model, work / "interactive", interactive=True, multimask_output=False)}
    if settings.int8:
        from ..deploy.quantize import quantize_onnx

        paths["onnx-int8"] = [quantize_onnx(p, p.with_name(p.stem + ".int8.onnx"), num_calib=settings.num_calib,
                                            seed=settings.seed) for p in paths["onnx"]]
    return paths


def agreement(masks: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Shape, IoU per mask and the fraction of differing pixels of N×1×H×W bool ``masks`` against ``reference``."""
    record: dict[str, Any] = {"shape": list(masks.shape), "same_shape": masks.shape == reference.shape}
    if not record["same_shape"]:
        return record
    flat, ref = masks.reshape(len(masks), -1), reference.reshape(len(reference), -1)
    union = (flat | ref).sum(1)
    ious = np.where(union > 0, (flat & ref).sum(1) / np.maximum(union, 1), 1.0)
    record.update(iou=[float(v) for v in ious], min_iou=float(ious.min()), mean_iou=float(ious.mean()),
                  differing_fraction=float((flat != ref).mean()))
    return record


def _within(path: str, record: dict[str, Any]) -> bool:
    if not record["same_shape"]:
        return False
    return record["mean_iou"] >= INT8_MIN_MEAN_IOU if "int8" in path else record["min_iou"] >= FP32_MIN_IOU


def _work(settings: CompareSettings) -> dict[str, Any]:
    """MACs of the encoder and of one box through prompt encoder + decoder; the frame's total (both conventions)."""
    from ..utils.model_info import model_info

    parts = model_info(MODEL, img_size=settings.img_size)["components"]
    out: dict[str, Any] = {}
    for key, suffix in (("full", "_full"), ("paper", "")):
        encoder = parts["image_encoder"]["gmacs" + suffix]
        per_box = parts["prompt_encoder"]["gmacs" + suffix] + parts["mask_decoder"]["gmacs" + suffix]
        out[key] = {"encoder_gmacs": encoder, "decoder_gmacs_per_box": per_box,
                    "total_gmacs": encoder + settings.boxes * per_box}
    return out


def compare_reference(settings: CompareSettings, progress: Optional[Callable[[int, int], None]] = None
                      ) -> dict[str, Any]:
    """Build every path, time them round-robin and return the payload (see the module doc)."""
    from ..models.zoo import build_model
    from ..predictor import SamPredictor
    from .reference import ReferenceSamPredictor

    image, source = load_frame(settings)
    boxes = synthetic_boxes(settings.boxes, settings.frame, settings.seed).numpy()
    outputs: dict[str, np.ndarray] = {}
    with pinned_threads(settings.threads), tempfile.TemporaryDirectory(prefix="powersam-compare-") as tmp:
        torch.manual_seed(settings.seed)
        official = build_model(MODEL, img_size=settings.img_size).eval()
        deployed = copy.deepcopy(official)
        deployed.image_encoder.reparameterize()
        rows: list[tuple[str, Any]] = [
            ("reference", _reference_run(ReferenceSamPredictor(official), boxes)),
            ("reference-reparam", _reference_run(ReferenceSamPredictor(deployed), boxes)),
            ("torch", _predictor_run(SamPredictor(deployed), boxes)),
        ]
        from ..runtime.predictor import OnnxSamPredictor
        from ..runtime.session import GraphSession

        graphs = _onnx_paths(deployed, settings, Path(settings.work_dir or tmp))
        for name, (encoder, decoder) in graphs.items():
            for spinning in settings.ort_spinning:  # same graph files; only the sessions' thread pools differ
                sessions = [GraphSession(p, threads=settings.threads, spinning=spinning) for p in (encoder, decoder)]
                rows.append((ort_label(name, spinning), _predictor_run(OnnxSamPredictor(*sessions), boxes)))
        pipelines = [Pipeline.reporting(MODEL, name, STAGES, _prompt_frame(run, image, outputs, name))
                     for name, run in rows]
        times = run_interleaved(pipelines, repeats=settings.repeats, warmup=settings.warmup, progress=progress,
                                settle=settings.settle, probe=MatmulProbe(settings.probe_size))
        records = [timing_record(p, t) for p, t in zip(pipelines, times)]
    measured = probe_summary([g for t in times for g in t.probe], settings.probe_size)
    gflops = measured["probe_gflops_roofline"]
    work = _work(settings)
    reference_ms = records[0]["latency_ms_median"]
    paths = []
    for record, frames in zip(records, times):
        name = record["runtime"]
        agree = agreement(outputs[name], outputs["reference"])
        agree["within_tolerance"] = _within(name, agree)
        ms = record["latency_ms_median"]
        paths.append({
            "path": name, "latency_ms_median": ms, "latency_ms_p90": record["latency_ms_p90"],
            "parts_ms": {k: v["median"] for k, v in record["parts"].items()},
            "vs_reference": ms / reference_ms,
            "vs_roofline": {k: paired_multiple(frames.total, frames.probe, w["total_gmacs"]) for k, w in work.items()},
            "vs_roofline_best": {k: ms / roofline_ms(w["total_gmacs"], gflops) for k, w in work.items()},
            "agreement": agree,
        })
    return {
        "machine": machine_info(settings.threads),
        "settings": {"model": MODEL, "img_size": settings.img_size, "frame": list(settings.frame),
                     "boxes": settings.boxes, "threads": settings.threads, "repeats": settings.repeats,
                     "warmup": settings.warmup, "image": source, "num_calib": settings.num_calib,
                     "probe_size": settings.probe_size, "seed": settings.seed, "settle_ms": settings.settle * 1e3,
                     "ort_spinning": [SPIN_NAMES[v] for v in settings.ort_spinning],
                     "order": "round-robin over every path, rotating start; warm-up rounds first; the probe before every frame",
                     "box_prompts": [[round(float(v), 2) for v in b] for b in boxes]},
        "paths": paths,
        "roofline": {**measured, "work": work,
                     "roofline_ms": {k: roofline_ms(w["total_gmacs"], gflops) for k, w in work.items()}},
    }


def compare_markdown(payload: dict[str, Any], command: str = "") -> str:
    """The payload as the issue's table: ms per frame, stages, ratios to the reference and to the roofline."""
    s, roof = payload["settings"], payload["roofline"]
    lines = [f"PowerSAM-S at {s['img_size']}, image {s['image']}, {s['boxes']} box prompts, masks at full "
             f"resolution; {s['threads']} thread(s); median of {s['repeats']} round-robin frames "
             f"({s['warmup']} warm-up); {payload['machine']['cpu']}.", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"Probe: dense {roof['probe_size']}² float32 matmul right before every frame: "
              f"{roof['probe_gflops_min']:.0f}-{roof['probe_gflops_max']:.0f} GFLOP/s (median "
              f"{roof['probe_gflops_median']:.0f}). / roofline, paired: the median of each frame against the probe "
              "reading just before it; best probe: the median frame against the run's best reading.", ""]
    lines += ["| path | ms per frame | preprocess | encoder | decoder | postprocess | / reference | / roofline, "
              "true MACs, paired | / roofline, true MACs, best probe | / roofline, paper MACs, paired | masks vs "
              "reference: min IoU |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in payload["paths"]:
        parts, a = p["parts_ms"], p["agreement"]
        iou = f"{a['min_iou']:.4f}" if "min_iou" in a else "shape differs"
        lines.append(f"| {p['path']} | {p['latency_ms_median']:.0f} | " + " | ".join(
            f"{parts.get(k, 0.0):.0f}" for k in STAGES) + f" | {p['vs_reference']:.2f}x | "
            f"{p['vs_roofline']['full']:.2f}x | {p['vs_roofline_best']['full']:.2f}x | "
            f"{p['vs_roofline']['paper']:.2f}x | {iou} |")
    for key in ("full", "paper"):
        w = roof["work"][key]
        lines.append(f"| roofline, {key} MACs ({w['encoder_gmacs']:.2f} + {s['boxes']} x "
                     f"{w['decoder_gmacs_per_box']:.2f} = {w['total_gmacs']:.1f} GMACs at "
                     f"{roof['probe_gflops_roofline']:.0f} GFLOP/s, the probe's best reading) | "
                     f"{roof['roofline_ms'][key]:.0f} | | | | | "
                     f"{roof['roofline_ms'][key] / payload['paths'][0]['latency_ms_median']:.2f}x | | | | |")
    return "\n".join(lines) + "\n"
