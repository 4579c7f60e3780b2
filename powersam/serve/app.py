"""The ASGI application: :func:`create_app(model, config) <create_app>` → a FastAPI app serving one
:class:`~powersam.model.Model` (PyTorch or torch-free ONNX Runtime, through the same ``predict`` / prompting
pipeline).

==========================  =========================================================================================
``POST /v1/detect``         image (multipart field ``image``, or the raw bytes as the body) → detections as JSON
                            (:func:`~powersam.serve.codec.results_json`), or a PNG overlay with ``?format=png``;
                            ``conf``, ``iou``, ``max_det``, ``classes`` query parameters
``POST /v1/segment``        prompts on an image: multipart ``image`` + ``prompts`` (JSON) for the first call, then a
                            JSON body with the returned ``image_id``; only the prompt decoder runs on a cached image
``DELETE /v1/segment/{id}`` forget a cached image
``GET /v1/health``          liveness, queue occupancy
``GET /v1/model``           name, classes, input size, runtime, thresholds, limits
``GET /metrics``            Prometheus text format (:mod:`.metrics`)
``GET /``                   the web page (``static/``)
==========================  =========================================================================================

Every error is JSON ``{"error": {"status", "code", "message", "field"?}}`` (:class:`~powersam.serve.limits.ApiError`);
an unexpected exception in one request is logged and answered 500, never fatal. Model work runs on one worker
thread behind :class:`~powersam.serve.limits.InferenceGate`.
"""
from __future__ import annotations

import io
import logging
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..inference.detect import ImageTooSmall
from ..inference.prompts import prompt_results
from ..inference.timing import StageTimer
from .cache import EmbeddingCache
from .codec import (DetectParams, Prompts, check_prompts_in_image, encode_array, parse_detect_params, parse_prompts,
                    results_json)
from .limits import ApiError, InferenceGate, ServeConfig, decode_image, read_body
from .metrics import Metrics, MetricsMiddleware

__all__ = ["STATIC_DIR", "create_app"]

logger = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
OPEN_PATHS = ("/", "/v1/health", "/favicon.ico")
ZOOM_WINDOWS_KEPT = 8  # zoom windows' encodings kept per cached image (counted in the cache's byte bound)


def _endpoint(request: Request) -> str:
    return getattr(request.scope.get("route"), "path", None) or "other"


