"""Per-model, per-runtime frame pipelines for ``powersam bench`` (see :mod:`powersam.bench.runner` for the timing).

A frame is what ``model.predict(image)`` does, cut into timed stages with the same library calls:

==============  ===========================================================================================
preprocess      resize the long side to S (Pillow bilinear), normalise, zero-pad (:func:`preprocess_image`)
encoder         image encoder; for integrated PowerSAM ``forward_multiscale`` (stage maps + SAM embedding)
bbpg            integrated only: PAFPN + YOLOX head on the shared stage maps
det_preprocess  decoupled only: letterbox to ``det_size`` for the separate YOLOX-S
detector        decoupled only: YOLOX-S forward
detect          box decoding, score threshold, class-aware NMS (integrated and decoupled)
decoder         prompt encoder + mask decoder for the frame's boxes (single-mask output)
postprocess     upsample the low-res logits to the original image and threshold (:func:`masks_to_original`)
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

from ..models.powersam import DecoupledPowerSAM, DetectSegmentModel, PowerSAM
from ..transforms import masks_to_original, preprocess_image
from .runner import Pipeline, Stage

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

    def __post_init__(self) -> None:
        if self.img_size < 16:
            raise ValueError(f"img_size must be >= 16, got {self.img_size}")
        if len(self.frame) != 2 or min(self.frame) < 1:
            raise ValueError(f"frame must be (H, W) with positive sides, got {self.frame}")
        if not (self.boxes == "detected" or (isinstance(self.boxes, int) and self.boxes >= 0)):
            raise ValueError(f"boxes must be a non-negative int or 'detected', got {self.boxes!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


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


def _clamp_to(boxes: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    h, w = input_size
    boxes = boxes.clone()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, h)
    return boxes


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


def torch_pipeline(name: str, model: torch.nn.Module, settings: BenchSettings) -> Pipeline:
    """The frame of :meth:`DetectSegmentModel.predict` (or of SAM with given boxes) as timed torch stages."""
    device = torch.device(settings.device)
    image = synthetic_image(settings.frame, settings.seed)
    img_size = model.img_size
    structure = structure_of(model)
    use_detected = settings.boxes == "detected"
    # The input frame size is fixed by the image, so the synthetic boxes can be made once, outside the timing.
    _, input_size = preprocess_image(image, img_size, model.pixel_mean.cpu(), model.pixel_std.cpu())
    sam_scale = [input_size[1] / image.shape[1], input_size[0] / image.shape[0]] * 2  # (sx, sy, sx, sy)
    given_boxes = None if use_detected else synthetic_boxes(int(settings.boxes), input_size).to(device)
    info: dict[str, Any] = {
        "structure": structure,
        "img_size": img_size,
        "frame": list(settings.frame),
        "det_size": model.det_size if structure == "decoupled" else None,
        "boxes": "detected" if use_detected else int(settings.boxes),
        "reparameterized": bool(getattr(model.image_encoder, "is_reparameterized", False)),
        "checkpoint": str(settings.checkpoints[name]) if name in settings.checkpoints else None,
        "precision": "fp32",
    }
    detection = dict(score_thr=getattr(model, "score_thr", 0.5), nms_iou=getattr(model, "nms_iou", 0.65),
                     max_det=getattr(model, "max_det", 100))

    def preprocess(s: dict[str, Any]) -> None:
        s["x"], s["input_size"] = preprocess_image(s["image"], img_size, model.pixel_mean, model.pixel_std, device)

    def encoder(s: dict[str, Any]) -> None:
        if structure == "integrated":
            *s["stages"], s["embedding"] = model.image_encoder.forward_multiscale(s["x"])
        else:
            s["embedding"] = model.image_encoder(s["x"])

    def bbpg(s: dict[str, Any]) -> None:
        s["raw"] = model.box_generator(tuple(s["stages"]))

    def det_preprocess(s: dict[str, Any]) -> None:
        s["det_x"], s["det_scale"] = model.detector_input(s["image"])

    def detector(s: dict[str, Any]) -> None:
        s["raw"] = model.detector(s["det_x"])

    def detect(s: dict[str, Any]) -> None:
        dets = model.box_generator.bbox_head if structure == "integrated" else model.detector.bbox_head
        boxes = dets.predict(*s["raw"], **detection)[0]["boxes"]
        if structure == "decoupled":  # detector input frame → SAM input frame, as DecoupledPowerSAM does
            boxes = boxes / s["det_scale"] * boxes.new_tensor(sam_scale)
        s["detected"] = _clamp_to(boxes, s["input_size"])

    def decoder(s: dict[str, Any]) -> None:
        boxes = s["detected"] if use_detected else given_boxes
        # segment_boxes only touches prompt_encoder/mask_decoder, so it serves plain Sam models too (one code path).
        s["low_res"], _ = DetectSegmentModel.segment_boxes(model, s["embedding"], boxes)
        info["boxes_decoded"] = int(boxes.shape[0])

    def postprocess(s: dict[str, Any]) -> None:
        s["masks"] = masks_to_original(s["low_res"], s["input_size"], image.shape[:2], img_size, output_device="cpu")

    plan = {
        "integrated": [preprocess, encoder, bbpg, detect, decoder, postprocess],
        "decoupled": [preprocess, det_preprocess, detector, detect, encoder, decoder, postprocess],
        "segmenter": [preprocess, encoder, decoder, postprocess],
    }[structure]
    stages = [Stage(fn.__name__, _inference(fn)) for fn in plan]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    return Pipeline(
        model=name,
        runtime="torch",
        stages=stages,
        new_state=lambda: {"image": image},
        sync=sync,
        info=info,
    )


def _inference(fn):
    def run(state: dict[str, Any]) -> None:
        with torch.inference_mode():
            fn(state)

    run.__name__ = fn.__name__
    return run


def build_pipeline(name: str, runtime: str, settings: BenchSettings,
                   model: Optional[torch.nn.Module] = None) -> Pipeline:
    """One model × runtime pipeline. Raises :class:`RuntimeUnavailable` when the runtime cannot run here.

    ``model`` (already built by :func:`build_bench_model`) lets several runtimes share one torch model."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known runtimes: {', '.join(RUNTIMES)}")
    model = model if model is not None else build_bench_model(name, settings)
    if settings.boxes == "detected" and structure_of(model) == "segmenter":
        raise ValueError(f"{name} has no detector; give a number of boxes instead of 'detected'")
    if runtime == "torch":
        return torch_pipeline(name, model, settings)
    return onnx_pipeline(name, model, settings, quantized=runtime == "onnx-int8")


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


