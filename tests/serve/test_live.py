"""A real server: the Python client gives the local model's results, a short soak (200 requests, 8 threads) gets no
5xx, ``powersam predict --server`` works, serving an ONNX model never imports torch, and SIGTERM lets the request in
flight finish."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSES, encode, noise
from powersam.client import Client, ServerError

REPO = Path(__file__).resolve().parents[2]


def test_client_matches_the_local_model(live_server, onnx_model, tmp_path):
    client = Client(live_server.url)
    assert client.class_names == CLASSES and client.model_name == "powersam_s" and client.can_detect
    image = noise(70, 110, seed=5)
    for source in (image, _write(tmp_path / "frame.png", image)):
        got, want = client.predict(source, conf=0.25, max_det=10), onnx_model.predict(image, conf=0.25, max_det=10)
        assert len(got) == len(want) > 0 and got.names() == want.names()
        np.testing.assert_allclose(got.boxes, want.boxes, atol=0.01)
        np.testing.assert_array_equal(got.masks, want.masks)
        assert got.orig_shape == (70, 110) and "preprocess" in got.speed
    assert isinstance(client.predict([image, image]), list)
    client.set_image(image)
    first = client.segment(points=[[50, 30]], labels=[1])
    np.testing.assert_array_equal(first.masks, onnx_model.segment(image, points=[[50, 30]], labels=[1]).masks)
    assert "encoder" not in first.speed  # set_image encoded it once
    refined = client.segment(points=[[50, 30], [10, 60]], labels=[1, 0], mask="previous")
    assert refined.masks.shape == (1, 70, 110)
    assert client.overlay(image)[:8] == b"\x89PNG\r\n\x1a\n"
    client.reset_image()
    with pytest.raises(RuntimeError, match="set_image"):
        client.segment(points=[[1, 1]], labels=[1])
    with pytest.raises(ServerError) as caught:
        client.segment(image, points=[[500, 1]], labels=[1])
    assert caught.value.status == 422 and caught.value.code == "out_of_range" and caught.value.field == "points[0]"
    with pytest.raises(ServerError, match="cannot reach") as unreachable:
        Client("http://127.0.0.1:9", timeout=2).health()
    assert unreachable.value.code == "unreachable"


def _write(path: Path, image: np.ndarray) -> Path:
    path.write_bytes(encode(image))
    return path


def test_soak_no_server_errors(live_server):
    """200 requests at concurrency 8 (detect on mixed sizes and formats, and segment clicks): every one answered 200."""
    images = [encode(noise(h, w, seed=i), fmt) for i, (h, w, fmt) in
              enumerate([(48, 64, "PNG"), (120, 90, "JPEG"), (200, 300, "PNG"), (33, 257, "JPEG")])]
    client = Client(live_server.url)
    image_id = client.set_image(noise(80, 80)).image_id

    def one(i: int) -> int:
        if i % 4 == 3:
            body = json.dumps({"image_id": image_id, "points": [[i % 80, (7 * i) % 80]], "labels": [1]}).encode()
            request = urllib.request.Request(f"{live_server.url}/v1/segment", data=body,
                                             headers={"Content-Type": "application/json"})
        else:
            request = urllib.request.Request(f"{live_server.url}/v1/detect?conf=0.2", data=images[i % len(images)])
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(200)))
    assert codes == [200] * 200, {c: codes.count(c) for c in set(codes)}
    assert time.perf_counter() - start < 120
    assert live_server.app.state.gate.in_flight == 0


def test_predict_command_against_a_server(live_server, onnx_model, tmp_path):
    from powersam.cli import main

    images = tmp_path / "frames"
    images.mkdir()
    for i in range(2):
        _write(images / f"f{i}.png", noise(60, 80, seed=10 + i))
    assert main(["predict", "--server", live_server.url, str(images), "--out", str(tmp_path / "out"),
                 "--conf", "0.3", "--no-progress"]) == 0
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    want = sum(len(onnx_model.predict(noise(60, 80, seed=10 + i), conf=0.3, max_det=100)) for i in range(2))
    assert len(records) == want > 0
    assert main(["predict", "--server", live_server.url, str(images / "f0.png"), "--out", str(tmp_path / "pts"),
                 "--points", "20,30", "--no-progress"]) == 0
    assert len(json.loads((tmp_path / "pts" / "results.json").read_text())) == 1
    assert main(["predict", "--server", live_server.url, "--model", "powersam_s", str(images), "--out",
                 str(tmp_path / "bad")]) == 1


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def test_serving_an_onnx_model_never_imports_torch(serve_export):
    script = textwrap.dedent(f"""
        import io, json, sys
        import numpy as np
        from PIL import Image
        from fastapi.testclient import TestClient
        from powersam.cli import main
        try:
            main(["serve", "--help"])              # the command line's fast path
        except SystemExit:
            pass
        from powersam.cli.serve import build_app
        client = TestClient(build_app([{str(serve_export / 'model.onnx')!r}, {str(serve_export / 'encoder.onnx')!r},
                                       "--threads", "1"]))
        buffer = io.BytesIO()
        Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(buffer, format="PNG")
        detect = client.post("/v1/detect?conf=0", content=buffer.getvalue())
        segment = client.post("/v1/segment", content=buffer.getvalue())
        print(json.dumps({{"detect": detect.status_code, "segment": segment.status_code,
                          "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=_env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"detect": 200, "segment": 200, "torch": []}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {process.communicate()[1]}")
        try:
            with urllib.request.urlopen(f"{url}/v1/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not become healthy")


def test_sigterm_finishes_the_request_in_flight(serve_export):
    """`powersam serve` (the command line) with a model slowed to 1.5 s per call: SIGTERM during a request lets it
    finish with 200, and the process exits 0."""
    port = _free_port()
    script = textwrap.dedent(f"""
        import sys, time
        import powersam.loading
        load = powersam.loading.load
        def slow_load(*args, **kwargs):
            model = load(*args, **kwargs)
            predict = model.detector.predict
            model.detector.predict = lambda *a, **k: (time.sleep(1.5), predict(*a, **k))[1]
            return model
        powersam.loading.load = slow_load
        from powersam.cli import main
        sys.exit(main(["serve", {str(serve_export)!r}, "--port", "{port}", "--threads", "1", "--log-level", "warning"]))
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=_env())
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        result: dict = {}

        def request() -> None:
            req = urllib.request.Request(f"{url}/v1/detect", data=encode(noise(40, 40)))
            with urllib.request.urlopen(req, timeout=30) as response:
                result["status"], result["body"] = response.status, json.loads(response.read())

        thread = threading.Thread(target=request)
        thread.start()
        deadline = time.monotonic() + 10
        while json.loads(urllib.request.urlopen(f"{url}/v1/health").read())["in_flight"] == 0:
            assert time.monotonic() < deadline, "the request never reached the model"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        thread.join(timeout=30)
        assert result.get("status") == 200 and result["body"]["model"] == "powersam_s"
        assert process.wait(timeout=30) == 0
        out = process.stdout.read()
        assert "serving powersam_s (onnx" in out and "stopped on SIGTERM" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