class ModelService:
    """The model-side work of the endpoints (runs on the gate's worker thread) and what describes the model."""

    def __init__(self, model: Any, config: ServeConfig, metrics: Metrics, name: Optional[str] = None) -> None:
        self.model, self.config, self.metrics = model, config, metrics
        self.name = name or model.model_name
        self.cache = EmbeddingCache(config.cache_entries, config.cache_bytes)
        self.class_names = list(model.class_names)
        self.defaults = model.detector.detection_defaults() if model.can_detect else None
        self.description = self._describe()

    def _describe(self) -> dict[str, Any]:
        info = self.model.info()
        conf, iou, max_det = self.defaults or (None, None, None)
        return {
            "name": self.name, "runtime": self.model.backend, "input_size": self.model.img_size,
            "classes": self.class_names, "detect": self.model.can_detect, "segment": self.model.can_segment,
            "thresholds": {"conf": conf, "iou": iou, "max_det": max_det} if self.defaults else None,
            **{k: info[k] for k in ("providers", "device", "params") if k in info},
            "limits": self.config.public(), "version": __version__,
        }

    # ------------------------------------------------------------------ detect
    def detect(self, data: bytes, params: DetectParams) -> tuple[str, Any]:
        start = time.perf_counter()
        rgb = decode_image(data, self.config.max_image_side)
        try:
            options = {} if params.zoom is None else {"zoom": params.zoom}
            result = self.model.predict(rgb, conf=params.conf, iou=params.iou, max_det=params.max_det,
                                        classes=params.classes, **options)
        except ImageTooSmall as err:
            raise ApiError(422, "image_too_small", str(err), "image") from None
        except ValueError as err:
            raise ApiError(422, "invalid_parameter", str(err)) from None
        if params.format == "png":
            buffer = io.BytesIO()
            Image.fromarray(result.plot(rgb)).save(buffer, format="PNG")
            out: tuple[str, Any] = ("png", buffer.getvalue())
        else:
            conf, iou, max_det = self.defaults
            body = {"model": self.name, **results_json(result), "class_names": self.class_names,
                    "thresholds": {"conf": conf if params.conf is None else params.conf,
                                   "iou": iou if params.iou is None else params.iou,
                                   "max_det": max_det if params.max_det is None else params.max_det}}
            out = ("json", body)
        self.metrics.observe_model("/v1/detect", time.perf_counter() - start)
        return out

    # ------------------------------------------------------------------ segment
    def segment(self, data: Optional[bytes], prompts: Prompts) -> dict[str, Any]:
        start, timer = time.perf_counter(), StageTimer()
        predictor = self.model.predictor
        if data is not None:
            with timer("preprocess"):
                rgb = decode_image(data, self.config.max_image_side)
            image_size = rgb.shape[:2]
            check_prompts_in_image(prompts, image_size)
            with timer("encoder"):
                predictor.set_image(rgb)
            try:  # the upload is kept too (compressed, as sent): zoomed prompts crop the image again
                image_id = self.cache.put(predictor.image_state(), image_size, image_bytes=data)
            except ValueError as err:
                raise ApiError(507, "cache_too_small", str(err)) from None
            entry = self.cache.get(image_id)
        else:
            image_id = prompts.image_id
            entry = self.cache.get(image_id)
            if entry is None:
                raise ApiError(404, "unknown_image_id", f"image_id {image_id!r} is unknown or was evicted from the "
                               f"cache ({self.cache.max_entries} images, --cache-entries); send the image again",
                               "image_id")
            check_prompts_in_image(prompts, entry.image_size)
            predictor.restore_image_state(entry.state)
        body: dict[str, Any] = {"model": self.name, "image_id": image_id, "image_size": list(entry.image_size),
                                "cached": data is None}
        if not prompts.empty and prompts.zoom is not None:
            result = self._decode_zoomed(predictor, prompts, image_id, entry, timer)
            body.update(results_json(result))
        elif not prompts.empty:
            result, low_res = self._decode(predictor, prompts, entry.low_res, timer)
            self.cache.set_low_res(image_id, low_res)
            body.update(results_json(result))
            if prompts.return_low_res:
                body["low_res"] = encode_array(low_res)
        else:
            body.update(count=0, boxes=[], labels=[], names=[], scores=[], masks=[])
        body["speed"] = {k: round(v, 3) for k, v in timer.ms.items()}
        self.metrics.observe_model("/v1/segment", time.perf_counter() - start)
        return body

    def _decode_zoomed(self, predictor: Any, prompts: Prompts, image_id: str, entry: Any, timer: StageTimer) -> Any:
        """Prompts decoded on crops around each box / click session (:class:`~powersam.inference.zoom.ZoomPredictor`);
        the windows' encodings stay with the cached image for the next clicks. Window encoder passes are timed
        under ``decoder``."""
        from ..inference.zoom import ZoomPredictor

        if entry.image_bytes is None:
            raise ApiError(422, "invalid_prompt", "zoom needs the image, which this cache entry does not hold; send "
                           "the image again", "zoom")
        with timer("preprocess"):
            rgb = decode_image(entry.image_bytes.tobytes(), self.config.max_image_side)
        zoom = ZoomPredictor(predictor, context=prompts.zoom, cache_size=ZOOM_WINDOWS_KEPT)
        zoom.set_image(rgb, full_frame_state=entry.state, window_states=entry.windows)
        result, _ = self._decode(zoom, prompts, None, timer)
        self.cache.set_windows(image_id, zoom.window_states())
        self.cache.set_low_res(image_id, None)  # a zoomed call's logits are in its windows: nothing to refine
        return result

    @staticmethod
    def _decode(predictor: Any, prompts: Prompts, previous: Optional[np.ndarray],
                timer: StageTimer) -> tuple[Any, np.ndarray]:
        """Prompts → (Results of N single-mask outputs, N×1×s×s low-res logits), as ``Model.segment`` shapes them."""
        n = len(prompts.boxes) if prompts.boxes is not None else 1
        batch: dict[str, Any] = {}
        if prompts.boxes is not None:
            batch["boxes"] = prompts.boxes
        if prompts.points is not None:  # the same clicks for every box, or one prompt of K clicks
            batch["point_coords"] = np.repeat(prompts.points[None], n, axis=0)
            batch["point_labels"] = np.repeat(prompts.labels[None], n, axis=0)
        if prompts.mask is not None:
            if isinstance(prompts.mask, str):
                if previous is None:
                    raise ApiError(422, "no_previous_mask", 'mask: "previous" needs an earlier prompted call on this '
                                   "image_id", "mask")
                mask = previous
            else:
                mask = prompts.mask
            mask = mask.reshape((-1, 1, *mask.shape[-2:])) if mask.ndim >= 2 else mask
            if mask.shape[0] == 1 and n > 1:
                mask = np.repeat(mask, n, axis=0)
            if mask.shape[0] != n:
                raise ApiError(422, "invalid_prompt", f"mask: holds {mask.shape[0]} masks for {n} prompts", "mask")
            batch["mask_input"] = mask
        with timer("decoder"):
            try:
                masks, scores, low_res = predictor.predict_compact(**batch, multimask_output=False)
            except ValueError as err:
                raise ApiError(422, "invalid_prompt", str(err)) from None
        with timer("postprocess"):  # compact masks, encoded to COCO RLE one at a time: no N full planes
            result = prompt_results(masks, np.asarray(scores)[:, 0], prompts.boxes, prompts.points,
                                    predictor.original_size)
        return result, np.asarray(low_res, dtype=np.float32)


