"""The HTTP API through the ASGI test client: every endpoint on both backends (the served results are the model's
own), and every refusal answered with a 4xx JSON error that names the problem."""
from __future__ import annotations

import json

import numpy as np
import pytest

from powersam.serve.codec import results_json
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import CLASSES, SIZE, encode, make_client, noise


def decode_masks(body: dict) -> np.ndarray:
    height, width = body["image_size"]
    if not body["masks"]:
        return np.zeros((0, height, width), bool)
    return np.stack([mask_utils.decode({"size": m["size"], "counts": m["counts"].encode()}) for m in body["masks"]]) > 0


def assert_error(response, status: int, code: str, field: str | None = None, says: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status and error["code"] == code, error
    if field is not None:
        assert error.get("field") == field, error
        assert field in error["message"], error
    if says is not None:
        assert says in error["message"], error
    return error


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return noise(90, 140, seed=3)


# ------------------------------------------------------------------------------------------------ description
def test_health_and_model(any_model):
    client = make_client(any_model)
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["in_flight"] == 0 and health["model"] == "powersam_s"
    info = client.get("/v1/model").json()
    assert info["classes"] == CLASSES and info["input_size"] == SIZE and info["runtime"] == any_model.backend
    assert info["thresholds"] == {"conf": pytest.approx(0.3), "iou": pytest.approx(0.65), "max_det": 20}
    assert info["detect"] and info["segment"] and info["limits"]["max_queue"] == 8
    assert not info["limits"]["api_key_required"]


def test_page_and_static_files_work_offline():
    from powersam.serve.app import STATIC_DIR

    client = make_client_for_page()
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for name in ("app.js", "rle.js", "style.css"):
        assert f"/static/{name}" in page.text
        assert client.get(f"/static/{name}").status_code == 200
    for path in STATIC_DIR.iterdir():  # no CDN, no remote fonts: the page must work without internet
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path.name


def make_client_for_page():
    from fastapi.testclient import TestClient

    from powersam.serve.app import create_app

    class Stub:  # the page needs no model call
        model_name, backend, img_size, class_names, can_detect, can_segment = "stub", "onnx", 64, [], False, True

        def info(self):
            return {}

    return TestClient(create_app(Stub()))


# ------------------------------------------------------------------------------------------------ detect
def test_detect_returns_the_models_results(any_model, image):
    client = make_client(any_model)
    want = any_model.predict(image)
    assert len(want) > 0
    raw = client.post("/v1/detect", content=encode(image), headers={"Content-Type": "image/png"})
    form = client.post("/v1/detect", files={"image": ("frame.png", encode(image), "image/png")})
    for response in (raw, form):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "powersam_s" and body["image_size"] == [90, 140] and body["count"] == len(want)
        assert body["labels"] == want.labels.tolist() and body["names"] == want.names()
        np.testing.assert_allclose(body["boxes"], want.boxes, atol=0.01)
        np.testing.assert_allclose(body["scores"], want.scores, atol=1e-4)
        np.testing.assert_array_equal(decode_masks(body), want.masks)
        assert body["class_names"] == CLASSES and body["thresholds"]["max_det"] == 20
        assert list(body["speed"])[0] == "preprocess" and "postprocess" in body["speed"]


def test_detect_query_parameters(onnx_model, image):
    client = make_client(onnx_model)
    loose = client.post("/v1/detect?conf=0&max_det=15", content=encode(image)).json()
    assert loose["count"] == 15 and loose["thresholds"] == {"conf": 0.0, "iou": pytest.approx(0.65), "max_det": 15}
    strict = client.post("/v1/detect?conf=0.45&iou=0.3", content=encode(image)).json()
    assert all(s >= 0.45 for s in strict["scores"]) and strict["count"] < loose["count"]
    only = client.post("/v1/detect?conf=0&classes=DLQ,JYZ", content=encode(image)).json()
    assert only["count"] > 0 and set(only["names"]) <= {"DLQ", "JYZ"}
    want = onnx_model.predict(image, conf=0.0, max_det=15)
    assert loose["labels"] == want.labels.tolist()
    zoomed = client.post("/v1/detect?conf=0&max_det=15&zoom=3", content=encode(image)).json()
    want = onnx_model.predict(image, conf=0.0, max_det=15, zoom=3.0)
    assert zoomed["labels"] == want.labels.tolist() and "zoom" in zoomed["speed"]
    assert zoomed["masks"] == results_json(want)["masks"]


def test_detect_png_overlay(onnx_model, image):
    response = make_client(onnx_model).post("/v1/detect?format=png&conf=0.2", content=encode(image, "JPEG"))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    import io

    overlay = np.asarray(Image.open(io.BytesIO(response.content)))
    assert overlay.shape == (90, 140, 3)


@pytest.mark.parametrize("query, field, says", [
    ("conf=2", "conf", "[0, 1]"), ("conf=abc", "conf", "number"), ("iou=-0.1", "iou", "[0, 1]"),
    ("conf=nan", "conf", "[0, 1]"), ("max_det=-1", "max_det", "integer"), ("max_det=1.5", "max_det", "integer"),
    ("max_det=100000", "max_det", "[0, 1000]"), ("classes=XYZ", "classes", "XYZ"), ("format=gif", "format", "gif"),
    ("threshold=0.5", "threshold", "unknown query parameter"), ("zoom=0.5", "zoom", "[1, 16]"),
])
def test_detect_rejects_bad_parameters(onnx_model, image, query, field, says):
    response = make_client(onnx_model).post(f"/v1/detect?{query}", content=encode(image))
    assert_error(response, 422, "invalid_parameter", field, says)


def test_detect_rejects_bad_images(onnx_model, image):
    client = make_client(onnx_model, max_image_side=200, max_upload_bytes=200_000)
    png = encode(image)
    assert_error(client.post("/v1/detect", content=b""), 400, "empty_image", "image", "0 bytes")
    assert_error(client.post("/v1/detect", content=b"GIF89a but not really"), 415, "not_an_image", "image")
    assert_error(client.post("/v1/detect", content=b"%PDF-1.4\n" * 50), 415, "not_an_image", "image")
    assert_error(client.post("/v1/detect", content=png[: len(png) // 2]), 400, "corrupt_image", "image", "truncated")
    assert_error(client.post("/v1/detect", content=encode(noise(20, 260))), 413, "image_too_large", "image", "260×20")
    assert_error(client.post("/v1/detect", content=b"\0" * 200_001), 413, "body_too_large", None, "200000 bytes")
    assert_error(client.post("/v1/detect", json={"image": "frame.png"}), 415, "unsupported_media_type")
    assert_error(client.post("/v1/detect", files={"photo": ("a.png", png, "image/png")}), 422, "invalid_parameter",
                 "photo", "unknown form field")
    assert_error(client.post("/v1/detect", data={"note": "x"}, files={"image": ("a.png", png, "image/png")}), 422,
                 "invalid_parameter", "note")
    # any other content type is the raw image (curl --data-binary sends application/x-www-form-urlencoded)
    assert_error(client.post("/v1/detect", data={"image": "x"}), 415, "not_an_image", "image")
    assert client.post("/v1/detect", content=png, headers={
        "Content-Type": "application/x-www-form-urlencoded"}).status_code == 200
    assert_error(client.post("/v1/detect", content=b"--x\r\nbroken", headers={
        "Content-Type": "multipart/form-data; boundary=x"}), 422, "missing_image")
    # grayscale and RGBA images are fine; a 1×1 image is below detection's 16-pixel minimum: refused, named
    for odd in (image[..., 0], np.dstack([image, np.full((90, 140), 255, np.uint8)])):
        assert client.post("/v1/detect", content=encode(odd)).status_code == 200
    assert_error(client.post("/v1/detect", content=encode(noise(1, 1))), 422, "image_too_small", "image", "1×1")


def test_decompression_bomb_is_refused_before_decoding(onnx_model):
    import zlib

    png = encode(np.zeros((1, 1, 3), np.uint8))
    # a 1×1 PNG whose header (valid CRC) claims 30000×30000: refused from the header, the pixels are never decoded
    header = b"IHDR" + (30000).to_bytes(4, "big") * 2 + png[24:29]
    bomb = png[:12] + header + zlib.crc32(header).to_bytes(4, "big") + png[33:]
    assert_error(make_client(onnx_model).post("/v1/detect", content=bomb), 413, "image_too_large", "image", "pixels")


# ------------------------------------------------------------------------------------------------ segment
def test_segment_caches_the_embedding(any_model, image):
    client = make_client(any_model)
    first = client.post("/v1/segment", files={"image": ("f.png", encode(image), "image/png")},
                        data={"prompts": json.dumps({"points": [[70, 45]], "labels": [1]})})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["cached"] is False and "encoder" in body["speed"] and body["count"] == 1
    image_id = body["image_id"]
    want = any_model.segment(image, points=[[70, 45], [20, 30]], labels=[1, 0])
    second = client.post("/v1/segment", json={"image_id": image_id, "points": [[70, 45], [20, 30]], "labels": [1, 0]})
    body = second.json()
    assert body["cached"] is True and "encoder" not in body["speed"] and "decoder" in body["speed"]
    np.testing.assert_array_equal(decode_masks(body), want.masks)
    np.testing.assert_allclose(body["scores"], want.scores, atol=1e-4)
    assert body["names"] == ["object"] and body["image_size"] == [90, 140]
    boxes = client.post("/v1/segment", json={"image_id": image_id, "boxes": [[10, 10, 60, 50], [70, 20, 130, 80]],
                                             "return_low_res": True}).json()
    want = any_model.segment(image, boxes=[[10, 10, 60, 50], [70, 20, 130, 80]])
    assert boxes["count"] == 2 and boxes["low_res"]["shape"] == [2, 1, SIZE // 4, SIZE // 4]
    np.testing.assert_array_equal(decode_masks(boxes), want.masks)
    # refining with the previous low-res mask equals sending that mask back explicitly
    previous = client.post("/v1/segment", json={"image_id": image_id, "boxes": [[10, 10, 60, 50], [70, 20, 130, 80]],
                                                "mask": "previous"}).json()
    explicit = client.post("/v1/segment", json={"image_id": image_id, "boxes": [[10, 10, 60, 50], [70, 20, 130, 80]],
                                                "mask": boxes["low_res"]}).json()
    assert previous["masks"] == explicit["masks"]


def test_segment_zoomed_equals_the_models_zoomed_segment_and_keeps_its_windows(any_model, image):
    client = make_client(any_model)
    boxes = [[10, 10, 30, 30], [100, 50, 120, 75]]  # small: each gets a window of its own at zoom 3
    first = client.post("/v1/segment", files={"image": ("f.png", encode(image), "image/png")},
                        data={"prompts": json.dumps({"boxes": boxes, "zoom": 3})})
    assert first.status_code == 200, first.text
    want = any_model.segment(image, boxes=boxes, zoom=3)
    np.testing.assert_array_equal(decode_masks(first.json()), want.masks)
    np.testing.assert_allclose(first.json()["scores"], want.scores, atol=1e-4)
    plain = any_model.segment(image, boxes=boxes)
    assert not np.array_equal(plain.masks, want.masks)  # zoom really changed the answer
    image_id = first.json()["image_id"]
    cache = client.app.state.service.cache
    windows = cache.get(image_id).windows
    assert len(windows) == 2 and cache.bytes == cache.get(image_id).nbytes  # kept, and counted
    again = client.post("/v1/segment", json={"image_id": image_id, "boxes": boxes, "zoom": 3}).json()
    assert again["masks"] == first.json()["masks"] and cache.get(image_id).windows.keys() == windows.keys()
    # a click session zooms from its refinement click on (single points stay on the whole image)
    clicks = {"points": [[20, 20], [25, 22]], "labels": [1, 1]}
    zoomed = client.post("/v1/segment", json={"image_id": image_id, **clicks, "zoom": 3}).json()
    np.testing.assert_array_equal(decode_masks(zoomed), any_model.segment(image, **clicks, zoom=3).masks)
    # the zoomed call left no whole-image logits to refine
    assert_error(client.post("/v1/segment", json={"image_id": image_id, "boxes": boxes, "mask": "previous"}),
                 422, "no_previous_mask", "mask")


def test_segment_encode_only_and_forget(onnx_model, image):
    client = make_client(onnx_model)
    body = client.post("/v1/segment", content=encode(image), headers={"Content-Type": "image/png"}).json()
    assert body["count"] == 0 and body["masks"] == [] and len(body["image_id"]) >= 16
    assert client.delete(f"/v1/segment/{body['image_id']}").json() == {"deleted": body["image_id"]}
    assert_error(client.delete(f"/v1/segment/{body['image_id']}"), 404, "unknown_image_id", "image_id")
    again = client.post("/v1/segment", json={"image_id": body["image_id"], "points": [[5, 5]], "labels": [1]})
    assert_error(again, 404, "unknown_image_id", "image_id", "send the image again")


@pytest.mark.parametrize("prompts, status, code, field", [
    ('{"points": [[1, 2]], "labels": [1]', 400, "bad_json", "prompts"),
    ('[1, 2]', 422, "invalid_prompt", "prompts"),
    ('{"clicks": [[1, 2]]}', 422, "invalid_prompt", "clicks"),
    ('{"points": [[1, 2]]}', 422, "invalid_prompt", "labels"),
    ('{"points": [[1, 2]], "labels": [2]}', 422, "invalid_prompt", "labels[0]"),
    ('{"points": [[1, 2]], "labels": [true]}', 422, "invalid_prompt", "labels[0]"),
    ('{"points": [[1, 2], [3, 4]], "labels": [1]}', 422, "invalid_prompt", "labels"),
    ('{"points": [[1, "a"]], "labels": [1]}', 422, "invalid_prompt", "points[0]"),
    ('{"points": [[1, 2, 3]], "labels": [1]}', 422, "invalid_prompt", "points[0]"),
    ('{"points": [], "labels": []}', 422, "invalid_prompt", "points"),
    ('{"points": [[500, 20]], "labels": [1]}', 422, "out_of_range", "points[0]"),
    ('{"boxes": [[0, 0, 10, 10], [5, -3, 20, 20]]}', 422, "out_of_range", "boxes[1]"),
    ('{"boxes": [[30, 10, 20, 40]]}', 422, "invalid_prompt", "boxes[0]"),
    ('{"mask": "previous"}', 422, "no_previous_mask", "mask"),
    ('{"mask": {"shape": [1, 16, 16], "dtype": "float32", "data": "%%%"}}', 422, "invalid_prompt", "mask.data"),
    ('{"mask": {"shape": [1, 16, 16], "dtype": "float32", "data": "AAAA"}}', 422, "invalid_prompt", "mask.data"),
    ('{"mask": {"shape": [1, 16, 16], "dtype": "int8", "data": ""}}', 422, "invalid_prompt", "mask.dtype"),
    ('{"return_low_res": "yes", "points": [[1, 2]], "labels": [1]}', 422, "invalid_prompt", "return_low_res"),
    ('{"boxes": [[10, 10, 30, 30]], "zoom": 0.5}', 422, "invalid_prompt", "zoom"),
    ('{"boxes": [[10, 10, 30, 30]], "zoom": true}', 422, "invalid_prompt", "zoom"),
    ('{"boxes": [[10, 10, 30, 30]], "zoom": "3"}', 422, "invalid_prompt", "zoom"),
    ('{"boxes": [[10, 10, 30, 30]], "zoom": 3, "mask": "previous"}', 422, "invalid_prompt", "mask"),
    ('{"boxes": [[10, 10, 30, 30]], "zoom": 3, "return_low_res": true}', 422, "invalid_prompt", "return_low_res"),
    ('{"points": ' + json.dumps([[1, 1]] * 65) + ', "labels": ' + json.dumps([1] * 65) + '}', 422,
     "invalid_prompt", "points"),
])
def test_segment_rejects_bad_prompts(onnx_model, image, prompts, status, code, field):
    client = make_client(onnx_model)
    response = client.post("/v1/segment", files={"image": ("f.png", encode(image), "image/png")},
                           data={"prompts": prompts})
    assert_error(response, status, code, field)


def test_segment_request_shapes(onnx_model, image):
    client = make_client(onnx_model)
    assert_error(client.post("/v1/segment", json={"points": [[1, 2]], "labels": [1]}), 422, "missing_image", "image")
    body = client.post("/v1/segment", content=encode(image)).json()
    both = client.post("/v1/segment", files={"image": ("f.png", encode(image), "image/png")},
                       data={"prompts": json.dumps({"image_id": body["image_id"]})})
    assert_error(both, 422, "invalid_prompt", "image_id", "not both")
    assert_error(client.post("/v1/segment?x=1", content=encode(image)), 422, "invalid_parameter", "x")
    assert_error(client.post("/v1/segment", json={"image_id": 5}), 422, "invalid_prompt", "image_id")
    wrong = client.post("/v1/segment", json={"image_id": body["image_id"], "points": [[1, 2]], "labels": [1],
                                             "mask": {"shape": [3, 3], "dtype": "float32", "data": "A" * 48}})
    assert_error(wrong, 422, "invalid_prompt")  # the predictor names the expected low-res shape


def test_prompt_only_and_detect_only_models(torch_model, serve_export, image):
    import powersam

    integrated_only = make_client(powersam.load(serve_export / "model.onnx", threads=1))
    assert integrated_only.get("/v1/model").json()["segment"] is False
    assert_error(integrated_only.post("/v1/segment", content=encode(image)), 400, "not_supported", None, "prompted")
    pair_only = make_client(powersam.load(serve_export / "encoder.onnx", threads=1))
    info = pair_only.get("/v1/model").json()
    assert info["detect"] is False and info["thresholds"] is None and info["classes"] == []
    assert_error(pair_only.post("/v1/detect", content=encode(image)), 400, "not_supported", None, "/v1/segment")
    assert pair_only.post("/v1/segment", content=encode(image)).status_code == 200


def test_unknown_routes_and_methods_are_json(onnx_model):
    client = make_client(onnx_model)
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.get("/v1/detect"), 405, "method_not_allowed")


def test_cached_images_do_not_mix(any_model):
    """Encode A, then B, then click on A: the mask is A's (the cache restores A's embedding and size)."""
    client = make_client(any_model)
    a, b = noise(90, 140, seed=21), noise(50, 60, seed=22)
    id_a = client.post("/v1/segment", content=encode(a)).json()["image_id"]
    id_b = client.post("/v1/segment", content=encode(b)).json()["image_id"]
    for image, image_id, point in ((a, id_a, [100, 70]), (b, id_b, [30, 20]), (a, id_a, [20, 10])):
        body = client.post("/v1/segment", json={"image_id": image_id, "points": [point], "labels": [1]}).json()
        assert body["image_size"] == list(image.shape[:2])
        np.testing.assert_array_equal(decode_masks(body), any_model.segment(image, points=[point], labels=[1]).masks)
