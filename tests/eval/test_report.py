"""``powersam report``: tables from a synthetic run folder, paper columns beside them, missing parts skipped."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from powersam.cli.report import add_report_arguments, run_report
from powersam.eval.report import (
    COMPARABLE,
    NOT_COMPARABLE,
    markdown_table,
    table2_markdown,
    write_report,
)

MIOU = {"box": 71.234, "box+1": 80.0, "box+2": 85.5, "point": 55.0, "point+1": 66.0, "point+2": None}
BENCH_RECORD = {
    "model": "powersam_s", "runtime": "torch", "available": True, "structure": "integrated",
    "latency_ms_median": 250.0, "latency_ms_p90": 260.0, "fps": 4.0, "params_total": 9_968_327,
    "gmacs_total": 27.9,
    "parts": {"encoder": {"median": 200.0, "p90": 205.0}, "preprocess": {"median": 5.0, "p90": 6.0}},
}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    _write_json(run / "metrics.json", {"student": {"miou_box": 71.234567, "steps": 3}, "note": "tiny"})
    _write_json(run / "eval" / "student_miou.json", {
        "model": "powersam_s", "miou": MIOU, "per_size": {"small": {"box": 10.0}, "large": {"box": 90.0}},
        "size_counts": {"small": 3, "large": 4}})
    _write_json(run / "eval" / "teacher_miou.json", {"model": "sam_vit_t", "miou": {"box": 90.0, "point": 80.0}})
    _write_json(run / "eval" / "integrated_det.json", {
        "model": "powersam_s", "bbox": {"AP": 0.4567, "AP50": 0.7, "AP75": 0.5, "AR100": 0.61, "AP_s": 0.12,
                                        "AP_m": None, "AP_l": 0.8},
        "segm": {"AP": 0.3, "AP50": 0.6}})
    _write_json(run / "bench" / "bench.json", {
        "machine": {"cpu": "Test CPU", "threads": 1, "device": "cpu"},
        "records": [BENCH_RECORD, {"model": "edgesam", "runtime": "onnx-int8", "available": False,
                                   "error": "not available: x"}]})
    _png(run / "stage1" / "curves.png")
    _png(run / "stage2" / "curves.png")
    _png(run / "overlays" / "img_0.png")
    (run / "config.yaml").write_text("model: powersam_s\nepochs: 3\n")
    return run


def test_report_has_every_table_next_to_the_paper(run_dir):
    text = write_report(run_dir).read_text()
    assert (run_dir / "report.md").is_file()
    # Headline metrics flattened.
    assert "| student.miou_box | 71.2346 |" in text and "| student.steps | 3 |" in text and "| note | tiny |" in text
    # Table 1 layout, with FPS from the bench and the paper's rows labelled.
    assert "| model | source | Box | +1 Pt | +2 Pt | Point | +1 Pt | +2 Pt | FPS |" in text
    assert "| student_miou (powersam_s) | this run | 71.23 | 80.00 | 85.50 | 55.00 | 66.00 | – | 4.00 |" in text
    assert "| teacher_miou (sam_vit_t) | this run | 90.00 | – | – | 80.00 | – | – | – |" in text
    assert f"| PowerSAM-S | {NOT_COMPARABLE} | 19.456 | 40.323 | 48.702 | 58.292 | 64.616 | 68.096 | 43.16 |" in text
    assert "| student_miou | small | 3 | 10.00 |" in text
    # Table 3 layout: the paper's "AR (Small)" row compared with AP_s.
    assert "| AR (Small)* [AP_s] | 0.120 | 0.421 | 0.345 |" in text
    assert "| AR (Overall) [AR100] | 0.610 | 0.695 | 0.533 |" in text
    assert "| AR (Medium)* [AP_m] | – | 0.534 | 0.348 |" in text
    assert "Mask AP (no paper counterpart)" in text and "| AP | 0.300 |" in text
    # Table 2 layout with the matching paper row beside ours.
    ours = "| powersam_s | torch | I | 27.90 | 9.97 | 250.00 | 260.00 | 4.00 |"
    assert f"{ours} RepViT-M0 I | 27.18 | 9.18 | 23.16 |" in text
    assert "| encoder | " not in text and "| powersam_s | torch | 5.00 (6.00) | 200.00 (205.00) |" in text
    assert "| edgesam | onnx-int8" not in text  # unavailable records stay out of the tables, listed instead
    assert "- edgesam / onnx-int8: not available: x" in text
    # Images and config, linked relative to the report.
    assert "![stage1/curves.png](stage1/curves.png)" in text and "![stage2/curves.png](stage2/curves.png)" in text
    assert "![overlays/img_0.png](overlays/img_0.png)" in text
    assert "[config.yaml](config.yaml)" in text and "epochs: 3" in text
    assert "_No" not in text  # nothing skipped


def test_links_are_relative_to_a_report_written_elsewhere(run_dir, tmp_path):
    out = tmp_path / "site" / "run_report.md"
    assert write_report(run_dir, out) == out
    text = out.read_text()
    assert "![overlays/img_0.png](../run/overlays/img_0.png)" in text
    assert "[bench/bench.json](../run/bench/bench.json)" in text


def test_empty_run_folder_skips_every_section(tmp_path):
    text = write_report(tmp_path).read_text()
    for note in ("_No readable metrics.json", "_No eval/*miou*.json", "_No eval/*det*.json", "_No bench/bench.json",
                 "_No */curves.png", "_No overlays/*.png", "_No config.yaml"):
        assert note in text
    assert "| PowerSAM-S |" not in text


def test_malformed_files_are_skipped_not_fatal(tmp_path):
    (tmp_path / "metrics.json").write_text("{not json")
    _write_json(tmp_path / "eval" / "a_miou.json", {"model": "x"})  # no "miou"
    _write_json(tmp_path / "eval" / "b_det.json", ["not", "a", "dict"])
    _write_json(tmp_path / "bench" / "bench.json", {"records": "nope"})
    text = write_report(tmp_path).read_text()
    assert "_No readable metrics.json" in text and "_No eval/*miou*.json" in text
    assert "_No eval/*det*.json" in text and "_No bench/bench.json" in text


def test_a_run_may_declare_the_paper_comparable(run_dir):
    _write_json(run_dir / "metrics.json", {"paper_comparable": True})
    text = write_report(run_dir).read_text()
    assert COMPARABLE in text and NOT_COMPARABLE not in text


def test_table2_leaves_unmatched_paper_columns_empty():
    row = {**BENCH_RECORD, "model": "edgesam", "structure": "segmenter", "params_total": None,
           "gmacs_total": None}
    expected = "| edgesam | torch | SAM only | – | – | 250.00 | 260.00 | 4.00 | – | – | – | – |"
    assert expected in table2_markdown([row])


def test_markdown_table_shape():
    assert markdown_table(("a", "b"), [(1, 2)]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_cli_exit_codes(run_dir, tmp_path, capsys):
    parser = add_report_arguments(argparse.ArgumentParser())
    assert run_report(parser.parse_args([str(run_dir), "--out", str(tmp_path / "r.md")])) == 0
    assert (tmp_path / "r.md").is_file() and "wrote" in capsys.readouterr().out
    assert run_report(parser.parse_args([str(tmp_path / "missing")])) == 1
    assert "does not exist" in capsys.readouterr().err