async def _read_inputs(request: Request, config: ServeConfig, with_prompts: bool) -> tuple[Optional[bytes], Any]:
    """(image bytes or None, prompt JSON text or None) from a multipart form, a JSON body or raw image bytes."""
    body = await read_body(request.stream(), config.max_upload_bytes, request.headers.get("content-length"))
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=2, max_fields=4,
                                                             max_part_size=config.max_upload_bytes)
        except Exception as err:  # noqa: BLE001 - python-multipart raises several types for broken input
            raise ApiError(400, "bad_multipart", f"malformed multipart body: {err}") from None
        allowed = ("image", "prompts") if with_prompts else ("image",)
        unknown = sorted(set(form.keys()) - set(allowed))
        if unknown:
            raise ApiError(422, "invalid_parameter", f"{unknown[0]}: unknown form field (allowed: "
                           f"{', '.join(allowed)})", unknown[0])
        image = form.get("image")
        prompts = form.get("prompts")
        if image is not None and isinstance(image, str):
            raise ApiError(422, "invalid_parameter", "image: must be a file part (filename set), not a text field",
                           "image")
        data = await image.read() if image is not None else None
        if prompts is not None and not isinstance(prompts, str):
            prompts = await prompts.read()
        if data is None and not with_prompts:
            raise ApiError(422, "missing_image", "image: the multipart body has no 'image' file part", "image")
        return data, prompts
    if ctype == "application/json":
        if not with_prompts:
            raise ApiError(415, "unsupported_media_type", "send the image as a multipart 'image' file or as the raw "
                           "request body (e.g. Content-Type: image/jpeg), not JSON")
        return None, body
    return body, None  # any other type is the raw image (curl --data-binary sends x-www-form-urlencoded)


