#!/usr/bin/env python
"""Load benchmark of ``powersam serve``: start a server subprocess, drive it from threads, write a JSON + Markdown
report.

For each concurrency (default 1, 4, 16) it sends ``--requests`` ``POST /v1/detect`` calls with real image files
cycled from ``--images`` (folders; mixed sizes) and reports throughput, p50/p95/p99 latency, error count (429s
apart) and the server's RSS (peak, and after each run: the whole sweep is repeated ``--runs`` times to show whether
memory grows). Then the interactive case on one image: median ``/v1/detect``, median first ``/v1/segment`` (encoder +
decoder) and median further click (decoder only), and their ratio (target: a click ≤ 1/5 of a detect).

    python scripts/bench_serve.py runs/demo/export/ --images ../shared/data/distribution_grid_insulators/images \\
        ../shared/data/cplid_insulators/images --requests 500 --concurrency 1,4,16 --out runs/bench_serve/onnx

Measure on an otherwise idle machine; the numbers mean nothing next to a training job.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def rss_mib(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of ``pid`` in MiB, from /proc (Linux)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss" if key == "VmRSS" else "peak"] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def post(url: str, data: bytes, content_type: str = "application/octet-stream", timeout: float = 120) -> tuple[int, float, bytes]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            return response.status, time.perf_counter() - start, body
    except urllib.error.HTTPError as err:
        return err.code, time.perf_counter() - start, err.read()
    except OSError:
        return 0, time.perf_counter() - start, b""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def load_run(url: str, images: list[bytes], requests: int, concurrency: int) -> dict[str, Any]:
    def one(i: int) -> tuple[int, float]:
        status, seconds, _ = post(f"{url}/v1/detect", images[i % len(images)])
        return status, seconds

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    ok = [s * 1e3 for code, s in results if code == 200]
    return {
        "concurrency": concurrency, "requests": requests, "wall_s": round(wall, 3),
        "throughput_rps": round(len(ok) / wall, 3) if wall else None,
        "p50_ms": round(percentile(ok, 50), 2), "p95_ms": round(percentile(ok, 95), 2),
        "p99_ms": round(percentile(ok, 99), 2), "ok": len(ok),
        "rejected_429": sum(code == 429 for code, _ in results),
        "errors": sum(code not in (200, 429) for code, _ in results),
        "error_codes": sorted({code for code, _ in results if code not in (200, 429)}),
    }


def interactive(url: str, image: bytes, clicks: int) -> dict[str, Any]:
    detect = [post(f"{url}/v1/detect", image)[1] * 1e3 for _ in range(max(3, clicks // 4))]
    boundary = "powersambench"
    first_ms, new_ids = [], []
    for _ in range(3):
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"i\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
        status, seconds, answer = post(f"{url}/v1/segment", body, f"multipart/form-data; boundary={boundary}")
        if status != 200:
            raise RuntimeError(f"/v1/segment answered {status}: {answer[:300]!r}")
        first_ms.append(seconds * 1e3)
        new_ids.append(json.loads(answer))
    image_id, (height, width) = new_ids[-1]["image_id"], new_ids[-1]["image_size"]
    click_ms = []
    for i in range(clicks):
        prompt = {"image_id": image_id, "points": [[(37 * i) % width, (53 * i) % height]], "labels": [1]}
        status, seconds, answer = post(f"{url}/v1/segment", json.dumps(prompt).encode(), "application/json")
        if status != 200:
            raise RuntimeError(f"/v1/segment click answered {status}: {answer[:300]!r}")
        click_ms.append(seconds * 1e3)
    detect_median, click_median = statistics.median(detect), statistics.median(click_ms)
    return {"image_size": [height, width], "detect_median_ms": round(detect_median, 2),
            "first_segment_median_ms": round(statistics.median(first_ms), 2),
            "click_median_ms": round(click_median, 2), "clicks": clicks,
            "click_over_detect": round(click_median / detect_median, 4), "target_ratio": 0.2}


def collect_images(folders: list[str], limit: int) -> tuple[list[bytes], list[str]]:
    files = sorted(p for folder in folders for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images in {folders}")
    step = max(1, len(files) // limit)  # spread over the folders' files: mixed sources and sizes
    chosen = files[::step][:limit]
    return [p.read_bytes() for p in chosen], [str(p) for p in chosen]


def start_server(model: list[str], port: int, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "powersam.cli", "serve", *model, "--port", str(port), "--log-level", "warning",
               *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=1):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("server did not start within 300 s")


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# `powersam serve` load benchmark: {report['model']}", "",
             f"{report['date']}, {report['machine']}, server `{' '.join(report['server_args']) or '(defaults)'}`, "
             f"{len(report['images'])} images ({report['image_sizes']}).", "",
             "| run | concurrency | requests | throughput (req/s) | p50 ms | p95 ms | p99 ms | errors | 429 | RSS after (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        for row in run["rows"]:
            lines.append(f"| {run['run']} | {row['concurrency']} | {row['requests']} | {row['throughput_rps']} | "
                         f"{row['p50_ms']} | {row['p95_ms']} | {row['p99_ms']} | {row['errors']} | "
                         f"{row['rejected_429']} | {row['rss_after_mib']:.1f} |")
    after = ", ".join(f"{r['rss_after_run_mib']:.1f}" for r in report["runs"])
    lines += ["", f"Server RSS: {report['rss_start_mib']:.1f} MiB after start, peak {report['rss_peak_mib']:.1f} MiB, "
              f"after each run {after} MiB."]
    if report.get("interactive"):
        i = report["interactive"]
        lines += ["", f"Interactive ({i['image_size'][1]}×{i['image_size'][0]} image): /v1/detect median "
                  f"{i['detect_median_ms']} ms, first /v1/segment (encode) {i['first_segment_median_ms']} ms, further "
                  f"click median {i['click_median_ms']} ms over {i['clicks']} clicks = {i['click_over_detect']:.3f} of "
                  f"a detect (target ≤ 0.2)."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="+", help="what `powersam serve` takes: .onnx / export folder / checkpoint")
    parser.add_argument("--images", nargs="+", required=True, help="folders of image files (mixed sizes)")
    parser.add_argument("--max-images", type=int, default=40)
    parser.add_argument("--requests", type=int, default=500, help="requests per concurrency level (default 500)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--runs", type=int, default=2, help="repeat the sweep to check RSS growth (default 2)")
    parser.add_argument("--clicks", type=int, default=50, help="interactive clicks to time (0: skip)")
    parser.add_argument("--server-args", default="--max-queue 32",
                        help="extra `powersam serve` arguments (default: --max-queue 32)")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_serve.json and bench_serve.md")
    args = parser.parse_args(argv)

    images, names = collect_images(args.images, args.max_images)
    import io

    from PIL import Image

    sizes = sorted({Image.open(io.BytesIO(b)).size for b in images})
    port = args.port
    if not port:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    extra = args.server_args.split()
    server = start_server(args.model, port, extra)
    url = f"http://127.0.0.1:{port}"
    report: dict[str, Any] = {
        "model": " ".join(args.model), "server_args": extra, "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "images": names, "image_sizes": f"{len(sizes)} sizes, {sizes[0][0]}×{sizes[0][1]} to {sizes[-1][0]}×{sizes[-1][1]}",
        "rss_start_mib": rss_mib(server.pid).get("rss", float("nan")), "runs": [],
    }
    try:
        post(f"{url}/v1/detect", images[0])  # warm-up
        for run in range(1, args.runs + 1):
            rows = []
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                row = load_run(url, images, args.requests, concurrency)
                row["rss_after_mib"] = rss_mib(server.pid).get("rss", float("nan"))
                rows.append(row)
                print(json.dumps({"run": run, **row}), flush=True)
            report["runs"].append({"run": run, "rows": rows, "rss_after_run_mib": rss_mib(server.pid).get("rss")})
        if args.clicks:
            largest = max(range(len(images)), key=lambda i: len(images[i]))
            report["interactive"] = interactive(url, images[largest], args.clicks)
            print(json.dumps(report["interactive"]), flush=True)
        report["rss_peak_mib"] = rss_mib(server.pid).get("peak", float("nan"))
    finally:
        server.terminate()
        report["server_exit_code"] = server.wait(timeout=60)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_serve.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "bench_serve.md").write_text(markdown(report))
    print(f"wrote {args.out / 'bench_serve.json'} and {args.out / 'bench_serve.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
