"""What the service refuses, and how: its settings, the JSON error every 4xx/5xx carries, bounded body reading,
checked image decoding, and the bounded queue in front of the one model thread.

* :class:`ServeConfig` — upload size, image side, queue length, request timeout, embedding cache bounds, API key,
  CORS origins.
* :class:`ApiError` — an HTTP status, a stable machine code (``"not_an_image"``, ``"queue_full"`` …) and a message
  that names the problem; the app turns it into ``{"error": {"status", "code", "message", "field"}}``.
* :func:`read_body` — the request body, refused with 413 as soon as it passes the limit.
* :func:`decode_image` — bytes → H×W×3 uint8 RGB, with 400/413/415 for empty, truncated, huge or non-image data.
* :class:`InferenceGate` — admits at most ``max_queue`` requests (running + waiting; 429 beyond), runs their model
  work one at a time on a worker thread so the event loop never blocks, and answers 503 after ``timeout_s``.

Torch-free (NumPy, Pillow).
"""
from __future__ import annotations

import asyncio
import io
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..io import load_image

__all__ = ["ApiError", "InferenceGate", "ServeConfig", "decode_image", "read_body"]

T = TypeVar("T")
MiB = 1 << 20


@dataclass
class ServeConfig:
    """Limits and options of one server process (``powersam serve --help`` names each flag).

    Attributes:
        max_upload_bytes: largest request body (413 beyond).
        max_image_side: largest image width or height in pixels, checked from the header before decoding (413).
        max_queue: requests admitted at once, running plus waiting for the model (429 beyond).
        timeout_s: a request that has not finished after this many seconds gets 503 (its model call, once started,
            still completes and keeps its queue slot until then, so the bound holds).
        cache_entries / cache_bytes: bounds of the ``/v1/segment`` image-embedding cache (least recently used
            entries are evicted first).
        max_prompts: most boxes, and most points, in one ``/v1/segment`` request.
        api_key: when set, ``/v1/*`` (except ``/v1/health``) and ``/metrics`` need it in ``X-API-Key`` or
            ``Authorization: Bearer``.
        cors_origins: origins allowed by CORS (none by default: CORS is off).
    """

    max_upload_bytes: int = 20 * MiB
    max_image_side: int = 8192
    max_queue: int = 8
    timeout_s: float = 30.0
    cache_entries: int = 16
    cache_bytes: int = 256 * MiB
    max_prompts: int = 64
    api_key: Optional[str] = None
    cors_origins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_image_side", "max_queue", "cache_entries", "cache_bytes", "max_prompts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive; got {self.timeout_s!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty (leave it unset to serve without a key)")

    def public(self) -> dict[str, Any]:
        """The limits a client may see (``/v1/model``): everything but the key."""
        return {"max_upload_bytes": self.max_upload_bytes, "max_image_side": self.max_image_side,
                "max_queue": self.max_queue, "timeout_s": self.timeout_s, "cache_entries": self.cache_entries,
                "cache_bytes": self.cache_bytes, "max_prompts": self.max_prompts,
                "api_key_required": self.api_key is not None}


class ApiError(Exception):
    """A request the service refuses: HTTP ``status``, machine ``code``, human ``message``, optional ``field``."""

    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


# ---------------------------------------------------------------------------------------------------- bodies
async def read_body(chunks: AsyncIterator[bytes], limit: int, declared: Optional[str] = None) -> bytes:
    """Collect a request body from ``chunks``; 413 when ``declared`` (the Content-Length header) or the bytes
    received pass ``limit``, without reading the rest."""
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, "bad_content_length", f"Content-Length {declared!r} is not an integer") from None
        if length > limit:
            raise ApiError(413, "body_too_large",
                           f"request body of {length} bytes exceeds the limit of {limit} bytes (--max-upload-mb)")
    parts, total = [], 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "body_too_large",
                           f"request body exceeds the limit of {limit} bytes (--max-upload-mb)")
        parts.append(chunk)
    return b"".join(parts)


def decode_image(data: bytes, max_side: int, field: str = "image") -> np.ndarray:
    """Image file bytes (PNG, JPEG, WebP, BMP, TIFF …) → H×W×3 uint8 RGB, EXIF orientation applied.

    Raises :class:`ApiError`: 400 ``empty_image`` (0 bytes), 415 ``not_an_image`` (not a format Pillow reads),
    413 ``image_too_large`` (a side over ``max_side``, checked before decoding), 400 ``corrupt_image`` (truncated or
    damaged data).
    """
    if not data:
        raise ApiError(400, "empty_image", f"{field} is empty (0 bytes)", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ApiError(413, "image_too_large", f"{field} is too large to decode: {err}", field) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        head = data[:8].hex(" ")
        raise ApiError(415, "not_an_image", f"{field} is not an image file Pillow can read ({len(data)} bytes "
                       f"starting {head}); send PNG, JPEG, WebP, BMP or TIFF", field) from None
    width, height = image.size
    if max(width, height) > max_side:
        raise ApiError(413, "image_too_large", f"{field} is {width}×{height} pixels; the longest side may be at most "
                       f"{max_side} (--max-image-side)", field)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return load_image(image)
    except (OSError, SyntaxError, ValueError, TypeError) as err:
        raise ApiError(400, "corrupt_image", f"{field} could not be decoded (truncated or damaged {image.format} "
                       f"data): {err}", field) from None


# ---------------------------------------------------------------------------------------------------- queue
class InferenceGate:
    """Bounded admission in front of one worker thread (see the module doc).

    ``run(fn, *args)`` is awaited by the endpoints: it raises :class:`ApiError` 429 ``queue_full`` when
    ``max_queue`` requests are already admitted, 503 ``timeout`` after ``timeout_s`` and 503 ``shutting_down`` once
    :meth:`close` was called; exceptions of ``fn`` (including its own :class:`ApiError`) propagate.
    """

    def __init__(self, max_queue: int, timeout_s: float) -> None:
        self.max_queue, self.timeout_s = int(max_queue), float(timeout_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="powersam-model")
        self._lock = threading.Lock()
        self._in_flight = 0
        self._closed = False
        self.rejected = 0  # 429s so far
        self.timed_out = 0

    @property
    def in_flight(self) -> int:
        """Requests admitted and not finished (running or waiting)."""
        return self._in_flight

    def _release(self, _: Future) -> None:
        with self._lock:
            self._in_flight -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._closed:
                raise ApiError(503, "shutting_down", "the server is shutting down; retry on another instance")
            if self._in_flight >= self.max_queue:
                self.rejected += 1
                raise ApiError(429, "queue_full", f"server busy: {self._in_flight} requests in flight (limit "
                               f"{self.max_queue}, --max-queue); retry shortly", headers={"Retry-After": "1"})
            self._in_flight += 1
        try:
            future = self._executor.submit(fn, *args)
        except RuntimeError:  # the executor was shut down between the check and the submit
            with self._lock:
                self._in_flight -= 1
            raise ApiError(503, "shutting_down", "the server is shutting down; retry on another instance") from None
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except asyncio.TimeoutError:
            future.cancel()  # frees the slot at once if it never started; a running call finishes first
            self.timed_out += 1
            raise ApiError(503, "timeout", f"request did not finish within {self.timeout_s:g} s (--timeout); the "
                           "server is overloaded or the image is too large") from None

    def close(self, wait: bool = True) -> None:
        """Refuse new requests; with ``wait``, block until the admitted ones finished."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=wait)
