"""``powersam report``: one Markdown page from a pipeline run folder, each table next to the paper's numbers.

Run-folder layout read here (every entry optional; a missing one skips its section with a one-line note):

======================================  ================================================================================
``RUN_DIR/config.yaml``                 the run's configuration (linked, and shown in a collapsed block)
``RUN_DIR/metrics.json``                headline numbers: any JSON object (nested keys are flattened to ``a.b``).
                                        ``"paper_comparable": true`` declares that the run used the paper's data *and*
                                        weights; only then are the paper columns not marked "not comparable".
``RUN_DIR/eval/*miou*.json``            ``powersam eval miou --json`` outputs, e.g. ``teacher_miou.json``,
                                        ``student_miou.json`` → paper Table 1 layout (Box, +1 Pt, +2 Pt, Point, …)
``RUN_DIR/eval/*det*.json``             ``powersam eval det --json`` outputs, e.g. ``integrated_det.json``
                                        → paper Table 3 layout (AP, AP50, AP75, AR100, AP_s/m/l)
``RUN_DIR/bench/bench.json``            ``powersam bench --out RUN_DIR/bench`` → paper Table 2 layout
``RUN_DIR/<stage>/curves.png``          training curves, one per stage folder
``RUN_DIR/overlays/*.png``              example predictions
======================================  ================================================================================

Images are linked relative to the report's own location. The paper's numbers come from its private substation data,
weights and an unstated GPU, so they are labelled as not comparable unless the run says otherwise.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

NOT_COMPARABLE = "paper (their private substation data and weights; not comparable)"
COMPARABLE = "paper (same data and weights, as declared by this run)"
LATENCY_NOTE = ("Paper latency: their GPU (not stated), not this machine — compare ratios, not milliseconds. "
                "GMACs/MParams: paper convention (thop), decoder counted for one box prompt, while the latency "
                "decodes every box of the frame. The paper's decoupled rows count YOLOX-S at 1024² (spec §9.7).")

# Paper Table 1: mIoU (%) Box, +1 Pt, +2 Pt, Point, +1 Pt, +2 Pt, and FPS (= 1000 / Table-2 latency).
PAPER_TABLE1: dict[str, tuple[float, ...]] = {
    "SAM-B": (19.578, 40.678, 49.533, 58.006, 64.188, 66.512, 11.33),
    "SAM-H": (20.520, 35.983, 44.020, 59.668, 66.249, 69.059, 3.79),
    "SAM2-L": (34.341, 40.870, 44.431, 63.696, 67.605, 71.031, 8.87),
    "Pruned SAM": (19.061, 40.232, 47.345, 57.379, 64.098, 66.365, 13.83),
    "EdgeSAM": (19.368, 35.745, 46.468, 56.143, 63.308, 68.256, 30.11),
    "PowerSAM-B": (18.945, 41.012, 50.318, 57.959, 64.258, 67.626, 41.54),
    "PowerSAM-S": (19.456, 40.323, 48.702, 58.292, 64.616, 68.096, 43.16),
}
# Paper Table 2: backbone, structure, GFLOPs (thop MACs), MParams, latency (ms).
PAPER_TABLE2: dict[str, tuple[str, str, float, float, float]] = {
    "ViT-B D": ("ViT-B", "D", 406.27, 99.43, 88.22),
    "ViT-H D": ("ViT-H", "D", 2770.90, 644.58, 263.39),
    "Hiera-L D": ("Hiera-L", "D", 830.36, 225.84, 112.61),
    "Pruned ViT-B D": ("Pruned ViT-B", "D", 132.36, 35.33, 72.32),
    "RepViT-M1 D": ("RepViT-M1", "D", 57.93, 18.52, 33.21),
    "RepViT-M0 D": ("RepViT-M0", "D", 48.60, 15.94, 30.37),
    "RepViT-M1 I": ("RepViT-M1", "I", 36.51, 11.76, 24.06),
    "RepViT-M0 I": ("RepViT-M0", "I", 27.18, 9.18, 23.16),
}
# Paper Table 3 (0–1). Its "AR (Small/Medium/Large)" rows are really AP_s/AP_m/AP_l (spec §9.6).
PAPER_TABLE3: dict[str, dict[str, float]] = {
    "YOLOX-S": {"AP": 0.620, "AP50": 0.858, "AP75": 0.721, "AR100": 0.695, "AP_s": 0.421, "AP_m": 0.534, "AP_l": 0.728},
    "BBPG": {"AP": 0.501, "AP50": 0.716, "AP75": 0.565, "AR100": 0.533, "AP_s": 0.345, "AP_m": 0.348, "AP_l": 0.662},
}
PAPER_TABLE3_LABELS = {"AP": "AP (Overall)", "AP50": "AP@0.5", "AP75": "AP@0.75", "AR100": "AR (Overall)",
                       "AP_s": "AR (Small)*", "AP_m": "AR (Medium)*", "AP_l": "AR (Large)*"}
# Zoo name → paper row (Table 1 / Table 2). The paper's SAM FPS includes YOLOX-S, i.e. the decoupled pipeline.
ZOO_TO_TABLE1 = {"powersam_s": "PowerSAM-S", "powersam_b": "PowerSAM-B", "edgesam": "EdgeSAM",
                 "sam_vit_b": "SAM-B", "sam_vit_b_decoupled": "SAM-B", "sam_vit_h": "SAM-H",
                 "sam_vit_h_decoupled": "SAM-H"}
ZOO_TO_TABLE2 = {"powersam_s": "RepViT-M0 I", "powersam_b": "RepViT-M1 I", "powersam_s_decoupled": "RepViT-M0 D",
                 "powersam_b_decoupled": "RepViT-M1 D", "sam_vit_b_decoupled": "ViT-B D",
                 "sam_vit_h_decoupled": "ViT-H D"}
MIOU_KEYS = ("box", "box+1", "box+2", "point", "point+1", "point+2")
MIOU_HEADERS = ("Box", "+1 Pt", "+2 Pt", "Point", "+1 Pt", "+2 Pt")
DET_KEYS = ("AP", "AP50", "AP75", "AR100", "AP_s", "AP_m", "AP_l")
STAGE_ORDER = ("preprocess", "det_preprocess", "detector", "encoder", "bbpg", "detect", "network", "decoder",
               "postprocess")
STRUCTURE_CODE = {"integrated": "I", "decoupled": "D", "segmenter": "SAM only"}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells are used as given (format numbers first)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def table1_markdown(rows: Sequence[tuple[str, Optional[dict], Optional[float]]], paper_label: str = NOT_COMPARABLE,
                    source: str = "this run") -> str:
    """Paper Table 1 layout: ``rows`` = (label, mIoU dict keyed ``box``, ``box+1``, … or None, FPS or None)."""
    headers = ("model", "source", *MIOU_HEADERS, "FPS")
    body = [(label, source, *(_fmt((miou or {}).get(k)) for k in MIOU_KEYS), _fmt(fps)) for label, miou, fps in rows]
    body += [(name, paper_label, *(_fmt(v, 3) for v in values[:6]), _fmt(values[6]))
             for name, values in PAPER_TABLE1.items()]
    return markdown_table(headers, body)


def _available(records: Sequence[dict]) -> list[dict]:
    return [r for r in records if r.get("available", True)]


def table2_markdown(records: Sequence[dict], paper_label: str = NOT_COMPARABLE) -> str:
    """Paper Table 2 layout from bench records: our GMACs / MParams / latency with the matching paper row beside."""
    headers = ("model", "runtime", "structure", "GMACs", "MParams", "latency median (ms)", "p90 (ms)", "FPS",
               f"{paper_label}: row", "GFLOPs", "MParams", "latency (ms)")
    body = []
    for r in _available(records):
        paper_key = ZOO_TO_TABLE2.get(r["model"])
        paper = PAPER_TABLE2.get(paper_key) if paper_key else None
        params = r.get("params_total")
        body.append((
            r["model"], r["runtime"], STRUCTURE_CODE.get(r.get("structure"), r.get("structure", "–")),
            _fmt(r.get("gmacs_total")), _fmt(params / 1e6 if params is not None else None),
            _fmt(r["latency_ms_median"]), _fmt(r["latency_ms_p90"]), _fmt(r.get("fps")),
            paper_key or "–", *((_fmt(paper[2]), _fmt(paper[3]), _fmt(paper[4])) if paper else ("–",) * 3),
        ))
    return markdown_table(headers, body)


def parts_markdown(records: Sequence[dict]) -> str:
    """Median (p90) milliseconds of every stage, one row per model × runtime."""
    available = _available(records)
    seen = {n for r in available for n in r.get("parts", {})}
    names = [n for n in STAGE_ORDER if n in seen] + sorted(seen.difference(STAGE_ORDER))
    body = [(r["model"], r["runtime"], *(
        f"{_fmt(r['parts'][n]['median'])} ({_fmt(r['parts'][n]['p90'])})" if n in r.get("parts", {}) else "–"
        for n in names)) for r in available]
    return markdown_table(("model", "runtime", *names), body)


def roofline_markdown(records: list[dict[str, Any]], roofline: dict[str, Any]) -> list[str]:
    """The hardware-limit section of ``bench.md``: every timed frame against its dense-matmul roofline."""
    def multiple(value: Optional[float]) -> str:
        return f"{value:.2f}×" if value is not None else "–"

    rows = [(r["model"], r["runtime"], _fmt(r.get("frame_gmacs_full")), _fmt(r.get("roofline_ms"), 1),
             _fmt(r.get("latency_ms_median"), 1), multiple(r.get("vs_roofline")), multiple(r.get("vs_roofline_best")))
            for r in _available(records)]
    return ["### Against the hardware limit", "",
            f"Dense float32 `torch.mm` of {roofline['probe_size']}² timed right before every frame: "
            f"{roofline['probe_gflops_min']:.0f}-{roofline['probe_gflops_roofline']:.0f} GFLOP/s (median "
            f"{roofline['probe_gflops_median']:.0f}). Roofline = 2 × the frame's true MACs (encoder, box-prompt "
            "generator or detector, and every decoded box) / the probe's rate. Paired: the median over frames of "
            "each frame against the reading just before it (the machine's speed drifts); best probe: the median "
            "frame against the run's best reading (roofline ms is at that rate).", "",
            markdown_table(("model", "runtime", "frame GMACs (true)", "roofline ms", "latency ms",
                            "/ roofline, paired", "/ roofline, best probe"), rows)]


def bench_markdown(bench: dict[str, Any], miou: Optional[dict[str, dict]] = None,
                   paper_label: str = NOT_COMPARABLE) -> str:
    """The body of ``bench.md``: settings, Table-2 rows, per-stage times, Table-1 rows with FPS (and mIoU)."""
    records, settings, machine = bench.get("records", []), bench.get("settings", {}), bench.get("machine", {})
    out = [
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cpu_usable', '?')} usable cores, "
        f"{machine.get('threads', '?')} thread(s), device {machine.get('device', '?')}"
        + (f" ({machine['gpu']})" if machine.get("gpu") else "")
        + f"; torch {machine.get('torch')}, onnxruntime {machine.get('onnxruntime')}, numpy {machine.get('numpy')}; "
        f"{machine.get('os', '?')}.",
        f"Settings: input {settings.get('img_size')}², frame {settings.get('frame')}, boxes per frame "
        f"{settings.get('boxes')}, {settings.get('warmup')} warm-up + {settings.get('repeats')} timed frames per "
        "pipeline, interleaved round-robin. Latency = whole frame (preprocess → masks at the original size); "
        "FPS = 1000 / median latency.",
        "", "### Complexity and latency (paper Table 2 layout)", "", table2_markdown(records, paper_label), "",
        LATENCY_NOTE, "", "### Per-stage latency, median (p90) ms", "", parts_markdown(records),
    ]
    if bench.get("roofline"):
        out += ["", *roofline_markdown(records, bench["roofline"])]
    unavailable = [r for r in records if not r.get("available", True)]
    if unavailable:
        out += ["", "Not measured:", *(f"- {r['model']} / {r['runtime']}: {r.get('error')}" for r in unavailable)]
    rows = [(f"{r['model']} ({r['runtime']})", (miou or {}).get(r["model"], {}).get("miou"), r.get("fps"))
            for r in _available(records)]
    out += ["", "### Accuracy and speed (paper Table 1 layout)", ""]
    if not miou:
        out += ["No mIoU results given (`--miou-json`); mIoU columns are empty.", ""]
    out += [table1_markdown(rows, paper_label)]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------- report
def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        items: list[tuple[str, Any]] = []
        for key, value in data.items():
            items += _flatten(value, f"{prefix}{key}.")
        return items
    text = json.dumps(data) if isinstance(data, (list, tuple)) else data
    if isinstance(text, str) and len(text) > 120:
        text = text[:117] + "..."
    return [(prefix.rstrip("."), text)]


def _metrics_section(run_dir: Path) -> list[str]:
    metrics = _read_json(run_dir / "metrics.json")
    if metrics is None:
        return ["_No readable metrics.json; headline numbers skipped._"]
    rows = [(key, _fmt(value, 4) if isinstance(value, float) else _fmt(value)) for key, value in _flatten(metrics)]
    return [markdown_table(("metric", "value"), rows)]


def _miou_section(run_dir: Path, paper_label: str, fps: dict[str, float]) -> list[str]:
    files = sorted((run_dir / "eval").glob("*miou*.json"))
    loaded = [(f, _read_json(f)) for f in files]
    loaded = [(f, d) for f, d in loaded if isinstance(d, dict) and isinstance(d.get("miou"), dict)]
    if not loaded:
        return ["_No eval/*miou*.json; mIoU tables skipped._"]
    rows = []
    for f, data in loaded:
        model = data.get("model")
        label = f"{f.stem} ({model})" if model else f.stem
        if data.get("zoom"):  # decoded on a crop around each box (powersam.inference.zoom)
            label += f", zoom-in ×{data['zoom']:g}"
        rows.append((label, data["miou"], fps.get(model)))
    out = [table1_markdown(rows, paper_label), "",
           "mIoU ×100 over all prompted instances; FPS from bench/bench.json where the model was benchmarked "
           "(the paper's FPS = 1000 / its Table-2 latency on its own GPU).",
           "", "Per object size (COCO area buckets):", ""]
    size_rows = [(f.stem, size, data.get("size_counts", {}).get(size, "–"),
                  *(_fmt(values.get(k)) for k in MIOU_KEYS))
                 for f, data in loaded for size, values in data.get("per_size", {}).items()]
    out.append(markdown_table(("run", "size", "instances", *MIOU_HEADERS), size_rows))
    return out


def _det_section(run_dir: Path, paper_label: str) -> list[str]:
    files = sorted((run_dir / "eval").glob("*det*.json"))
    loaded = [(f, _read_json(f)) for f in files]
    loaded = [(f, d) for f, d in loaded if isinstance(d, dict) and isinstance(d.get("bbox"), dict)]
    if not loaded:
        return ["_No eval/*det*.json; detection tables skipped._"]
    headers = ("metric", *(f"{f.stem} ({d.get('model', '?')})" for f, d in loaded),
               f"{paper_label}: YOLOX-S", "BBPG")
    rows = [(PAPER_TABLE3_LABELS[k] + f" [{k}]", *(_fmt(d["bbox"].get(k), 3) for _, d in loaded),
             _fmt(PAPER_TABLE3["YOLOX-S"][k], 3), _fmt(PAPER_TABLE3["BBPG"][k], 3)) for k in DET_KEYS]
    out = [markdown_table(headers, rows), "",
           "Box AP (0–1). \\* The paper's \"AR (Small/Medium/Large)\" rows are AP_s/AP_m/AP_l (spec §9.6); this "
           "table compares them with our AP_s/AP_m/AP_l."]
    with_masks = [(f, d) for f, d in loaded if isinstance(d.get("segm"), dict)]
    if with_masks:
        seg_rows = [(k, *(_fmt(d["segm"].get(k), 3) for _, d in with_masks)) for k in DET_KEYS]
        out += ["", "Mask AP (no paper counterpart):", "",
                markdown_table(("metric", *(f.stem for f, _ in with_masks)), seg_rows)]
    return out


def _link(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path, out_dir)).as_posix()


def _bench_section(run_dir: Path, out_dir: Path, paper_label: str) -> tuple[list[str], dict[str, float]]:
    bench = _read_json(run_dir / "bench" / "bench.json")
    if bench is None or not isinstance(bench.get("records"), list):
        return ["_No bench/bench.json; speed and size tables skipped._"], {}
    fps: dict[str, float] = {}
    for r in _available(bench["records"]):
        fps.setdefault(r["model"], r.get("fps"))
    out = [table2_markdown(bench["records"], paper_label), "", LATENCY_NOTE, "", "Per-stage latency, median (p90) ms:",
           "", parts_markdown(bench["records"])]
    unavailable = [r for r in bench["records"] if not r.get("available", True)]
    if unavailable:
        out += ["", "Not measured:",
                *(f"- {r.get('model')} / {r.get('runtime')}: {r.get('error')}" for r in unavailable)]
    machine = bench.get("machine", {})
    out += ["", f"Measured on {machine.get('cpu', '?')} with {machine.get('threads', '?')} thread(s), device "
                f"{machine.get('device', '?')}; details in [bench/bench.json]"
                f"({_link(run_dir / 'bench' / 'bench.json', out_dir)})."]
    return out, fps


def _images_section(run_dir: Path, out_dir: Path, pattern: str, what: str) -> list[str]:
    images = sorted(run_dir.glob(pattern))
    if not images:
        return [f"_No {pattern}; {what} skipped._"]
    lines: list[str] = []
    for p in images:  # a blank line between images keeps each one a paragraph of its own
        lines += [f"![{p.relative_to(run_dir).as_posix()}]({_link(p, out_dir)})", ""]
    return lines[:-1]


def _config_section(run_dir: Path, out_dir: Path) -> list[str]:
    config = run_dir / "config.yaml"
    if not config.is_file():
        return ["_No config.yaml._"]
    text = config.read_text(encoding="utf-8", errors="replace")
    return [f"[config.yaml]({_link(config, out_dir)})", "", "<details><summary>config.yaml</summary>", "", "```yaml",
            text.rstrip(), "```", "", "</details>"]


def _paper_label(run_dir: Path) -> str:
    metrics = _read_json(run_dir / "metrics.json")
    comparable = isinstance(metrics, dict) and metrics.get("paper_comparable") is True
    return COMPARABLE if comparable else NOT_COMPARABLE


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Assemble ``report.md`` from whatever a run folder holds (layout in the module docstring).

    Args:
        run_dir: the pipeline's run folder.
        out: the Markdown file to write (default ``RUN_DIR/report.md``); image links are relative to it.

    Returns:
        The path written.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    out_path = Path(out) if out is not None else run_dir / "report.md"
    out_dir = out_path.resolve().parent
    run_dir = run_dir.resolve()
    label = _paper_label(run_dir)
    bench_lines, fps = _bench_section(run_dir, out_dir, label)
    sections = [
        ("Headline metrics", _metrics_section(run_dir)),
        ("Mask mIoU (paper Table 1 layout)", _miou_section(run_dir, label, fps)),
        ("Box-prompt generator detection (paper Table 3 layout)", _det_section(run_dir, label)),
        ("Speed and size (paper Table 2 layout)", bench_lines),
        ("Training curves", _images_section(run_dir, out_dir, "*/curves.png", "training curves")),
        ("Example predictions", _images_section(run_dir, out_dir, "overlays/*.png", "overlays")),
        ("Configuration", _config_section(run_dir, out_dir)),
    ]
    lines = [f"# PowerSAM run report: {run_dir.name}", "",
             f"Paper columns are labelled \"{label}\"."]
    for title, body in sections:
        lines += ["", f"## {title}", "", *body]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_path