def create_app(model: Any, config: Optional[ServeConfig] = None, name: Optional[str] = None) -> FastAPI:
    """A FastAPI app serving ``model`` (a :class:`~powersam.model.Model`) under ``config`` (defaults: :class:`ServeConfig`)."""
    config = config or ServeConfig()
    metrics = Metrics()
    service = ModelService(model, config, metrics, name)
    gate = InferenceGate(config.max_queue, config.timeout_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        gate.close(wait=True)  # uvicorn has already waited for open requests; this drains the model thread
        service.cache.clear()

    app = FastAPI(title="PowerSAM", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service, app.state.gate, app.state.metrics, app.state.config = service, gate, metrics, config

    def authorize(request: Request) -> None:
        if config.api_key is None or request.url.path in OPEN_PATHS or request.url.path.startswith("/static/"):
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None or not secrets.compare_digest(given.encode(), config.api_key.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong API key: send it in the X-API-Key header (or "
                           "Authorization: Bearer)", headers={"WWW-Authenticate": "Bearer"})

    # ------------------------------------------------------------------ errors: always JSON, never fatal
    def error_response(request: Request, error: ApiError) -> JSONResponse:
        metrics.observe_error(_endpoint(request), error.code)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(request, error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(request, ApiError(error.status_code, code, f"{request.method} {request.url.path}: "
                                                f"{error.detail}", headers=dict(error.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = (error.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(request, ApiError(422, "invalid_parameter", f"{where}: {first.get('msg', 'invalid')}",
                                                where or None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(request, ApiError(500, "internal_error", f"internal error ({type(error).__name__}); "
                                                "the server logged the details"))

    # ------------------------------------------------------------------ endpoints
    @app.post("/v1/detect", summary="detect and segment every object in an image")
    async def detect(request: Request) -> Response:
        authorize(request)
        if not model.can_detect:
            raise ApiError(400, "not_supported", f"{service.name} has no box-prompt generator or detector: prompt it "
                           "with /v1/segment")
        params = parse_detect_params(dict(request.query_params), service.class_names)
        data, _ = await _read_inputs(request, config, with_prompts=False)
        kind, payload = await gate.run(service.detect, data, params)
        if kind == "png":
            return Response(payload, media_type="image/png")
        return JSONResponse(payload)

    @app.post("/v1/segment", summary="masks for point / box / mask prompts; the image embedding is cached")
    async def segment(request: Request) -> JSONResponse:
        authorize(request)
        if not model.can_segment:
            raise ApiError(400, "not_supported", f"{service.name} cannot be prompted (no encoder/decoder pair): "
                           "serve the interactive export or the PyTorch checkpoint")
        if request.query_params:
            name = next(iter(request.query_params))
            raise ApiError(422, "invalid_parameter", f"{name}: /v1/segment takes no query parameters (prompts go "
                           "in the JSON body or the 'prompts' form field)", name)
        data, text = await _read_inputs(request, config, with_prompts=True)
        prompts = parse_prompts(text, config.max_prompts)
        if data is None and prompts.image_id is None:
            raise ApiError(422, "missing_image", "send an image (multipart 'image' file or the raw body) or the "
                           "image_id an earlier /v1/segment call returned", "image")
        if data is not None and prompts.image_id is not None:
            raise ApiError(422, "invalid_prompt", "image_id: give either a new image or an image_id, not both",
                           "image_id")
        return JSONResponse(await gate.run(service.segment, data, prompts))

    @app.delete("/v1/segment/{image_id}", summary="forget a cached image embedding")
    async def forget(request: Request, image_id: str) -> JSONResponse:
        authorize(request)
        if not service.cache.pop(image_id):
            raise ApiError(404, "unknown_image_id", f"image_id {image_id!r} is not cached", "image_id")
        return JSONResponse({"deleted": image_id})

    @app.get("/v1/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "model": service.name, "in_flight": gate.in_flight,
                             "max_queue": gate.max_queue, "uptime_s": round(time.time() - metrics.started, 3)})

    @app.get("/v1/model")
    async def describe(request: Request) -> JSONResponse:
        authorize(request)
        return JSONResponse(service.description)

    @app.get("/metrics")
    async def prometheus(request: Request) -> PlainTextResponse:
        authorize(request)
        stats = service.cache.stats()
        gauges = {
            "powersam_in_flight": ("Requests admitted and not finished.", gate.in_flight),
            "powersam_queue_limit": ("Most requests admitted at once (--max-queue).", gate.max_queue),
            "powersam_rejected_total": ("Requests refused with 429 because the queue was full.", gate.rejected),
            "powersam_timeouts_total": ("Requests answered 503 after --timeout.", gate.timed_out),
            "powersam_cache_entries": ("Image embeddings cached for /v1/segment.", stats["entries"]),
            "powersam_cache_bytes": ("Bytes held by the embedding cache.", stats["bytes"]),
            "powersam_cache_evictions_total": ("Embeddings evicted by the cache bounds.", stats["evictions"]),
            "powersam_uptime_seconds": ("Seconds since the server started.", time.time() - metrics.started),
        }
        return PlainTextResponse(metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["*"])
    return app
