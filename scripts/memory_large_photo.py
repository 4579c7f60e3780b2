"""Peak memory of detect-and-segment on one very large photo with many detections (issue 13, item 1).

Makes a W×H JPEG (a synthetic scene of smooth shapes, drawn small and scaled up, default 12000×12000), a random
``powersam_s`` at a small input size whose box-prompt generator is made to fire everywhere (BatchNorm calibrated on
noise, objectness biased up: the helpers of ``tests/deploy/test_onnx_export.py``), saves it as a checkpoint and an
integrated ONNX graph, then runs each path in its own process and records that process's peak RSS
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a fresh wrapper per run):

* ``api-torch``: ``build_model(checkpoint=...).predict(jpg, conf, iou, max_det)`` + ``to_coco``
* ``cli-torch``: ``powersam predict jpg --checkpoint ... --save-masks`` (overlay PNG, results.json, instance map)
* ``api-onnx``: ``powersam.runtime.load(onnx).predict(...)`` + ``to_coco``
* ``cli-onnx``: ``powersam predict jpg --model model.onnx --save-masks``

    OMP_NUM_THREADS=1 python scripts/memory_large_photo.py --out docs/bench/memory

writes ``memory_large_photo.json`` and ``.md`` there (the large files go to ``--work``, a temporary folder by
default). ``--runs`` picks paths, ``--max-det`` / ``--conf`` / ``--iou`` the detection settings (default 100 / 0.001 /
0.95, so that 100 boxes survive NMS). Not part of the test suite: it takes minutes and several GB of disk.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = ("api-torch", "cli-torch", "api-onnx", "cli-onnx")
CLASSES = ["insulator", "bushing", "breaker"]


PREPARE = """
import sys, numpy as np, torch
from PIL import Image, ImageDraw
from powersam.checkpoint import save_checkpoint
from powersam.deploy.onnx_export import export_onnx
from powersam.models.zoo import build_model

