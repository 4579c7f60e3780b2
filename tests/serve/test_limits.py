"""Bounds and failure handling: the embedding cache evicts, the queue answers 429, slow requests 503, an exception
in one request is a JSON 500 and the next request works, the API key, CORS off by default, the metrics text."""
from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np
import pytest

from conftest import SlowModel, encode, make_client, noise
from powersam.serve.app import create_app
from powersam.serve.cache import EmbeddingCache
from powersam.serve.limits import ServeConfig
from test_api import assert_error


# ------------------------------------------------------------------------------------------------ cache
def state(nbytes: int) -> dict:
    return {"_embedding": np.zeros(nbytes, np.uint8)}


def test_cache_evicts_least_recently_used_by_count_and_bytes():
    cache = EmbeddingCache(max_entries=3, max_bytes=1000)
    a, b, c = (cache.put(state(100), (10, 10)) for _ in range(3))
    assert cache.get(a) is not None  # a is now the most recently used
    d = cache.put(state(100), (10, 10))
    assert b not in cache and {a, c, d} <= set(cache._entries) and cache.evictions == 1
    cache.put(state(700), (10, 10))  # 100 + 100 + 100 + 700 > 1000: the oldest (c) goes
    assert c not in cache and len(cache) == 3 and cache.bytes == 900
    cache.set_low_res(a, np.zeros(200, np.uint8))  # counted too: 1100 > 1000 evicts d
    assert d not in cache and cache.bytes == 1000 and a in cache
    with pytest.raises(ValueError, match="more than the whole cache"):
        cache.put(state(1001), (10, 10))
    assert cache.pop(a) and not cache.pop(a) and cache.bytes == 700
    assert cache.get("nope") is None and cache.stats()["misses"] == 1


def test_cache_bound_through_the_api(onnx_model):
    client = make_client(onnx_model, cache_entries=2)
    ids = [client.post("/v1/segment", content=encode(noise(40, 50, seed=i))).json()["image_id"] for i in range(3)]
    click = {"points": [[10, 10]], "labels": [1]}
    assert_error(client.post("/v1/segment", json={"image_id": ids[0], **click}), 404, "unknown_image_id", "image_id")
    for image_id in ids[1:]:
        assert client.post("/v1/segment", json={"image_id": image_id, **click}).status_code == 200
    metrics = client.get("/metrics").text
    assert "powersam_cache_entries 2" in metrics and "powersam_cache_evictions_total 1" in metrics
    tiny = make_client(onnx_model, cache_bytes=1000)  # one embedding alone is larger
    assert_error(tiny.post("/v1/segment", content=encode(noise(40, 50))), 507, "cache_too_small", None, "--cache-mb")


# ------------------------------------------------------------------------------------------------ queue
async def _burst(app, n: int, path: str = "/v1/detect") -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
        image = encode(noise(40, 50))
        return await asyncio.gather(*(client.post(path, content=image) for _ in range(n)))


def test_queue_limit_answers_429_instead_of_piling_up(onnx_model):
    app = create_app(SlowModel(onnx_model, delay=0.4), ServeConfig(max_queue=2))
    responses = asyncio.run(_burst(app, 6))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 429, 429, 429, 429]
    rejected = [r for r in responses if r.status_code == 429]
    assert all(r.json()["error"]["code"] == "queue_full" and r.headers["retry-after"] == "1" for r in rejected)
    assert "limit 2" in rejected[0].json()["error"]["message"]
    assert app.state.gate.in_flight == 0
    assert [r.status_code for r in asyncio.run(_burst(app, 2))] == [200, 200]  # the slots were given back
    assert app.state.gate.rejected == 4


def test_timeout_answers_503_and_keeps_the_slot_until_the_model_is_done(onnx_model):
    import time

    app = create_app(SlowModel(onnx_model, delay=0.8), ServeConfig(max_queue=1, timeout_s=0.2))
    responses = asyncio.run(_burst(app, 1))
    assert_error(responses[0], 503, "timeout", None, "0.2 s")
    assert app.state.gate.in_flight == 1  # the model call is still running: the bound still counts it
    deadline = time.monotonic() + 5
    while app.state.gate.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.state.gate.in_flight == 0