def _sessions(paths: list[Path], settings: BenchSettings) -> list[Any]:
    try:
        from ..runtime.session import GraphSession
    except ImportError as err:
        raise RuntimeUnavailable(f"not available: powersam.runtime cannot be imported ({err})") from None
    providers = "cuda" if settings.device.startswith("cuda") else "cpu"
    try:
        return [GraphSession(p, providers=providers, threads=settings.threads) for p in paths]
    except (ImportError, ValueError) as err:  # onnxruntime missing, or no CUDA execution provider in this build
        raise RuntimeUnavailable(f"not available: {err}") from None


def onnx_pipeline(name: str, model: torch.nn.Module, settings: BenchSettings, quantized: bool = False) -> Pipeline:
    """The same frame on ONNX Runtime (``onnx``, or ``onnx-int8`` with quantised graphs).

    Integrated and decoupled models run their single exported graph (backbone(s), detector, NMS, decoder), timed
    as one ``network`` stage (the decoupled graph's detector input is prepared in ``preprocess``). To decode exactly
    K boxes with random weights, the graph is fed ``score_thr = 0`` and ``max_det = K``, so its NMS sees every
    candidate (a little more work than a real frame's few candidates). SAM-only models run the encoder/decoder
    pair. Raises :class:`RuntimeUnavailable` with the reason when something is missing.
    """
    structure = structure_of(model)
    from ..runtime.preprocess import preprocess_image as np_preprocess
    from ..runtime.preprocess import upsample_masks

    sessions = _sessions(_export(name, model, settings, quantized), settings)
    meta = sessions[0].metadata
    image = synthetic_image(settings.frame, settings.seed)
    _, input_size = np_preprocess(image, meta.img_size, meta.pixel_mean, meta.pixel_std, meta.resize_mode)
    use_detected = settings.boxes == "detected"
    count = 0 if use_detected else int(settings.boxes)
    boxes = synthetic_boxes(count, input_size).numpy()
    info: dict[str, Any] = {
        "structure": structure, "img_size": meta.img_size, "frame": list(settings.frame), "det_size": meta.det_size,
        "boxes": "detected" if use_detected else count,
        "reparameterized": bool(getattr(model.image_encoder, "is_reparameterized", False)),
        "checkpoint": str(settings.checkpoints[name]) if name in settings.checkpoints else None,
        "precision": "int8" if quantized else "fp32", "providers": sessions[0].providers,
        "graphs": [str(s.path) for s in sessions],
    }

    def preprocess(s: dict[str, Any]) -> None:
        s["x"], s["input_size"] = np_preprocess(s["image"], meta.img_size, meta.pixel_mean, meta.pixel_std,
                                                meta.resize_mode)

    def postprocess(s: dict[str, Any]) -> None:
        s["masks"] = upsample_masks(s["low_res"], s["input_size"], image.shape[:2], meta.img_size,
                                    threshold=meta.mask_threshold, resize_mode=meta.resize_mode)

    if structure in ("integrated", "decoupled"):
        from ..runtime.integrated import OnnxPowerSAM

        runtime = OnnxPowerSAM(sessions[0])
        conf, max_det = (runtime.score_thr, runtime.max_det) if use_detected else (0.0, count)
        if not use_detected:
            info["note"] = f"graph fed score_thr=0, max_det={count} so that it decodes exactly {count} boxes"

        def preprocess_both(s: dict[str, Any]) -> None:
            preprocess(s)
            s["det"] = runtime.detector_feeds(s["image"], s["input_size"])  # {} for an integrated graph

        def network(s: dict[str, Any]) -> None:
            out = runtime.run_graph(s["x"], s["input_size"], conf, runtime.nms_iou, max_det, s["det"])
            s["low_res"] = out["mask_logits"]
            info["boxes_decoded"] = int(out["mask_logits"].shape[0])

        stages = [Stage("preprocess", preprocess_both), Stage("network", network), Stage("postprocess", postprocess)]
    else:
        encoder_session, decoder_session = sessions
        grid = 4 * int(meta.embedding_size or meta.img_size // 16)
        # A box is two points labelled 2 (top-left) and 3 (bottom-right); no padding point with a box, except in
        # SAM 2's token order, which always appends one.
        coords, labels = boxes.reshape(-1, 2, 2).astype(np.float32), np.tile(np.array([[2.0, 3.0]], np.float32),
                                                                             (count, 1))
        if decoder_session.metadata.prompt_order == "sam2":
            coords = np.concatenate([coords, np.zeros((count, 1, 2), np.float32)], axis=1)
            labels = np.concatenate([labels, np.full((count, 1), -1.0, np.float32)], axis=1)
        feeds = {"point_coords": coords, "point_labels": labels,
                 "mask_input": np.zeros((1, 1, grid, grid), dtype=np.float32),
                 "has_mask_input": np.zeros(1, dtype=np.float32)}
        features = [n for n in encoder_session.output_names if n in decoder_session.input_names]

        def encoder(s: dict[str, Any]) -> None:
            s["features"] = encoder_session.run({"image": s["x"]}, features)  # the embedding (+ SAM 2's high-res)

        def decoder(s: dict[str, Any]) -> None:
            if count == 0:
                s["low_res"] = np.zeros((0, 1, grid, grid), dtype=np.float32)
            else:
                s["low_res"] = decoder_session.run({**s["features"], **feeds}, ["masks"])["masks"][:, :1]
            info["boxes_decoded"] = count

        stages = [Stage(fn.__name__, fn) for fn in (preprocess, encoder, decoder, postprocess)]
    return Pipeline(model=name, runtime="onnx-int8" if quantized else "onnx", stages=stages,
                    new_state=lambda: {"image": image}, info=info)
