"""Bench figures: latency vs mIoU (when accuracy results are given) or a latency bar chart.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so nothing depends on or changes the global
backend and no display is needed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

MARKERS = {"torch": "o", "onnx": "s", "onnx-int8": "^"}


def _marker(runtime: str) -> str:
    # "onnx[spin=off]" is still an onnx row: same marker, the label tells the spinning setting apart
    return MARKERS.get(runtime.split("[")[0], "D")


def _figure(width: float = 7.0, height: float = 4.5):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # matplotlib is an optional dependency ("plot" extra)
        raise RuntimeError("plots need matplotlib: pip install 'powersam[plot]'") from err
    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _available(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("available", True) and r.get("latency_ms_median") is not None]


def plot_latency_vs_miou(
    records: Sequence[dict[str, Any]],
    miou: dict[str, dict[str, Any]],
    out_path: str | Path,
    keys: Sequence[str] = ("box", "point"),
) -> Optional[Path]:
    """Scatter median latency (x, log scale) against mIoU (y) for every benchmarked model × runtime with a result.

    Args:
        records: bench records (``model``, ``runtime``, ``latency_ms_median``).
        miou: model name → ``powersam eval miou`` result (its ``"miou"`` dict is read).
        out_path: PNG to write.
        keys: mIoU entries to plot, one marker colour each (e.g. ``"box"``, ``"point"``).

    Returns:
        The path, or ``None`` when no record has an mIoU (nothing is written).
    """
    points = [(r, miou[r["model"]].get("miou", {})) for r in _available(records) if r["model"] in miou]
    points = [(r, values) for r, values in points if any(values.get(k) is not None for k in keys)]
    if not points:
        return None
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    colours = {key: f"C{i}" for i, key in enumerate(keys)}
    for index, (r, values) in enumerate(points):
        present = [k for k in keys if values.get(k) is not None]
        for key in present:
            ax.scatter(r["latency_ms_median"], values[key], color=colours[key],
                       marker=_marker(r["runtime"]), s=40)
        # One label per model × runtime (at its first plotted point) keeps the plot readable.
        ax.annotate(f"{r['model']} ({r['runtime']})", (r["latency_ms_median"], values[present[0]]),
                    textcoords="offset points", xytext=(4, 4 if index % 2 == 0 else -11), fontsize=7)
    for key in keys:  # legend entries: one per prompt kind, one per runtime marker
        ax.scatter([], [], color=colours[key], marker="o", label=f"mIoU {key}")
    for runtime in sorted({r["runtime"] for r, _ in points}):
        ax.scatter([], [], color="grey", marker=_marker(runtime), label=runtime)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.25)
    ax.set_xlabel("median latency per frame (ms, log scale)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("Latency vs mIoU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path)
    return out_path


def plot_latency_bars(records: Sequence[dict[str, Any]], out_path: str | Path) -> Optional[Path]:
    """Horizontal bars of median latency with a p90 whisker, one bar per model × runtime.

    Returns the path, or ``None`` when there is no measured record (nothing is written)."""
    measured = _available(records)
    if not measured:
        return None
    fig = _figure(7.0, 0.8 + 0.4 * len(measured))
    ax = fig.add_subplot(1, 1, 1)
    labels = [f"{r['model']} ({r['runtime']})" for r in measured]
    medians = [r["latency_ms_median"] for r in measured]
    whiskers = [max(r["latency_ms_p90"] - r["latency_ms_median"], 0.0) for r in measured]
    positions = list(range(len(measured)))
    ax.barh(positions, medians, xerr=[[0.0] * len(measured), whiskers], color="C0", capsize=3)
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency per frame (ms): median, whisker to p90")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path)
    return out_path