class Exploding:
    """A model whose predict fails the way a bug would."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def predict(self, *args, **kwargs):
        raise RuntimeError("boom")


def test_an_unexpected_error_is_a_json_500_and_the_server_goes_on(onnx_model, caplog):
    client = make_client(Exploding(onnx_model))
    response = client.post("/v1/detect", content=encode(noise(30, 30)))
    error = assert_error(response, 500, "internal_error", None, "RuntimeError")
    assert "boom" not in error["message"]  # details go to the log, not to the client
    assert client.get("/v1/health").json()["status"] == "ok"
    assert client.post("/v1/segment", content=encode(noise(30, 30))).status_code == 200
    assert 'powersam_errors_total{endpoint="/v1/detect",code="internal_error"} 1' in client.get("/metrics").text


# ------------------------------------------------------------------------------------------------ access
def test_api_key(onnx_model):
    client = make_client(onnx_model, api_key="s3cret")
    assert_error(client.get("/v1/model"), 401, "unauthorized", None, "X-API-Key")
    assert_error(client.get("/v1/model", headers={"X-API-Key": "wrong"}), 401, "unauthorized")
    assert_error(client.post("/v1/detect", content=encode(noise(30, 30))), 401, "unauthorized")
    assert_error(client.get("/metrics"), 401, "unauthorized")
    assert client.get("/v1/model", headers={"X-API-Key": "s3cret"}).json()["limits"]["api_key_required"] is True
    assert client.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/v1/health").status_code == 200 and client.get("/").status_code == 200  # open
    with pytest.raises(ValueError, match="api_key"):
        ServeConfig(api_key=" ")


def test_cors_is_off_by_default(onnx_model):
    origin = {"Origin": "http://inspection.example"}
    plain = make_client(onnx_model).get("/v1/health", headers=origin)
    assert "access-control-allow-origin" not in plain.headers
    allowed = make_client(onnx_model, cors_origins=["http://inspection.example"]).get("/v1/health", headers=origin)
    assert allowed.headers["access-control-allow-origin"] == "http://inspection.example"


@pytest.mark.parametrize("field, value", [("max_queue", 0), ("max_upload_bytes", -1), ("timeout_s", 0),
                                          ("cache_entries", 1.5)])
def test_config_is_checked(field, value):
    with pytest.raises(ValueError, match=field):
        ServeConfig(**{field: value})


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_exposition(onnx_model):
    client = make_client(onnx_model)
    for _ in range(3):
        client.post("/v1/detect", content=encode(noise(30, 40)))
    client.post("/v1/detect", content=b"")
    client.get("/no/such/path")
    text = client.get("/metrics").text
    assert 'powersam_requests_total{endpoint="/v1/detect",method="POST",status="200"} 3' in text
    assert 'powersam_requests_total{endpoint="/v1/detect",method="POST",status="400"} 1' in text
    assert 'powersam_requests_total{endpoint="other",method="GET",status="404"} 1' in text  # no label per path
    assert 'powersam_errors_total{endpoint="/v1/detect",code="empty_image"} 1' in text
    buckets = [int(v) for v in re.findall(r'powersam_request_duration_seconds_bucket\{endpoint="/v1/detect",le="[^"]+"\} (\d+)',
                                          text)]
    assert buckets == sorted(buckets) and buckets[-1] == 4  # cumulative, +Inf = all four detect requests
    assert 'powersam_model_seconds_count{endpoint="/v1/detect"} 3' in text
    for line in text.splitlines():  # every sample line is "name{labels} value"
        assert line.startswith("#") or re.fullmatch(r'[a-z_]+(\{[^}]*\})? -?[0-9.e+-]+', line), line