work, width, height, img_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
# A synthetic scene (sky, ground, poles, insulator-like discs), drawn at 1/10 and scaled up: smooth, JPEG-friendly.
rng = np.random.default_rng(0)
small = Image.new("RGB", (max(1, width // 10), max(1, height // 10)), (150, 180, 215))
draw = ImageDraw.Draw(small)
sw, sh = small.size
draw.rectangle([0, int(sh * 0.7), sw, sh], fill=(95, 110, 80))
for _ in range(60):
    x, y = int(rng.integers(0, sw)), int(rng.integers(0, sh))
    r = int(rng.integers(5, max(6, sw // 12)))
    color = tuple(int(v) for v in rng.integers(30, 230, 3))
    if rng.random() < 0.5:
        draw.ellipse([x - r, y - r // 3, x + r, y + r // 3], fill=color)
    else:
        draw.rectangle([x - r // 6, y - r, x + r // 6, y + r], fill=color)
small.resize((width, height), Image.BILINEAR).save(f"{work}/photo.jpg", quality=90)

torch.manual_seed(0)
model = build_model("powersam_s", img_size=img_size, class_names=%(classes)r)
for m in model.modules():  # BatchNorm statistics from one noise batch, so scores vary
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        m.reset_running_stats(); m.momentum = None
model.train()
with torch.no_grad():
    model.forward_integrated(torch.randn(2, 3, img_size, img_size))
model.eval()
head = model.box_generator.bbox_head
with torch.no_grad():  # objectness biased up: the detector fires on every anchor
    for conv_obj, conv_cls in zip(head.multi_level_conv_obj, head.multi_level_conv_cls):
        torch.nn.init.constant_(conv_obj.bias, 1.0)
        torch.nn.init.constant_(conv_cls.bias, 0.0)
save_checkpoint(f"{work}/model.pt", model.state_dict(), "powersam_s", model_config={"img_size": img_size},
                class_names=list(model.class_names))
export_onnx(model, f"{work}/model.onnx", score_thr=0.5, nms_iou=0.65, max_det=100)
print("prepared")
""".replace("%(classes)r", repr(CLASSES))

API = """
import json, sys, time
start = time.perf_counter()
kind, work, conf, iou, max_det = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
if kind == "torch":
    from powersam.models.zoo import build_model
    model = build_model(checkpoint=f"{work}/model.pt").eval()
else:
    import powersam.runtime as rt
    model = rt.load(f"{work}/model.onnx", threads=1)
result = model.predict(f"{work}/photo.jpg", conf=conf, iou=iou, max_det=max_det)
records = result.to_coco(1)
print(json.dumps({"detections": len(result), "records": len(records), "seconds": time.perf_counter() - start,
                  "speed_ms": result.speed}))
"""

WRAP = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": done.returncode, "stdout": done.stdout[-4000:], "stderr": done.stderr[-4000:],
                  "wall_s": time.perf_counter() - start,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def _measure(cmd: list[str], env: dict, timeout: float) -> dict:
    done = subprocess.run([sys.executable, "-c", WRAP, *cmd], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"wrapper failed: {done.stderr[-2000:]}")
    out = json.loads(done.stdout)
    out["peak_rss_gib"] = round(out["peak_rss_kib"] / 2**20, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "memory")
    parser.add_argument("--work", type=Path, default=None, help="folder for the JPEG, checkpoint and ONNX graph")
    parser.add_argument("--size", type=int, nargs=2, default=(12000, 12000), metavar=("W", "H"))
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--conf", type=float, default=0.001)
    parser.add_argument("--iou", type=float, default=0.95)
    parser.add_argument("--max-det", type=int, default=100)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--label", default="after", help="name of this measurement in the report (e.g. before)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--code", type=Path, default=REPO,
                        help="checkout whose powersam is measured (e.g. an export of the previous commit)")
    args = parser.parse_args(argv)

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(args.code), os.environ.get("PYTHONPATH", "")) if p)}
    work = args.work or Path(tempfile.mkdtemp(prefix="powersam_mem_"))
    work.mkdir(parents=True, exist_ok=True)
    width, height = args.size
    if not (work / "photo.jpg").is_file() or not (work / "model.onnx").is_file():
        done = subprocess.run(
            [sys.executable, "-c", PREPARE, str(work), str(width), str(height), str(args.img_size)],
            env=env, capture_output=True, text=True, timeout=args.timeout)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
    settings = ["--conf", str(args.conf), "--iou", str(args.iou), "--max-det", str(args.max_det)]
    commands = {
        "api-torch": [sys.executable, "-c", API, "torch", str(work), str(args.conf), str(args.iou), str(args.max_det)],
        "api-onnx": [sys.executable, "-c", API, "onnx", str(work), str(args.conf), str(args.iou), str(args.max_det)],
        "cli-torch": [sys.executable, "-m", "powersam.cli", "predict", str(work / "photo.jpg"), "--checkpoint",
                      str(work / "model.pt"), "--device", "cpu", "--out", str(work / "out_torch"), "--save-masks",
                      "--no-progress", *settings],
        "cli-onnx": [sys.executable, "-m", "powersam.cli", "predict", str(work / "photo.jpg"), "--model",
                     str(work / "model.onnx"), "--out", str(work / "out_onnx"), "--save-masks", "--no-progress",
                     *settings],
    }
    results = {}
    for run in args.runs:
        print(f"{run} ...", flush=True)
        measured = _measure(commands[run], env, args.timeout)
        if run.startswith("api") and measured["rc"] == 0:
            measured.update(json.loads(measured["stdout"].strip().splitlines()[-1]))
        elif run.startswith("cli") and measured["rc"] == 0:
            folder = work / ("out_torch" if run == "cli-torch" else "out_onnx")
            summary = json.loads((folder / "summary.json").read_text())
            measured["detections"] = summary["instances"]
        measured["command"] = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(commands[run])
                                       if "\n" not in c) + (" <api script>" if run.startswith("api") else "")
        print(f"  rc={measured['rc']} detections={measured.get('detections')} peak RSS {measured['peak_rss_gib']} GiB "
              f"in {measured['wall_s']:.1f} s", flush=True)
        if measured["rc"] != 0:
            print(measured["stderr"][-2000:], file=sys.stderr)
        results[run] = measured

    report = {
        "label": args.label,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "photo": {"width": width, "height": height, "jpeg_bytes": (work / "photo.jpg").stat().st_size},
        "code": str(args.code),
        "model": {"name": "powersam_s (random weights, detector made to fire)", "img_size": args.img_size},
        "settings": {"conf": args.conf, "iou": args.iou, "max_det": args.max_det},
        "omp_num_threads": env["OMP_NUM_THREADS"],
        "command": "python scripts/memory_large_photo.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "runs": {k: {key: v[key] for key in ("rc", "detections", "peak_rss_gib", "peak_rss_kib", "wall_s", "command")
                     if key in v} for k, v in results.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"memory_large_photo_{args.label}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Peak memory, {width}×{height} JPEG, {args.max_det} detections max ({args.label})", "",
             f"`{report['command']}` — {report['date']}, {report['machine']}, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}; "
             f"powersam_s (random, detector made to fire) at img_size {args.img_size}; conf {args.conf}, "
             f"iou {args.iou}, max_det {args.max_det}.", "",
             "| path | detections | peak RSS (GiB) | wall (s) |", "|---|---|---|---|"]
    for run, v in results.items():
        lines.append(f"| {run} | {v.get('detections', 'failed (rc %s)' % v['rc'])} | {v['peak_rss_gib']} | "
                     f"{v['wall_s']:.1f} |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / stem}.json and .md (work files in {work})")
    return 0 if all(v["rc"] == 0 for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
