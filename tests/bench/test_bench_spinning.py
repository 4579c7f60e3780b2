"""``powersam bench --ort-spinning``: one run times the ONNX rows with ONNX Runtime's spinning on and off, each row
labelled, the sessions opened with that setting, and the plain ``onnx`` row unchanged (ORT's default)."""
from __future__ import annotations

import argparse

import pytest

from powersam.bench import pipelines as bench_pipelines
from powersam.bench.compare import CompareSettings
from powersam.bench.pipelines import BenchSettings, RuntimeUnavailable, ort_label
from powersam.bench.suite import benchmark, write_bench_outputs
from powersam.cli.bench import add_bench_arguments, run_bench


def _settings(tmp_path, **kw) -> BenchSettings:
    return BenchSettings(**{"img_size": 64, "frame": (48, 80), "boxes": 2, "threads": 1, "det_size": 64,
                            "work_dir": tmp_path / "graphs", **kw})


def test_labels_keep_the_plain_row_for_ort_s_default():
    assert ort_label("onnx", None) == "onnx"
    assert ort_label("onnx", True) == "onnx[spin=on]" and ort_label("onnx-int8", False) == "onnx-int8[spin=off]"


@pytest.mark.parametrize("value", [(), ("on",), (True, True), (0,), None])
def test_settings_reject_bad_spinning_values(value):
    for settings in (BenchSettings, CompareSettings):
        with pytest.raises(ValueError, match="ort_spinning"):
            settings(ort_spinning=value)


def test_one_run_gives_a_labelled_row_per_spinning_setting(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import powersam.runtime.session as session_module

    opened = []

    class Spy(session_module.GraphSession):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append(self.spinning)

    monkeypatch.setattr(session_module, "GraphSession", Spy)  # the bench imports it when it opens the sessions
    bench = benchmark(["powersam_s"], ["torch", "onnx"], _settings(tmp_path, ort_spinning=(None, True, False)),
                      repeats=1, warmup=0, complexity=False)
    records = bench["records"]
    assert [r["runtime"] for r in records] == ["torch", "onnx", "onnx[spin=on]", "onnx[spin=off]"]
    assert all(r["available"] for r in records), [r.get("error") for r in records]
    assert [r.get("ort_spinning") for r in records] == [None, "default", "on", "off"]
    assert opened == [None, True, False]  # one integrated graph per row, same exported file
    assert len({r["graphs"][0] for r in records[1:]}) == 1
    assert bench["settings"]["ort_spinning"] == ["default", "on", "off"]
    markdown = write_bench_outputs(bench, tmp_path / "out")["md"].read_text()
    assert "onnx[spin=on]" in markdown and "onnx[spin=off]" in markdown


def test_unavailable_rows_carry_their_spinning_label(tmp_path, monkeypatch):
    seen = []

    def unavailable(*args, spinning=None, **kwargs):
        seen.append(spinning)
        raise RuntimeUnavailable("not available: no INT8 here")

    monkeypatch.setattr(bench_pipelines, "onnx_pipeline", unavailable)
    bench = benchmark(["powersam_s"], ["onnx-int8", "torch"], _settings(tmp_path, ort_spinning=(True, False)),
                      repeats=1, warmup=0, complexity=False)
    assert [r["runtime"] for r in bench["records"]] == ["onnx-int8[spin=on]", "onnx-int8[spin=off]", "torch"]
    assert seen == [True, False]


def test_spinning_without_an_onnx_runtime_is_a_reported_failure(tmp_path, capsys):
    args = add_bench_arguments(argparse.ArgumentParser()).parse_args(
        ["--runtime", "torch", "--ort-spinning", "off", "--out", str(tmp_path / "o"), "--no-progress"])
    assert run_bench(args) == 1
    assert "--ort-spinning) applies to the ONNX runtimes" in capsys.readouterr().err
