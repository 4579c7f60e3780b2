"""Per-model, per-runtime frame pipelines for ``powersam bench`` (see :mod:`powersam.bench.runner` for the timing).

A frame is one call of the library's shared inference pipeline (:mod:`powersam.bench.frames`): ``predict`` for
models that detect, ``set_image`` + ``predict_batch`` with box prompts for SAM-only models, on the PyTorch module or
on ONNX Runtime. Its parts are the stages that pipeline times (``Results.speed``), nothing rebuilt here:

==============  ===========================================================================================
preprocess      load the image, resize the long side to S, normalise, zero-pad
encoder         image encoder; for integrated PowerSAM ``forward_multiscale`` (stage maps + SAM embedding)
bbpg            integrated only: PAFPN + YOLOX head on the shared stage maps
det_preprocess  decoupled only: letterbox to ``det_size`` for the separate YOLOX-S
detector        decoupled only: YOLOX-S forward
detect          box decoding, score threshold, class-aware NMS (integrated and decoupled)
network         an exported detect-and-segment graph (backbone(s), detection, NMS, prompt encoder + decoder)
decoder         prompt encoder + mask decoder for the frame's boxes (single-mask output)
postprocess     upsample the low-res logits to the original image and threshold
==============  ===========================================================================================

Boxes: with random weights the detector finds nothing (or noise), so by default every frame decodes the same
``K`` synthetic boxes (``--boxes K``, default 5) spread over the image; detection still runs and is timed, its
output is just not used. ``boxes="detected"`` uses the detector's boxes instead (meaningful with trained weights).
SAM-only models (``sam_vit_b``, ``edgesam``, …) have no detector: they always decode the K given boxes. The paper's
FPS for SAM rows includes YOLOX-S; bench the ``*_decoupled`` rows to compare with it.

RepViT encoders are timed in their inference form (:meth:`RepViT.reparameterize`: BatchNorm folded into convs,
RepVGG branches merged), as deployed; the record says ``"reparameterized": true``.
"""
from __future__ import annotations

import contextlib
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..models.powersam import DecoupledPowerSAM, PowerSAM
from .frames import GivenBoxes, detect_frame, frame_parts, prompt_frame
from .runner import Pipeline

RUNTIMES = ("torch", "onnx", "onnx-int8")


class RuntimeUnavailable(RuntimeError):
    """A runtime that cannot run in this installation; the bench records the reason instead of a timing."""


