"""Where the time of a segmentation frame goes: torch.profiler and ONNX Runtime's per-node profiles, as Markdown.

For each input size S given (default 1024 512) on a 1080×1920 synthetic frame with 5 box prompts, one thread:

* ``powersam.SamPredictor`` (re-parameterised PowerSAM-S): ``set_image`` + ``predict_batch``, top ops by self CPU time;
* the integrated PyTorch model (detect-and-segment, 5 given boxes), top ops;
* the exported interactive pair on ONNX Runtime with ``enable_profiling``: time per op type, top nodes.

    OMP_NUM_THREADS=1 python scripts/profile_speed.py [S ...] > profile.md

Used for docs/speed_profile.md; the numbers are one frame after a warm-up, so read them as shares, not latencies.
"""
from __future__ import annotations

import copy
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from powersam.bench.frames import GivenBoxes
from powersam.bench.pipelines import synthetic_boxes, synthetic_image
from powersam.inference.detect import detect_and_segment
from powersam.models.zoo import build_model
from powersam.predictor import SamPredictor

FRAME = (1080, 1920)
BOXES = 5
TOP = 12


def torch_table(title: str, run) -> str:
    run()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=TOP, max_name_column_width=40)
    return f"### {title}\n\n```\n{table}\n```\n"


def ort_table(title: str, path: Path, feeds_list) -> str:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for feeds in feeds_list:  # the first is the warm-up; only the last is kept
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    last_start = runs[-1]["ts"]
    by_type, by_node = defaultdict(float), defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last_start:
            by_type[e["args"]["op_name"]] += e["dur"] / 1e3
            by_node[f"{e['args']['op_name']} {e['name'][:-12]}"] += e["dur"] / 1e3
    total = sum(by_type.values())
    lines = [f"### {title}\n", f"model_run {runs[-1]['dur'] / 1e3:.1f} ms, kernels {total:.1f} ms\n",
             "| op type | ms | share |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {v / total:.0%} |" for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])[:TOP]]
    lines += ["", "| node | ms |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in sorted(by_node.items(), key=lambda kv: -kv[1])[:TOP]]
    return "\n".join(lines) + "\n"


def main(sizes: list[int]) -> None:
    torch.set_num_threads(1)
    image = synthetic_image(FRAME)
    boxes = synthetic_boxes(BOXES, FRAME).numpy()
    for size in sizes:
        torch.manual_seed(0)
        model = build_model("powersam_s", img_size=size).eval()
        model.image_encoder.reparameterize()
        predictor = SamPredictor(model)

        def interactive():
            predictor.set_image(image)
            predictor.predict_batch(boxes=boxes, multimask_output=False)

        print(f"## S = {size}\n")
        print(torch_table(f"powersam.SamPredictor, S={size}, {BOXES} boxes", interactive))
        backend = GivenBoxes(model, BOXES, lambda n, s: synthetic_boxes(n, s).numpy())
        print(torch_table(f"integrated PowerSAM-S (PyTorch), S={size}, {BOXES} boxes",
                          lambda: detect_and_segment(backend, image)))
        from powersam.deploy.onnx_export import export_onnx
        from powersam.runtime.preprocess import preprocess_image

        with tempfile.TemporaryDirectory() as tmp:
            encoder, decoder = export_onnx(copy.deepcopy(model), Path(tmp) / "pair", interactive=True,
                                           multimask_output=False)
            x, input_size = preprocess_image(image, size, model.pixel_mean.flatten().tolist(),
                                             model.pixel_std.flatten().tolist())
            print(ort_table(f"ONNX Runtime encoder, S={size}", encoder, [{"image": x}] * 2))
            scale = np.array([input_size[1] / FRAME[1], input_size[0] / FRAME[0]] * 2)
            coords = (boxes * scale).reshape(-1, 2, 2).astype(np.float32)
            feeds = {"image_embeddings": np.random.default_rng(0).standard_normal(
                         (1, 256, size // 16, size // 16)).astype(np.float32),
                     "point_coords": coords, "point_labels": np.tile(np.float32([2, 3]), (BOXES, 1)),
                     "mask_input": np.zeros((1, 1, size // 4, size // 4), np.float32),
                     "has_mask_input": np.zeros(1, np.float32)}
            print(ort_table(f"ONNX Runtime decoder, S={size}, {BOXES} boxes", decoder, [feeds] * 2))


if __name__ == "__main__":
    main([int(v) for v in sys.argv[1:]] or [1024, 512])
