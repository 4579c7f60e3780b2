"""``powersam bench``: timing harness on a fake clock, interleaving order, tiny real pipelines, outputs, CLI."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from powersam.bench import pipelines as bench_pipelines
from powersam.bench.suite import benchmark, write_bench_outputs
from powersam.cli.bench import add_bench_arguments, run_bench
from powersam.bench.pipelines import BenchSettings, RuntimeUnavailable, synthetic_boxes, synthetic_image
from powersam.bench.runner import (
    Pipeline,
    Stage,
    interleaved_schedule,
    round_robin_order,
    run_frame,
    run_interleaved,
    summarize_ms,
    timing_record,
)

RECORD_KEYS = {"model", "runtime", "available", "latency_ms_median", "latency_ms_p90", "fps", "parts",
               "params_total", "gmacs_total", "structure", "boxes", "boxes_decoded", "reparameterized"}


class FakeClock:
    """A clock that only moves when a stage says so."""

    def __init__(self) -> None:
        self.now = 100.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _tiny_settings(tmp_path, **kw) -> BenchSettings:
    return BenchSettings(**{"img_size": 64, "frame": (48, 80), "boxes": 2, "threads": 1, "det_size": 64,
                            "work_dir": tmp_path / "graphs", **kw})


# ------------------------------------------------------------------------------------------------ harness
def test_median_and_p90_on_a_fake_clock():
    clock = FakeClock()
    durations = iter([0.010, 0.001, 0.007, 0.009, 0.002, 0.005, 0.004, 0.008, 0.003, 0.006])  # 1..10 ms, shuffled
    pipeline = Pipeline("m", "torch", [Stage("a", lambda s: clock.advance(next(durations))),
                                       Stage("b", lambda s: clock.advance(0.002))])
    [times] = run_interleaved([pipeline], repeats=10, warmup=0, timer=clock)
    record = timing_record(pipeline, times)
    # Frames take 3..12 ms: median (7 + 8) / 2 = 7.5; p90 at rank 0.9 * 9 = 8.1 → 11 + 0.1 * (12 - 11) = 11.1.
    assert record["latency_ms_median"] == pytest.approx(7.5)
    assert record["latency_ms_p90"] == pytest.approx(11.1)
    assert record["fps"] == pytest.approx(1000 / 7.5)
    assert record["parts"]["a"] == {"median": pytest.approx(5.5), "p90": pytest.approx(9.1)}
    assert record["parts"]["b"]["median"] == pytest.approx(2.0)
    assert record["num_frames"] == 10


def test_warmup_frames_are_not_timed():
    clock = FakeClock()
    durations = iter([1.0, 1.0, 0.004, 0.004, 0.004])  # two slow warm-up frames
    pipeline = Pipeline("m", "torch", [Stage("only", lambda s: clock.advance(next(durations)))])
    [times] = run_interleaved([pipeline], repeats=3, warmup=2, timer=clock)
    assert times.total == pytest.approx([0.004] * 3)


def test_stage_times_add_up_and_sync_precedes_every_clock_read():
    events = []
    clock = FakeClock()

    def timer():
        events.append("read")
        return clock()

    stages = [Stage("x", lambda s: (events.append("x"), clock.advance(0.003))),
              Stage("y", lambda s: (events.append("y"), s.setdefault("seen", s["image"]), clock.advance(0.001)))]
    pipeline = Pipeline("m", "torch", stages, new_state=lambda: {"image": 1}, sync=lambda: events.append("sync"))
    total, parts = run_frame(pipeline, timer)
    assert total == pytest.approx(0.004) and parts == {"x": pytest.approx(0.003), "y": pytest.approx(0.001)}
    assert events == ["sync", "read", "x", "sync", "read", "y", "sync", "read"]


def test_self_timed_pipeline_reports_the_shared_pipeline_stages():
    clock = FakeClock()

    def frame(state):
        clock.advance(0.010)  # wall time of the whole call, glue included
        return {"a": 3.0, "c": 4.0}

    pipeline = Pipeline.reporting("m", "torch", ["a", "b", "c"], frame, new_state=lambda: {"image": 1})
    total, parts = run_frame(pipeline, clock)
    assert total == pytest.approx(0.010)
    assert list(parts) == ["a", "b", "c"] and parts == {"a": pytest.approx(0.003), "b": 0.0, "c": pytest.approx(0.004)}
    with pytest.raises(RuntimeError, match="timed by its pipeline"):
        pipeline.stages[0].fn({})
    undeclared = Pipeline.reporting("m", "torch", ["a"], lambda s: {"a": 1.0, "z": 2.0})
    with pytest.raises(ValueError, match=r"reported stages \['z'\]"):
        run_frame(undeclared, clock)


def test_bench_frames_are_the_shared_pipeline_calls(tmp_path, monkeypatch):
    from powersam.bench import frames
    from powersam.inference import detect_and_segment

    calls = []

    def spy(backend, image, **kwargs):
        calls.append((type(backend).__name__, kwargs.get("max_det")))
        return detect_and_segment(backend, image, **kwargs)

    monkeypatch.setattr(frames, "detect_and_segment", spy)
    record, = benchmark(["powersam_s"], ["torch"], _tiny_settings(tmp_path), repeats=1, warmup=0,
                        complexity=False)["records"]
    assert calls == [("GivenBoxes", None)] and record["boxes_decoded"] == 2


def test_given_boxes_passes_on_the_backends_mask_path():
    """GivenBoxes exposes the wrapped backend's optional mask members, so a bench frame post-processes its masks
    the way predict() does (composed pass from low_res_numpy), not through the full-frame `upsample` fallback."""
    from powersam.bench.frames import GivenBoxes
    from powersam.inference.detect import compact_masks

    class Backend:
        class_names = ["a"]
        mask_threshold = 0.5

        def low_res_numpy(self, low_res):
            return np.asarray(low_res, np.float32)[:, 0], 16

        def upsample(self, *args):
            raise AssertionError("the full-frame fallback ran")

    class Plain:
        class_names = ["a"]

    given = GivenBoxes(Backend(), 1, lambda n, size: np.zeros((n, 4)))
    assert given.mask_threshold == 0.5 and callable(given.low_res_numpy)
    assert not hasattr(GivenBoxes(Plain(), 1, lambda n, size: np.zeros((n, 4))), "low_res_numpy")
    low_res = np.full((3, 1, 4, 4), -1.0, np.float32)
    low_res[1, 0, 1:3, 1:3] = 0.25  # set with threshold 0 (the pipeline's default), empty with the backend's 0.5
    low_res[2, 0, 1:3, 1:3] = 0.75
    masks = compact_masks(given, low_res, (16, 12), (30, 22))
    assert masks.empty().tolist() == [True, True, False]


def test_prompt_pipeline_times_its_four_stages():
    from powersam.inference.timing import StageTimer
    from powersam.models.zoo import build_model
    from powersam.predictor import SamPredictor

    predictor = SamPredictor(build_model("edgesam", img_size=64).eval())
    timer = StageTimer()
    predictor.set_image(synthetic_image((48, 80)), timer=timer)
    assert list(timer.ms) == ["preprocess", "encoder"]
    masks, _, _ = predictor.predict_batch(boxes=np.array([[2.0, 3.0, 40.0, 30.0]]), multimask_output=False,
                                          timer=timer)
    assert masks.shape == (1, 1, 48, 80)
    assert list(timer.ms) == ["preprocess", "encoder", "decoder", "postprocess"]
    assert all(ms >= 0 for ms in timer.ms.values())


def test_round_robin_rotates_the_start():
    assert round_robin_order(3, 0) == [0, 1, 2]
    assert round_robin_order(3, 1) == [1, 2, 0]
    assert round_robin_order(3, 5) == [2, 0, 1]
    assert round_robin_order(0, 4) == []
    assert interleaved_schedule(2, warmup=1, repeats=2) == [(False, 0), (False, 1), (True, 1), (True, 0),
                                                           (True, 0), (True, 1)]
    with pytest.raises(ValueError, match="repeats"):
        interleaved_schedule(2, warmup=0, repeats=0)


def test_pipelines_run_interleaved_in_schedule_order():
    log = []
    pipelines = [Pipeline(f"m{i}", "torch", [Stage("s", lambda s, i=i: log.append(i))]) for i in range(3)]
    results = run_interleaved(pipelines, repeats=2, warmup=1, timer=FakeClock())
    assert log == [0, 1, 2, 1, 2, 0, 2, 0, 1]
    assert [len(r.total) for r in results] == [2, 2, 2]


def test_settle_pause_precedes_every_frame_and_is_not_timed():
    clock, log = FakeClock(), []
    pipelines = [Pipeline(f"m{i}", "torch", [Stage("s", lambda s, i=i: (log.append(i), clock.advance(0.003)))])
                 for i in range(2)]

    def sleep(seconds):  # a pause the clock sees: it must fall between frames, never inside one
        log.append(("sleep", seconds))
        clock.advance(seconds)

    results = run_interleaved(pipelines, repeats=2, warmup=1, timer=clock, settle=0.5, sleep=sleep)
    assert log == [("sleep", 0.5), 0, ("sleep", 0.5), 1] * 1 + [("sleep", 0.5), 1, ("sleep", 0.5), 0] \
        + [("sleep", 0.5), 0, ("sleep", 0.5), 1]
    assert [r.total for r in results] == [pytest.approx([0.003] * 2)] * 2
    calls = []
    run_interleaved(pipelines, repeats=1, warmup=0, timer=clock, settle=0, sleep=calls.append)
    assert calls == []
    with pytest.raises(ValueError, match="settle"):
        run_interleaved(pipelines, repeats=1, settle=float("nan"))


def test_the_probe_runs_untimed_right_before_every_frame_and_pairs_with_it():
    clock, log = FakeClock(), []
    readings = iter(range(1, 100))
    pipelines = [Pipeline(f"m{i}", "torch", [Stage("s", lambda s, i=i: (log.append(i), clock.advance(0.002)))])
                 for i in range(2)]

    def probe():
        log.append("probe")
        clock.advance(7.0)  # the probe's own time must not reach any frame
        return float(next(readings))

    results = run_interleaved(pipelines, repeats=2, warmup=1, timer=clock, settle=0, probe=probe)
    assert log == ["probe", 0, "probe", 1, "probe", 1, "probe", 0, "probe", 0, "probe", 1]
    assert [r.total for r in results] == [pytest.approx([0.002] * 2)] * 2
    assert results[0].probe == [4.0, 5.0] and results[1].probe == [3.0, 6.0]  # timed frames only, in order


def test_paired_roofline_multiple():
    from powersam.bench.roofline import paired_multiple, probe_summary, roofline_ms

    # 1 GMAC: 20 ms at 100 GFLOP/s. Frames of 40 / 30 / 25 ms against readings 100 / 50 / 200 → 2.0 / 0.75 / 2.5.
    assert roofline_ms(1.0, 100.0) == pytest.approx(20.0)
    assert paired_multiple([0.040, 0.030, 0.025], [100.0, 50.0, 200.0], 1.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="one probe reading per timed frame"):
        paired_multiple([0.04, 0.03], [100.0], 1.0)
    summary = probe_summary([100.0, 50.0, 200.0], 64)
    assert summary == {"probe_size": 64, "probe_gflops_median": 100.0, "probe_gflops_min": 50.0,
                       "probe_gflops_max": 200.0, "probe_gflops_roofline": 200.0}
    with pytest.raises(ValueError, match="no timed reading"):
        probe_summary([], 64)


def test_invalid_pipelines_and_empty_timings_raise():
    with pytest.raises(ValueError, match="unique"):
        Pipeline("m", "torch", [Stage("a", print), Stage("a", print)])
    with pytest.raises(ValueError, match="no stages"):
        Pipeline("m", "torch", [])
    with pytest.raises(ValueError, match="empty"):
        summarize_ms([])


# ------------------------------------------------------------------------------------------------ pipelines
def test_synthetic_inputs_are_deterministic_and_inside_the_frame():
    assert np.array_equal(synthetic_image((30, 40), 1), synthetic_image((30, 40), 1))
    assert synthetic_image((30, 40)).shape == (30, 40, 3) and synthetic_image((30, 40)).dtype == np.uint8
    boxes = synthetic_boxes(7, (48, 64))
    assert boxes.shape == (7, 4) and torch.equal(boxes, synthetic_boxes(7, (48, 64)))
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 48).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert synthetic_boxes(0, (48, 64)).shape == (0, 4)


@pytest.mark.parametrize("kw", [{"boxes": -1}, {"boxes": "all"}, {"threads": 0}, {"frame": (0, 5)}, {"img_size": 8}])
def test_settings_reject_bad_values(kw):
    with pytest.raises(ValueError):
        BenchSettings(**kw)


def test_torch_bench_of_integrated_and_decoupled_tiny_models(tmp_path):
    bench = benchmark(["powersam_s", "powersam_s_decoupled"], ["torch"], _tiny_settings(tmp_path),
                      repeats=2, warmup=1, complexity=True)
    integrated, decoupled = bench["records"]
    for record in (integrated, decoupled):
        assert RECORD_KEYS <= set(record), RECORD_KEYS - set(record)
        assert record["available"] and record["boxes_decoded"] == 2 and record["reparameterized"]
        assert 0 < record["latency_ms_median"] <= record["latency_ms_p90"]
        assert record["fps"] == pytest.approx(1000 / record["latency_ms_median"])
        assert record["params_total"] > 1e6 and record["gmacs_total"] > 0
    assert list(integrated["parts"]) == ["preprocess", "encoder", "bbpg", "detect", "decoder", "postprocess"]
    assert list(decoupled["parts"]) == ["preprocess", "det_preprocess", "detector", "detect", "encoder", "decoder",
                                        "postprocess"]
    assert integrated["structure"] == "integrated" and decoupled["structure"] == "decoupled"
    assert decoupled["det_size"] == 64
    assert bench["machine"]["threads"] == 1 and bench["machine"]["torch"] == torch.__version__
    assert bench["settings"]["repeats"] == 2

    written = write_bench_outputs(bench, tmp_path / "out")
    saved = json.loads(written["json"].read_text())
    assert saved["records"][0]["model"] == "powersam_s" and "machine" in saved
    markdown = written["md"].read_text()
    assert "RepViT-M0 I" in markdown and "RepViT-M0 D" in markdown and "27.18" in markdown
    assert written["figure"].name == "latency.png" and written["figure"].stat().st_size > 0


def test_detected_boxes_and_zero_boxes(tmp_path):
    detected = benchmark(["powersam_s"], ["torch"], _tiny_settings(tmp_path, boxes="detected"), repeats=1,
                         warmup=0, complexity=False)["records"][0]
    assert detected["boxes"] == "detected" and detected["boxes_decoded"] >= 0
    none = benchmark(["powersam_s"], ["torch"], _tiny_settings(tmp_path, boxes=0), repeats=1, warmup=0,
                     complexity=False)["records"][0]
    assert none["boxes_decoded"] == 0 and none["available"]


def test_onnx_runtime_decodes_the_same_number_of_boxes(tmp_path):
    pytest.importorskip("onnxruntime")
    bench = benchmark(["powersam_s"], ["torch", "onnx"], _tiny_settings(tmp_path), repeats=1, warmup=1,
                      complexity=False)
    torch_record, onnx_record = bench["records"]
    if not onnx_record["available"]:  # the exporter or runtime is missing here: the reason must be recorded
        assert onnx_record["error"].startswith("not available:")
        return
    assert onnx_record["boxes_decoded"] == torch_record["boxes_decoded"] == 2
    assert list(onnx_record["parts"]) == ["preprocess", "network", "postprocess"]
    assert onnx_record["precision"] == "fp32"


def test_sam2_pair_runs_on_onnx_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    settings = _tiny_settings(tmp_path, img_size=128)  # Hiera: 16× its 8×8 window position embedding
    record, = benchmark(["sam2_hiera_t"], ["onnx"], settings, repeats=1, warmup=0, complexity=False)["records"]
    assert record["available"], record.get("error")
    assert record["boxes_decoded"] == 2 and list(record["parts"]) == ["preprocess", "encoder", "decoder",
                                                                      "postprocess"]


def test_decoupled_graph_runs_on_onnx_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    bench = benchmark(["powersam_s_decoupled"], ["onnx"], _tiny_settings(tmp_path), repeats=1, warmup=0,
                      complexity=False)
    decoupled, = bench["records"]
    assert decoupled["available"], decoupled.get("error")
    assert decoupled["boxes_decoded"] == 2 and decoupled["det_size"] == 64
    assert list(decoupled["parts"]) == ["preprocess", "network", "postprocess"]


def test_unavailable_runtime_is_recorded_and_the_rest_still_runs(tmp_path, monkeypatch):
    def unavailable(*args, **kwargs):
        raise RuntimeUnavailable("not available: no INT8 here")

    monkeypatch.setattr(bench_pipelines, "onnx_pipeline", unavailable)
    bench = benchmark(["powersam_s"], ["onnx-int8", "torch"], _tiny_settings(tmp_path), repeats=1, warmup=0,
                      complexity=False)
    int8, torch_record = bench["records"]
    assert int8 == {"model": "powersam_s", "runtime": "onnx-int8", "available": False,
                    "error": "not available: no INT8 here"}
    assert torch_record["available"]
    markdown = write_bench_outputs(bench, tmp_path / "out")["md"].read_text()
    assert "powersam_s / onnx-int8: not available: no INT8 here" in markdown


# ------------------------------------------------------------------------------------------------ CLI
def _parse(argv):
    return add_bench_arguments(argparse.ArgumentParser()).parse_args(argv)


def test_cli_writes_outputs_with_miou(tmp_path, capsys):
    miou = tmp_path / "student_miou.json"
    miou.write_text(json.dumps({"model": "powersam_s", "miou": {"box": 61.25, "box+1": 70.0, "point": 50.5}}))
    out = tmp_path / "bench"
    args = _parse(["--models", "powersam_s", "--size", "64", "--frame", "48x64", "--boxes", "1", "--repeats", "1",
                   "--warmup", "0", "--out", str(out), "--json", str(tmp_path / "copy.json"), "--no-complexity",
                   "--no-progress", "--miou-json", str(miou)])
    assert run_bench(args) == 0
    assert "powersam_s" in capsys.readouterr().out
    saved = json.loads((out / "bench.json").read_text())
    assert saved["records"][0]["boxes_decoded"] == 1 and saved["miou"]["powersam_s"]["miou"]["box"] == 61.25
    assert json.loads((tmp_path / "copy.json").read_text()) == saved
    assert (out / "latency_vs_miou.png").stat().st_size > 0 and not (out / "latency.png").exists()
    assert "| powersam_s (torch) | this run | 61.25 | 70.00 | – | 50.50 |" in (out / "bench.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--models", "powersam_xxl"], "unknown model 'powersam_xxl'"),
    (["--models", "table2,tabel1"], "unknown model 'tabel1'; known groups: table1, table2; known models: sam_vit_b"),
    # A group expands and validates before anything is built (the runtime check comes after the model names).
    (["--models", "table1,edgesam", "--runtime", "tensorrt"], "unknown runtime 'tensorrt'"),
    (["--models", "powersam_s", "--runtime", "tensorrt"], "unknown runtime 'tensorrt'"),
    (["--models", "edgesam", "--size", "64", "--boxes", "detected"], "has no detector"),
    (["--checkpoint", "powersam_s"], "NAME=PATH"),
    (["--device", "tpu"], "--device"),
    (["--repeats", "0"], "--repeats"),
    (["--probe-size", "4"], "--probe-size"),
    (["--settle-ms", "-1"], "--settle-ms"),
])
def test_cli_reported_failures_exit_1(tmp_path, capsys, argv, message):
    # Later options win, so argv can override the quick defaults.
    args = _parse(["--out", str(tmp_path / "o"), "--no-progress", "--no-complexity", "--repeats", "1",
                   "--warmup", "0", *argv])
    assert run_bench(args) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "bench.json").exists()


def test_cli_miou_json_without_model_name_exits_1(tmp_path, capsys):
    miou = tmp_path / "m.json"
    miou.write_text(json.dumps({"miou": {"box": 1.0}}))
    assert run_bench(_parse(["--miou-json", str(miou), "--out", str(tmp_path / "o")])) == 1
    assert "NAME=" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--frame", "48by64"], ["--boxes", "-2"], ["--boxes", "many"]])
def test_cli_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        _parse(argv)
    assert exc.value.code == 2


def test_benchmark_expands_groups_before_building(monkeypatch):
    from powersam.models.zoo import MODEL_GROUPS

    built = []

    def fake_build(name, settings):
        built.append(name)
        raise RuntimeError("stop here")

    monkeypatch.setattr(bench_pipelines, "build_bench_model", fake_build)
    with pytest.raises(RuntimeError, match="stop here"):
        benchmark(["table1", "sam_vit_b", "powersam_s_decoupled"], ["torch"], BenchSettings(img_size=64))
    assert built == [MODEL_GROUPS["table1"][0]]  # the first model of the expanded list is built first
    with pytest.raises(ValueError, match="unknown model 'table3'"):
        benchmark("table3", ["torch"], BenchSettings(img_size=64))
    assert len(built) == 1


def test_miou_json_of_several_models(tmp_path):
    from powersam.bench.suite import load_miou_results

    combined = tmp_path / "all.json"
    combined.write_text(json.dumps({"models": {"edgesam": {"model": "edgesam", "miou": {"box": 1.0}},
                                               "powersam_s": {"model": "powersam_s", "miou": {"box": 2.0}}},
                                    "failed": {"sam_vit_h": "oom"}}))
    assert list(load_miou_results([str(combined)])) == ["edgesam", "powersam_s"]
    assert load_miou_results([f"powersam_s={combined}"])["powersam_s"]["miou"] == {"box": 2.0}
    with pytest.raises(ValueError, match="no result for 'sam_vit_h'; it has: edgesam, powersam_s"):
        load_miou_results([f"sam_vit_h={combined}"])


def test_every_frame_is_set_against_a_matmul_probe_of_the_same_rounds(tmp_path):
    from powersam.bench.roofline import frame_gmacs

    bench = benchmark(["powersam_s", "powersam_s_decoupled"], ["torch"], _tiny_settings(tmp_path), repeats=2,
                      warmup=0, probe_size=64)
    roof = bench["roofline"]
    assert roof["probe_size"] == 64 and 0 < roof["probe_gflops_min"] <= roof["probe_gflops_median"]
    assert roof["probe_gflops_roofline"] == roof["probe_gflops_max"] >= roof["probe_gflops_median"]
    assert [r["model"] for r in bench["records"]] == ["powersam_s", "powersam_s_decoupled"]  # the probe is no row
    for record in bench["records"]:
        # Each frame's own probe reading is at most the best one: paired lies between the best-probe bound scaled
        # by slowest / best reading and that bound.
        best = record["vs_roofline_best"]
        ratio = roof["probe_gflops_min"] / roof["probe_gflops_max"]
        assert best * ratio * (1 - 1e-9) <= record["vs_roofline"] <= best * (1 + 1e-9)

        parts = record["components"]
        per_frame = sum(v["gmacs_full"] for k, v in parts.items() if k not in ("prompt_encoder", "mask_decoder"))
        per_box = parts["prompt_encoder"]["gmacs_full"] + parts["mask_decoder"]["gmacs_full"]
        assert record["frame_gmacs_full"] == pytest.approx(per_frame + 2 * per_box)  # 2 boxes a frame
        assert record["frame_gmacs_full"] == pytest.approx(frame_gmacs(parts, 2))
        assert record["roofline_ms"] == pytest.approx(2e3 * record["frame_gmacs_full"] / roof["probe_gflops_roofline"])
        assert record["vs_roofline_best"] == pytest.approx(record["latency_ms_median"] / record["roofline_ms"])
    markdown = write_bench_outputs(bench, tmp_path / "out")["md"].read_text()
    assert "### Against the hardware limit" in markdown and "best probe" in markdown
    assert f"| powersam_s | torch | {bench['records'][0]['frame_gmacs_full']:.2f} |" in markdown


def test_no_roofline_without_a_count_or_with_detected_boxes(tmp_path):
    uncounted = benchmark(["powersam_s"], ["torch"], _tiny_settings(tmp_path), repeats=1, warmup=0,
                          complexity=False, probe_size=64)
    assert uncounted["records"][0]["vs_roofline"] is None  # no MACs, no limit: never a made-up multiple
    detected = benchmark(["powersam_s"], ["torch"], _tiny_settings(tmp_path, boxes="detected"), repeats=1,
                         warmup=0, probe_size=64)
    assert detected["records"][0]["roofline_ms"] is None  # the box count varies per frame
    skipped = benchmark(["powersam_s"], ["torch"], _tiny_settings(tmp_path), repeats=1, warmup=0, probe_size=None)
    assert "roofline" not in skipped and "vs_roofline" not in skipped["records"][0]
    assert "hardware limit" not in write_bench_outputs(skipped, tmp_path / "out")["md"].read_text()
