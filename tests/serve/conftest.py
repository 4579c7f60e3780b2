"""Fixtures of the serve tests: one tiny random PowerSAM-S (64 px, three classes, a head biased to fire), its ONNX
export, apps around either, and a live uvicorn server in a thread for the client, soak and browser tests."""
from __future__ import annotations

import io
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx")

import powersam  # noqa: E402
from powersam.models.zoo import build_model  # noqa: E402
from powersam.serve.app import create_app  # noqa: E402
from powersam.serve.limits import ServeConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deploy"))
from test_onnx_export import calibrate_batch_norm, make_head_fire  # noqa: E402 - export test helpers

CLASSES = ["JYZ", "BYQ", "DLQ"]
SIZE = 64


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def serve_module() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("powersam_s", img_size=SIZE, class_names=CLASSES, conf=0.3, max_det=20)
    calibrate_batch_norm(model, lambda m: m.forward_integrated(torch.randn(2, 3, SIZE, SIZE)))
    make_head_fire(model.box_generator.bbox_head, weight_scale=0.3)
    return model.eval()


@pytest.fixture(scope="session")
def serve_export(serve_module, tmp_path_factory) -> Path:
    """Folder with model.onnx + encoder.onnx + decoder.onnx."""
    folder = tmp_path_factory.mktemp("serve_export")
    powersam.load(serve_module, device="cpu").export("onnx", folder, conf=0.3, max_det=20)
    return folder


@pytest.fixture(scope="session")
def torch_model(serve_module) -> Any:
    return powersam.load(serve_module, device="cpu")


@pytest.fixture(scope="session")
def onnx_model(serve_export) -> Any:
    return powersam.load(serve_export, threads=1)


@pytest.fixture(scope="session", params=["onnx", "torch"])
def any_model(request, onnx_model, torch_model) -> Any:
    return onnx_model if request.param == "onnx" else torch_model


def make_client(model: Any, **config: Any):
    from fastapi.testclient import TestClient

    return TestClient(create_app(model, ServeConfig(**config)), raise_server_exceptions=False)


class SlowModel:
    """A model whose predict and set_image first sleep ``delay`` seconds (queue, timeout and shutdown tests)."""

    def __init__(self, model: Any, delay: float) -> None:
        self._model, self.delay = model, delay
        self.predictor = _SlowPredictor(model.predictor, delay)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.delay)
        return self._model.predict(*args, **kwargs)


class _SlowPredictor:
    def __init__(self, predictor: Any, delay: float) -> None:
        self._predictor, self.delay = predictor, delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)

    def set_image(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.delay)
        return self._predictor.set_image(*args, **kwargs)


class LiveServer:
    """``app`` under uvicorn in a daemon thread on a free local port; ``url`` once started."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture(scope="session")
def live_server(onnx_model) -> Iterator[LiveServer]:
    """The ONNX model served live (max_queue 16) for the whole session."""
    with LiveServer(create_app(onnx_model, ServeConfig(max_queue=16))) as server:
        yield server
