"""``powersam.load(source)`` → :class:`~powersam.model.Model`: what a source is and how each kind opens.

``source`` is a zoo name, a PowerSAM checkpoint (or an official one with ``name=``), a built ``nn.Module``, an
exported ``.onnx`` graph, an interactive pair (folder, or either file), a folder written by
:meth:`~powersam.model.Model.export`, a TensorRT ``.engine``, or a list of such files. Torch is imported only when
the source is a PyTorch model, so an ONNX model loads on a torch-free device.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .model import ENCODER_NAME, EXPORTED_SUFFIXES, INTEGRATED_NAME, Model, PathLike

__all__ = ["is_exported", "load"]


def is_exported(path: Path) -> bool:
    return path.suffix.lower() in EXPORTED_SUFFIXES or (path.is_dir() and any(
        (path / f"{stem}{ext}").is_file() for stem in (INTEGRATED_NAME, ENCODER_NAME) for ext in EXPORTED_SUFFIXES))


def _open_exported(paths: list[Path], providers: Any, threads: Optional[int],
                   spinning: Optional[bool] = None) -> Model:
    """Exported graphs/engines (any of: integrated, encoder, decoder; a missing partner is found beside its half)."""
    from .runtime import GraphSession, OnnxPowerSAM, OnnxSamPredictor

    engines = {p.suffix.lower() == ".engine" for p in paths}
    if len(engines) > 1:
        raise ValueError("mix of .onnx graphs and .engine files; load one kind")
    if engines == {True}:
        if spinning is not None:  # an engine has no ORT thread pool: saying so beats ignoring the request
            raise ValueError("spinning applies to ONNX Runtime sessions (.onnx graphs), not to TensorRT engines")
        from .deploy.tensorrt import TensorRTSession

        open_session, backend = TensorRTSession, "tensorrt"
    else:
        def open_session(path: Path) -> Any:
            return GraphSession(path, providers, threads, spinning)
        backend = "onnx"
    sessions = [open_session(p) for p in paths]
    by_kind: dict[str, Any] = {}
    for session in sessions:
        kind = session.metadata.graph
        if kind in by_kind:
            raise ValueError(f"two {kind} graphs given: {by_kind[kind].path} and {session.path}")
        by_kind[kind] = session
    for half, other in (("encoder", "decoder"), ("decoder", "encoder")):
        if half in by_kind and other not in by_kind:
            partner = by_kind[half].metadata.partner
            partner_path = by_kind[half].path.parent / (partner or "")
            if not partner or not partner_path.is_file():
                raise FileNotFoundError(f"{by_kind[half].path} is the {half} of an interactive pair; its partner "
                                        f"{partner_path} is missing")
            by_kind[other] = open_session(partner_path)
    detector = OnnxPowerSAM(by_kind["integrated"]) if "integrated" in by_kind else None
    predictor = OnnxSamPredictor(by_kind["encoder"], by_kind["decoder"]) if "encoder" in by_kind else None
    return Model(backend, detector=detector, predictor=predictor, source=", ".join(str(p) for p in paths))


def _exported_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    for ext in EXPORTED_SUFFIXES:
        found = [path / f"{stem}{ext}" for stem in (INTEGRATED_NAME, ENCODER_NAME) if (path / f"{stem}{ext}").is_file()]
        if found:
            return found
    raise FileNotFoundError(f"{path} holds no {INTEGRATED_NAME}.onnx or {ENCODER_NAME}.onnx (nor .engine)")


def _torch_model(module: Any, source: str) -> Model:
    from .models.powersam import DetectSegmentModel
    from .predictor import SamPredictor

    module = module.eval()
    detector = module if isinstance(module, DetectSegmentModel) else None
    has_decoder = hasattr(module, "prompt_encoder") and hasattr(module, "mask_decoder")
    return Model("torch", detector=detector, predictor=SamPredictor(module) if has_decoder else None,
                 module=module, source=source)


def load(
    source: Union[PathLike, Sequence[PathLike], Any],
    *,
    name: Optional[str] = None,
    device: Optional[str] = None,
    providers: Any = None,
    threads: Optional[int] = None,
    spinning: Optional[bool] = None,
    **build_options: Any,
) -> Model:
    """Open any PowerSAM model as a :class:`Model` (see the module doc for what ``source`` may be).

    Args:
        name: zoo name for an official checkpoint file (PowerSAM checkpoints record theirs).
        device: PyTorch device (default: cuda when available, else cpu).
        providers / threads: ONNX Runtime execution providers (default CPU) and intra-op threads.
        spinning: ONNX Runtime's worker threads busy-wait after a run (True) or sleep (False); None: ORT's default.
            Exported ``.onnx`` models only (see :class:`powersam.runtime.GraphSession` for why it matters).
        build_options: passed to :func:`powersam.build_model` (``img_size``, ``class_names``, ``conf``, ``iou``,
            ``max_det``, ``detector_checkpoint``, ...).
    """
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
        if not paths or not all(p.suffix.lower() in EXPORTED_SUFFIXES for p in paths):
            raise ValueError(f"a list source must hold exported .onnx/.engine files; got {list(source)}")
        return _open_exported(paths, providers, threads, spinning)
    if not isinstance(source, (str, Path)):  # a built nn.Module
        if not hasattr(source, "image_encoder"):
            raise TypeError(f"source must be a name, a path or a PowerSAM/SAM module; got {type(source).__name__}")
        _no_spinning(spinning)
        return _torch_model(_to_device(source, device), type(source).__name__)
    path = Path(source)
    if is_exported(path) or path.is_dir():  # a folder is never a checkpoint: an export or no model at all
        if build_options or name or device:
            raise ValueError(f"{sorted([*build_options, *(['name'] if name else []), *(['device'] if device else [])])}"
                             " apply to PyTorch models; an export has its weights and settings built in "
                             "(use providers= for ONNX Runtime)")
        if not path.exists():
            raise FileNotFoundError(f"exported model not found: '{path}'")
        return _open_exported(_exported_files(path), providers, threads, spinning)
    _no_spinning(spinning)
    from .models.zoo import build_model, list_models

    if path.is_file():
        module = build_model(name, checkpoint=path, **build_options)
    elif path.suffix or len(path.parts) > 1:  # looks like a file, not a zoo name
        raise FileNotFoundError(f"checkpoint file not found: '{path}' (zoo names: {', '.join(list_models())})")
    elif str(source) in list_models():
        if name is not None and name != str(source):
            raise ValueError(f"source {source!r} is a zoo name already; name={name!r} contradicts it")
        module = build_model(str(source), **build_options)
    else:
        raise FileNotFoundError(f"{source!r} is neither a file nor a zoo name ({', '.join(list_models())})")
    return _torch_model(_to_device(module, device), str(source))


def _no_spinning(spinning: Optional[bool]) -> None:
    # A PyTorch model has no ONNX Runtime pool; ignoring the request would let a user believe it took effect.
    if spinning is not None:
        raise ValueError("spinning applies to exported ONNX models (ONNX Runtime's thread pool); a PyTorch model "
                         "runs on torch's threads")


def _to_device(module: Any, device: Optional[str]) -> Any:
    from .utils.device import torch_device

    return module.to(torch_device(device))
