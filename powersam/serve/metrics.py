"""Prometheus-style metrics without a client library: request counts, a latency histogram, errors, gauges.

Exposed at ``GET /metrics`` in the text exposition format (version 0.0.4):

* ``powersam_requests_total{endpoint, method, status}`` — every request, by route template and status code;
* ``powersam_request_duration_seconds{endpoint}`` — histogram of wall time per request (``_bucket``, ``_sum``,
  ``_count``);
* ``powersam_errors_total{endpoint, code}`` — 4xx/5xx answers by error code (``queue_full``, ``not_an_image`` …);
* ``powersam_model_seconds{endpoint}`` — histogram of the model call alone (decode + inference + encode);
* gauges from the app: in-flight requests, queue limit, cache entries and bytes, uptime.

:class:`MetricsMiddleware` (plain ASGI) records the first three for every HTTP request, also those that fail.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any, Awaitable, Callable, Iterable, Mapping

__all__ = ["LATENCY_BUCKETS", "Histogram", "Metrics", "MetricsMiddleware"]

LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels(pairs: Mapping[str, Any]) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in pairs.items())
    return "{" + inner + "}" if inner else ""


class Histogram:
    """Cumulative-bucket histogram per label set."""

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[tuple, list[int]] = defaultdict(lambda: [0] * (len(self.buckets) + 1))
        self._sums: dict[tuple, float] = defaultdict(float)

    def observe(self, labels: tuple, value: float) -> None:
        counts = self._counts[labels]
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self._sums[labels] += value

    def render(self, name: str, label_names: tuple[str, ...]) -> list[str]:
        lines = []
        for labels, counts in sorted(self._counts.items()):
            base = dict(zip(label_names, labels))
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), counts):
                running += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f"{name}_bucket{_labels({**base, 'le': le})} {running}")
            lines.append(f"{name}_sum{_labels(base)} {self._sums[labels]:.6f}")
            lines.append(f"{name}_count{_labels(base)} {running}")
        return lines


class Metrics:
    """All counters of one server process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.errors: dict[tuple[str, str], int] = defaultdict(int)
        self.latency = Histogram()
        self.model_time = Histogram()

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, method, int(status))] += 1
            self.latency.observe((endpoint,), seconds)

    def observe_error(self, endpoint: str, code: str) -> None:
        with self._lock:
            self.errors[(endpoint, code)] += 1

    def observe_model(self, endpoint: str, seconds: float) -> None:
        with self._lock:
            self.model_time.observe((endpoint,), seconds)

    def count(self, endpoint: str, status: int) -> int:
        """Requests answered so far on ``endpoint`` with ``status`` (any method)."""
        with self._lock:
            return sum(n for (e, _, s), n in self.requests.items() if e == endpoint and s == status)

    def render(self, gauges: Mapping[str, tuple[str, float]]) -> str:
        """The exposition text; ``gauges`` maps metric name → (help text, value)."""
        with self._lock:
            lines = ["# HELP powersam_requests_total HTTP requests by route, method and status code.",
                     "# TYPE powersam_requests_total counter"]
            for (endpoint, method, status), n in sorted(self.requests.items()):
                lines.append(f"powersam_requests_total{_labels(dict(endpoint=endpoint, method=method, status=status))} {n}")
            lines += ["# HELP powersam_errors_total Error answers (4xx/5xx) by route and error code.",
                      "# TYPE powersam_errors_total counter"]
            for (endpoint, code), n in sorted(self.errors.items()):
                lines.append(f"powersam_errors_total{_labels(dict(endpoint=endpoint, code=code))} {n}")
            lines += ["# HELP powersam_request_duration_seconds Wall time per HTTP request.",
                      "# TYPE powersam_request_duration_seconds histogram",
                      *self.latency.render("powersam_request_duration_seconds", ("endpoint",)),
                      "# HELP powersam_model_seconds Time of the model work per request (decode, inference, encode).",
                      "# TYPE powersam_model_seconds histogram",
                      *self.model_time.render("powersam_model_seconds", ("endpoint",))]
        for name, (help_text, value) in gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (``/v1/detect``; ``other`` when no route matched,
    so random paths cannot blow up the label set). A request that raised is counted as 500."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.observe_request(endpoint, scope.get("method", "GET"), status["code"],
                                         time.perf_counter() - start)