@dataclass
class BenchSettings:
    """What every pipeline of one bench run shares.

    Attributes:
        img_size: network input side S (1024 for the released models).
        frame: (H, W) of the synthetic original image; postprocessing upsamples masks to this size.
        boxes: number of synthetic boxes decoded per frame, or ``"detected"`` to decode the detector's boxes.
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:N"``).
        threads: CPU threads for torch / ONNX Runtime intra-op parallelism (``None``: library default).
        det_size: input side of a decoupled model's separate detector.
        checkpoints: model name → weights file (models not listed get random weights).
        work_dir: where runtimes may write exported graphs.
        seed: seed of the synthetic image.
        ort_spinning: ONNX Runtime spinning settings to time, each as its own row of every ONNX runtime (True: worker
            threads busy-wait after a run, False: they sleep, None: ORT's default; see
            :class:`powersam.runtime.GraphSession`). The default ``(None,)`` gives the plain ``onnx`` rows; an explicit
            setting labels its row ``onnx[spin=on]`` / ``onnx[spin=off]`` (:func:`ort_label`), so one run can put
            both side by side, interleaved like every other row.
    """

    img_size: int = 1024
    frame: tuple[int, int] = (1080, 1920)
    boxes: Union[int, str] = 5
    device: str = "cpu"
    threads: Optional[int] = 1
    det_size: int = 640
    checkpoints: dict[str, Path] = field(default_factory=dict)
    work_dir: Optional[Path] = None
    seed: int = 0
    ort_spinning: tuple[Optional[bool], ...] = (None,)

    def __post_init__(self) -> None:
        check_ort_spinning(self.ort_spinning)
        if self.img_size < 16:
            raise ValueError(f"img_size must be >= 16, got {self.img_size}")
        if len(self.frame) != 2 or min(self.frame) < 1:
            raise ValueError(f"frame must be (H, W) with positive sides, got {self.frame}")
        if not (self.boxes == "detected" or (isinstance(self.boxes, int) and self.boxes >= 0)):
            raise ValueError(f"boxes must be a non-negative int or 'detected', got {self.boxes!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def check_ort_spinning(values: Any) -> None:
    """ValueError naming ``ort_spinning`` unless ``values`` is a non-empty sequence of distinct True/False/None."""
    values = tuple(values) if isinstance(values, (tuple, list)) else None
    if not values or any(v is not None and not isinstance(v, bool) for v in values) or len(set(values)) < len(values):
        raise ValueError("ort_spinning must be a non-empty sequence of distinct True (spin), False (sleep) or None "
                         "(ONNX Runtime's default)")


SPIN_NAMES = {None: "default", True: "on", False: "off"}  # how records and labels name a spinning setting


def ort_label(runtime: str, spinning: Optional[bool]) -> str:
    """The row label of an ONNX runtime with a spinning setting: ``onnx`` for ORT's default (the label rows always
    had), ``onnx[spin=on]`` / ``onnx[spin=off]`` for an explicit one."""
    return runtime if spinning is None else f"{runtime}[spin={SPIN_NAMES[spinning]}]"


def synthetic_image(frame: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A deterministic H×W×3 uint8 RGB image (smooth gradients plus noise; dense networks do not care)."""
    height, width = frame
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], axis=-1)
    noise = rng.integers(0, 48, size=(height, width, 3))
    return ((base + noise) % 256).astype(np.uint8)


def synthetic_boxes(count: int, input_size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """``count``×4 xyxy float boxes inside the input frame ``(h, w)``, sides 10–50 % of the frame, deterministic."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    h, w = input_size
    rng = np.random.default_rng(seed)
    sizes = rng.uniform(0.1, 0.5, size=(count, 2)) * np.array([w, h])
    corners = rng.uniform(0.0, 1.0, size=(count, 2)) * (np.array([w, h]) - sizes)
    return torch.as_tensor(np.concatenate([corners, corners + sizes], axis=1), dtype=torch.float32)


def structure_of(model: torch.nn.Module) -> str:
    """``"integrated"`` (shared backbone + BBPG), ``"decoupled"`` (separate detector) or ``"segmenter"`` (SAM only)."""
    if isinstance(model, PowerSAM):
        return "integrated"
    if isinstance(model, DecoupledPowerSAM):
        return "decoupled"
    return "segmenter"


def build_bench_model(name: str, settings: BenchSettings) -> torch.nn.Module:
    """Build a zoo model for timing: eval mode, on the device, RepViT encoders reparameterised."""
    from ..models.zoo import build_model

    model = build_model(name, checkpoint=settings.checkpoints.get(name), img_size=settings.img_size)
    if isinstance(model, DecoupledPowerSAM):
        model.det_size = int(settings.det_size)
    model = model.to(settings.device).eval()
    if hasattr(model.image_encoder, "reparameterize"):
        model.image_encoder.reparameterize()
    return model


def _record_info(name: str, model: torch.nn.Module, settings: BenchSettings, img_size: int,
                 det_size: Optional[int], precision: str) -> dict[str, Any]:
    """The record fields that describe what was timed (the same keys, in the same order, for every runtime)."""
    return {
        "structure": structure_of(model),
        "img_size": img_size,
        "frame": list(settings.frame),
        "det_size": det_size,
        "boxes": "detected" if settings.boxes == "detected" else int(settings.boxes),
        "reparameterized": bool(getattr(model.image_encoder, "is_reparameterized", False)),
        "checkpoint": str(settings.checkpoints[name]) if name in settings.checkpoints else None,
        "precision": precision,
    }


def _given_boxes(count: int, input_size: tuple[int, int]) -> np.ndarray:
    return synthetic_boxes(count, input_size).numpy()


def torch_pipeline(name: str, model: torch.nn.Module, settings: BenchSettings) -> Pipeline:
    """Frames of :meth:`DetectSegmentModel.predict` (or of :class:`~powersam.predictor.SamPredictor` with given
    boxes) on the PyTorch module, timed by the shared pipeline."""
    device = torch.device(settings.device)
    image = synthetic_image(settings.frame, settings.seed)
    structure = structure_of(model)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    info = _record_info(name, model, settings, model.img_size,
                        model.det_size if structure == "decoupled" else None, "fp32")
    if structure == "segmenter":
        from ..predictor import SamPredictor

        boxes = synthetic_boxes(int(settings.boxes), settings.frame).numpy()  # original pixels
        frame = prompt_frame(SamPredictor(model), boxes, info, sync=sync)
    else:
        backend = model if settings.boxes == "detected" else GivenBoxes(model, int(settings.boxes), _given_boxes)
        frame = detect_frame(backend, info, sync=sync)
    return Pipeline.reporting(name, "torch", frame_parts(structure, graph=False), frame,
                              new_state=lambda: {"image": image}, sync=sync, info=info)


def build_pipeline(name: str, runtime: str, settings: BenchSettings,
                   model: Optional[torch.nn.Module] = None, spinning: Optional[bool] = None) -> Pipeline:
    """One model × runtime pipeline. Raises :class:`RuntimeUnavailable` when the runtime cannot run here.

    ``model`` (already built by :func:`build_bench_model`) lets several runtimes share one torch model;
    ``spinning``: ONNX Runtime's spinning setting of an ONNX runtime's sessions (ignored by ``torch``)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known runtimes: {', '.join(RUNTIMES)}")
    model = model if model is not None else build_bench_model(name, settings)
    if settings.boxes == "detected" and structure_of(model) == "segmenter":
        raise ValueError(f"{name} has no detector; give a number of boxes instead of 'detected'")
    if runtime == "torch":
        return torch_pipeline(name, model, settings)
    return onnx_pipeline(name, model, settings, quantized=runtime == "onnx-int8", spinning=spinning)


@contextlib.contextmanager
def pinned_threads(threads: Optional[int]):
    """Pin torch's and OpenCV's intra-op threads for the duration (restored afterwards). ONNX Runtime sessions
    get theirs from :class:`BenchSettings`; OpenCV matters because the ONNX runtime upsamples masks with it."""
    try:
        import cv2
    except ImportError:  # optional dependency of the runtime
        cv2 = None
    before = torch.get_num_threads(), (cv2.getNumThreads() if cv2 is not None else None)
    if threads is not None:
        torch.set_num_threads(threads)
        if cv2 is not None:
            cv2.setNumThreads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        if cv2 is not None:
            cv2.setNumThreads(before[1])


# ------------------------------------------------------------------------------------------------ ONNX Runtime
# The adapter imports the exporter, the runtime and the quantiser lazily: each may be absent from an installation,
# and the bench then records why instead of failing.
_EXPORTS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, list[Path]]]" = weakref.WeakKeyDictionary()


def _export(name: str, model: torch.nn.Module, settings: BenchSettings, quantized: bool) -> list[Path]:
    """ONNX graphs of a built model (integrated graph, or the encoder/decoder pair), exported once per model and
    quantised once on demand; written under ``settings.work_dir / name`` (a temporary folder when unset)."""
    try:
        from ..deploy.onnx_export import export_onnx
    except ImportError as err:
        raise RuntimeUnavailable(f"not available: the ONNX exporter cannot be imported ({err})") from None
    cache = _EXPORTS.setdefault(model, {})
    if "fp32" not in cache:
        work_dir = settings.work_dir or tempfile.mkdtemp(prefix="powersam-bench-")
        integrated = structure_of(model) in ("integrated", "decoupled")  # one detect-and-segment graph
        target = Path(work_dir) / name / ("integrated.onnx" if integrated else "interactive")
        try:
            # The pair's decoder returns only token 0 (the single-mask output the torch pipeline decodes), except
            # SAM 2's, which needs every token to choose its single mask.
            single = not integrated and not getattr(model.mask_decoder, "dynamic_multimask_via_stability", False)
            cache["fp32"] = export_onnx(model, target, interactive=not integrated,
                                        multimask_output=False if single else None)
        except Exception as err:  # recorded in bench.json; the other pipelines still run
            raise RuntimeUnavailable(
                f"not available: ONNX export of {name} failed ({type(err).__name__}: {err})") from None
    if not quantized:
        return cache["fp32"]
    if "int8" not in cache:
        try:
            from ..deploy.quantize import quantize_onnx
        except ImportError as err:
            raise RuntimeUnavailable("not available: INT8 quantisation (powersam.deploy.quantize.quantize_onnx) "
                                     f"is not implemented yet ({err})") from None
        try:
            cache["int8"] = [Path(quantize_onnx(p, p.with_name(p.stem + ".int8.onnx"))) for p in cache["fp32"]]
        except Exception as err:
            raise RuntimeUnavailable(
                f"not available: INT8 quantisation of {name} failed ({type(err).__name__}: {err})") from None
    return cache["int8"]


def _sessions(paths: list[Path], settings: BenchSettings, spinning: Optional[bool] = None) -> list[Any]:
    try:
        from ..runtime.session import GraphSession
    except ImportError as err:
        raise RuntimeUnavailable(f"not available: powersam.runtime cannot be imported ({err})") from None
    providers = "cuda" if settings.device.startswith("cuda") else "cpu"
    try:
        return [GraphSession(p, providers=providers, threads=settings.threads, spinning=spinning) for p in paths]
    except (ImportError, ValueError) as err:  # onnxruntime missing, or no CUDA execution provider in this build
        raise RuntimeUnavailable(f"not available: {err}") from None


def onnx_pipeline(name: str, model: torch.nn.Module, settings: BenchSettings, quantized: bool = False,
                  spinning: Optional[bool] = None) -> Pipeline:
    """The same frame on ONNX Runtime (``onnx``, or ``onnx-int8`` with quantised graphs), its sessions opened with
    ``spinning`` (None: ORT's default; the row is then labelled by :func:`ort_label`). The graphs are exported once
    per model, so rows of several spinning settings time the same files.

    Integrated and decoupled models run their single exported graph through ``OnnxPowerSAM`` (backbone(s), detector,
    NMS, decoder in one ``network`` stage; the pipeline's ``decoder`` step only selects the graph's masks and is
    counted in ``network``). To decode exactly K boxes with random weights, the graph is fed ``conf = 0`` and
    ``max_det = K``, so its NMS sees every candidate (a little more work than a real frame's few candidates).
    SAM-only models run the encoder/decoder pair through ``OnnxSamPredictor``. Raises :class:`RuntimeUnavailable`
    with the reason when something is missing.
    """
    structure = structure_of(model)
    sessions = _sessions(_export(name, model, settings, quantized), settings, spinning)
    meta = sessions[0].metadata
    image = synthetic_image(settings.frame, settings.seed)
    use_detected = settings.boxes == "detected"
    count = 0 if use_detected else int(settings.boxes)
    info = {**_record_info(name, model, settings, meta.img_size, meta.det_size, "int8" if quantized else "fp32"),
            "providers": sessions[0].providers, "graphs": [str(s.path) for s in sessions],
            "ort_spinning": SPIN_NAMES[spinning]}
    graph = structure in ("integrated", "decoupled")
    if graph:
        from ..runtime.integrated import OnnxPowerSAM

        if not use_detected:
            info["note"] = f"graph fed score_thr=0, max_det={count} so that it decodes exactly {count} boxes"
        frame = detect_frame(OnnxPowerSAM(sessions[0]), info, conf=None if use_detected else 0.0,
                             max_det=None if use_detected else count, fold={"decoder": "network"})
    else:
        from ..runtime.predictor import OnnxSamPredictor

        boxes = synthetic_boxes(count, settings.frame).numpy()  # original pixels
        frame = prompt_frame(OnnxSamPredictor(*sessions), boxes, info)
    return Pipeline.reporting(name, ort_label("onnx-int8" if quantized else "onnx", spinning),
                              frame_parts(structure, graph), frame,
                              new_state=lambda: {"image": image}, info=info)
