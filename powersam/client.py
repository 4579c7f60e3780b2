"""Talk to a ``powersam serve`` server the way you call a local model.

``Client(url)`` has the calls of :class:`powersam.model.Model` that make sense over HTTP and returns the same
:class:`~powersam.results.Results` (masks decoded from the server's COCO RLE)::

    from powersam.client import Client

    model = Client("http://edge-box:8000", api_key="...")      # or $POWERSAM_API_KEY
    result = model.predict("frame.jpg", conf=0.5)              # POST /v1/detect
    result.summary(), result.speed                             # the server's per-stage timings
    model.set_image("frame.jpg")                               # encoded once, kept in the server's cache
    model.segment(points=[[250, 300]], labels=[1])             # each click runs only the decoder
    model.segment(points=[[250, 300], [270, 310]], labels=[1, 0], mask="previous")   # refine the last mask
    png = model.overlay("frame.jpg")                           # PNG bytes drawn by the server

Standard library HTTP (``urllib``), so the client needs neither torch nor the ``serve`` extra. Server errors raise
:class:`ServerError` with the server's status, code and message.
"""
from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from PIL import Image

from .io import ImageSource, load_image
from .results import Results

__all__ = ["Client", "ServerError"]

API_KEY_ENV = "POWERSAM_API_KEY"


class ServerError(RuntimeError):
    """An error answer of the server (``status`` HTTP code, ``code`` e.g. ``"queue_full"``, ``field``), or no answer
    at all (``status`` 0, ``code`` ``"unreachable"``)."""

    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})" if status else message)
        self.status, self.code, self.message, self.field = status, code, message, field


