"""Open exported graphs by the kind their metadata records: :func:`load`.

Sits above :mod:`.session`, :mod:`.integrated` and :mod:`.predictor` so that none of them imports another upward
(no import cycle inside the runtime).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from .integrated import OnnxPowerSAM
from .predictor import OnnxSamPredictor
from .session import GraphSession, PathLike, ProviderSpec

__all__ = ["load"]


def _pair_paths(path_or_paths: Union[PathLike, Sequence[PathLike]]) -> list[Path]:
    if isinstance(path_or_paths, (str, Path)):
        path = Path(path_or_paths)
        if path.is_dir():
            pair = [path / "encoder.onnx", path / "decoder.onnx"]
            missing = [p.name for p in pair if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{path} is a folder without {', '.join(missing)} (an interactive export)")
            return pair
        return [path]
    paths = [Path(p) for p in path_or_paths]
    if len(paths) not in (1, 2):
        raise ValueError(f"expected one integrated graph or an encoder/decoder pair, got {len(paths)} paths")
    return paths


def load(
    path_or_paths: Union[PathLike, Sequence[PathLike]],
    providers: Optional[Sequence[ProviderSpec] | ProviderSpec] = None,
    threads: Optional[int] = None,
    spinning: Optional[bool] = None,
):
    """Open exported PowerSAM graphs for inference, by the kind recorded in their metadata.

    Args:
        path_or_paths: an integrated ``.onnx`` file → :class:`~powersam.runtime.OnnxPowerSAM`; an encoder or decoder
            file (its partner is found beside it by the name it records), a folder holding ``encoder.onnx`` and
            ``decoder.onnx``, or the two paths → :class:`~powersam.runtime.OnnxSamPredictor`.
        providers: execution providers (default CPU); see :func:`resolve_providers`.
        threads: intra-op threads per session (default: ONNX Runtime's choice, all cores).
        spinning: ORT worker threads busy-wait after a run (True) or sleep (False); None: ONNX Runtime's default.
            See :class:`~powersam.runtime.GraphSession` for why it matters (with more than one thread).
    """
    sessions = [GraphSession(p, providers, threads, spinning) for p in _pair_paths(path_or_paths)]
    if len(sessions) == 1:
        only = sessions[0]
        kind = only.metadata.graph
        if kind == "integrated":
            return OnnxPowerSAM(only)
        partner = only.path.parent / (only.metadata.partner or "")
        if not only.metadata.partner or not partner.is_file():
            raise FileNotFoundError(
                f"{only.path} is the {kind} of an interactive pair; its partner {partner} is missing"
            )
        sessions.append(GraphSession(partner, providers, threads, spinning))
    by_kind = {s.metadata.graph: s for s in sessions}
    if set(by_kind) != {"encoder", "decoder"}:
        kinds = [s.metadata.graph for s in sessions]
        raise ValueError(f"expected an encoder and a decoder graph, got {kinds}")
    return OnnxSamPredictor(by_kind["encoder"], by_kind["decoder"])
