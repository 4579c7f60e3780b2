"""``--ort-spinning``: parsed on ``powersam serve`` (one value) and ``powersam bench`` (a comma list), bad values are
usage errors naming the option, and a PyTorch model refuses it instead of ignoring it."""
from __future__ import annotations

import argparse

import pytest

from powersam.cli.bench import add_bench_arguments
from powersam.cli.serve import add_serve_arguments


def _serve(argv):
    return add_serve_arguments(argparse.ArgumentParser()).parse_args(["model.onnx", *argv])


def _bench(argv):
    return add_bench_arguments(argparse.ArgumentParser()).parse_args(argv)


def test_serve_flag_parses_and_defaults_to_ort_s_own():
    assert _serve([]).ort_spinning is None
    assert _serve(["--ort-spinning", "on"]).ort_spinning is True
    assert _serve(["--ort-spinning", "OFF"]).ort_spinning is False
    assert _serve(["--ort-spinning", "default"]).ort_spinning is None


def test_bench_flag_takes_a_list_in_order():
    assert _bench([]).ort_spinning == (None,)
    assert _bench(["--ort-spinning", "on,off"]).ort_spinning == (True, False)
    assert _bench(["--ort-spinning", "default, off"]).ort_spinning == (None, False)


@pytest.mark.parametrize("parse, value", [(_serve, "yes"), (_serve, "on,off"), (_bench, "on,maybe"),
                                          (_bench, "on,on"), (_bench, "")])
def test_bad_values_are_usage_errors_naming_the_option(parse, value, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(["--ort-spinning", value])
    assert exc.value.code == 2
    assert "--ort-spinning" in capsys.readouterr().err


def test_serving_a_pytorch_model_refuses_the_flag():
    from powersam.serve.server import load_served_model

    with pytest.raises(ValueError, match="--ort-spinning applies to exported ONNX models"):
        load_served_model(["powersam_s"], spinning=False)  # refused before anything is built


def test_bench_console_rows_stay_aligned_with_long_runtime_labels():
    from powersam.cli.bench import console_lines

    records = [{"model": "powersam_s", "runtime": runtime, "latency_ms_median": 200.0 + i, "latency_ms_p90": 210.0,
                "fps": 4.9} for i, runtime in enumerate(["onnx", "onnx[spin=off]", "onnx-int8[spin=off]"])]
    records.append({"model": "powersam_s", "runtime": "tensorrt", "available": False, "error": "no GPU"})
    lines = console_lines(records)
    assert len({line.index("median") for line in lines[:3]}) == 1  # one column, whatever the label length
    assert lines[3].endswith("no GPU") and "onnx-int8[spin=off] median" in lines[2]