def _image_bytes(image: ImageSource) -> tuple[bytes, str]:
    """(bytes to upload, file name): a path is sent as the file it is (the server decodes it like
    :func:`powersam.io.load_image`, EXIF included); arrays and PIL images as lossless PNG."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: '{path}'")
        return path.read_bytes(), path.name
    buffer = io.BytesIO()
    Image.fromarray(load_image(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), "image.png"


class Client:
    """A remote model served by ``powersam serve`` (see the module doc).

    Args:
        url: the server's base URL (``http://host:8000``).
        api_key: sent as ``X-API-Key`` (default: ``$POWERSAM_API_KEY``).
        timeout: seconds per HTTP request.
    """

    def __init__(self, url: str, api_key: Optional[str] = None, timeout: float = 60.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://; got {url!r}")
        self.url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.timeout = float(timeout)
        self.image_id: Optional[str] = None
        self._image_size: Optional[tuple[int, int]] = None
        self._info: Optional[dict[str, Any]] = None

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, body: Optional[bytes] = None, content_type: Optional[str] = None,
                 query: Optional[dict[str, Any]] = None) -> tuple[bytes, str]:
        url = self.url + path
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        request = urllib.request.Request(url, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.api_key:
            request.add_header("X-API-Key", self.api_key)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            payload = err.read()
            try:
                error = json.loads(payload)["error"]
                raise ServerError(err.code, error.get("code", "error"), error.get("message", ""),
                                  error.get("field")) from None
            except (ValueError, KeyError, TypeError):
                raise ServerError(err.code, "http_error", payload[:200].decode("utf-8", "replace")) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ServerError(0, "unreachable", f"cannot reach {self.url}: {reason}") from None

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        data, _ = self._request(method, path, **kwargs)
        return json.loads(data)

    @staticmethod
    def _multipart(fields: dict[str, tuple[Optional[str], bytes, str]]) -> tuple[bytes, str]:
        """``{name: (file name or None, bytes, content type)}`` → (body, content type)."""
        boundary = uuid.uuid4().hex
        parts = []
        for name, (filename, data, ctype) in fields.items():
            disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
            parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n\r\n"
                         .encode() + data + b"\r\n")
        return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"

    # ------------------------------------------------------------------ description
    def health(self) -> dict[str, Any]:
        return self._json("GET", "/v1/health")

    def info(self) -> dict[str, Any]:
        """``GET /v1/model`` (name, classes, input size, runtime, thresholds, limits), fetched once."""
        if self._info is None:
            self._info = self._json("GET", "/v1/model")
        return self._info

    def metrics(self) -> str:
        return self._request("GET", "/metrics")[0].decode("utf-8")

    @property
    def class_names(self) -> list[str]:
        return list(self.info()["classes"])

    names = class_names

    @property
    def model_name(self) -> str:
        return str(self.info()["name"])

    @property
    def img_size(self) -> int:
        return int(self.info()["input_size"])

    @property
    def can_detect(self) -> bool:
        return bool(self.info()["detect"])

    @property
    def can_segment(self) -> bool:
        return bool(self.info()["segment"])

    # ------------------------------------------------------------------ detect and segment
    def predict(self, images: Union[ImageSource, Sequence[ImageSource]], conf: Optional[float] = None,
                iou: Optional[float] = None, max_det: Optional[int] = None,
                classes: Optional[Sequence[str]] = None) -> Union[Results, list[Results]]:
        """Like :meth:`powersam.model.Model.predict`, on the server (``POST /v1/detect``)."""
        if isinstance(images, (list, tuple)):
            return [self.predict(image, conf, iou, max_det, classes) for image in images]
        data, _ = _image_bytes(images)
        query = {"conf": conf, "iou": iou, "max_det": max_det, "classes": ",".join(classes) if classes else None}
        body = self._json("POST", "/v1/detect", body=data, content_type="application/octet-stream", query=query)
        path = images if isinstance(images, (str, Path)) else None
        return self._results(body, body["class_names"], path)

    __call__ = predict

    def overlay(self, image: ImageSource, conf: Optional[float] = None, iou: Optional[float] = None,
                max_det: Optional[int] = None) -> bytes:
        """The server's drawing of the detections (``/v1/detect?format=png``) as PNG bytes."""
        data, _ = _image_bytes(image)
        query = {"conf": conf, "iou": iou, "max_det": max_det, "format": "png"}
        return self._request("POST", "/v1/detect", body=data, content_type="application/octet-stream",
                             query=query)[0]

    def set_image(self, image: ImageSource) -> "Client":
        """Upload and encode ``image`` once; later :meth:`segment` calls only send prompts. Returns self."""
        self._segment(image, {})
        return self

    def segment(self, image: Optional[ImageSource] = None, boxes: Optional[Any] = None, points: Optional[Any] = None,
                labels: Optional[Any] = None, mask: Optional[Union[str, np.ndarray]] = None,
                zoom: Optional[float] = None) -> Results:
        """Like :meth:`powersam.model.Model.segment`: masks for ``boxes`` (N×4) and/or ``points`` (K×2, with
        ``labels`` K of 1/0) on ``image`` or the image of :meth:`set_image`. ``mask`` is ``"previous"`` (the
        low-res logits of the last call on this image, kept by the server) or an N×1×s×s array. ``zoom``: decode
        on a crop of that many box sides around each box / click session (docs/zoom.md; not with ``mask``)."""
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        prompts: dict[str, Any] = {}
        if boxes is not None:
            prompts["boxes"] = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).tolist()
        if points is not None:
            prompts["points"] = np.asarray(points, dtype=np.float64).reshape(-1, 2).tolist()
            prompts["labels"] = [int(v) for v in np.asarray(labels).reshape(-1)]
        if isinstance(mask, str):
            prompts["mask"] = mask
        elif mask is not None:
            from .serve.codec import encode_array  # NumPy only; the serve extra is not needed

            prompts["mask"] = encode_array(np.asarray(mask, dtype=np.float32), "float32")
        if not prompts:
            raise ValueError("segment() needs prompts: boxes=, points= with labels=, or mask=")
        if zoom is not None:
            prompts["zoom"] = float(zoom)
        return self._segment(image, prompts)

    def _segment(self, image: Optional[ImageSource], prompts: dict[str, Any]) -> Results:
        if image is not None:
            data, name = _image_bytes(image)
            body, ctype = self._multipart({"image": (name, data, "application/octet-stream"),
                                           "prompts": (None, json.dumps(prompts).encode(), "application/json")})
            answer = self._json("POST", "/v1/segment", body=body, content_type=ctype)
        else:
            if self.image_id is None:
                raise RuntimeError("no image: pass image= or call set_image first")
            payload = json.dumps({"image_id": self.image_id, **prompts}).encode()
            answer = self._json("POST", "/v1/segment", body=payload, content_type="application/json")
        self.image_id, self._image_size = answer["image_id"], tuple(answer["image_size"])
        return self._results(answer, ["object"], image if isinstance(image, (str, Path)) else None)

    def reset_image(self) -> None:
        """Forget the current image here and in the server's cache."""
        if self.image_id is not None:
            try:
                self._request("DELETE", f"/v1/segment/{urllib.parse.quote(self.image_id)}")
            except ServerError as err:
                if err.status != 404:  # already evicted is fine
                    raise
        self.image_id = self._image_size = None

    # ------------------------------------------------------------------ decoding
    @staticmethod
    def _results(body: dict[str, Any], class_names: list[str], path: Any) -> Results:
        from .masks import CompactMasks

        height, width = body["image_size"]
        # Kept as run lengths (Results.masks builds the N×H×W array only when read).
        masks = CompactMasks.from_coco(body.get("masks") or [], (height, width))
        result = Results(boxes=np.asarray(body["boxes"], np.float32).reshape(-1, 4),
                         scores=np.asarray(body["scores"], np.float32), labels=np.asarray(body["labels"], np.int64),
                         masks=masks, class_names=class_names, orig_shape=(height, width), image_path=path)
        result.speed = dict(body.get("speed", {}))
        return result
