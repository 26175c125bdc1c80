"""Prometheus metrics on a per-app registry, so two apps in one process (tests) never collide."""
from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.protocol import READ_TIMEOUT_KEY

# Search latency on a CPU sits between ~5 ms and a few hundred; finer buckets where it matters.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UNMATCHED = "<unmatched>"
# Every label comes from a fixed set, so no client can grow /metrics: the method from these (else
# "other"), the route from the app's templates (else UNMATCHED), the status from 100..599.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
REJECT_REASONS = frozenset({"malformed", "timeout", "connections"})


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dpr_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("dpr_http_request_duration_seconds", "HTTP request latency by route template",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.index_size = Gauge("dpr_index_passages", "passages in the index being served", registry=self.registry)
        self.reloads = Counter("dpr_index_reloads", "admin reloads by outcome", ["outcome"], registry=self.registry)
        self.queries = Counter("dpr_queries", "queries searched (a batch counts each of its queries)",
                               registry=self.registry)
        self.rejected = Counter("dpr_http_rejected", "requests the HTTP layer refused before the app saw them "
                                "(malformed or ambiguous framing, a read timeout, too many connections)",
                                ["reason"], registry=self.registry)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason if reason in REJECT_REASONS else "other").inc()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        status = status if 100 <= status <= 599 else 500
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request (rejections by inner middleware too) under its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before starting a response

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The template (/passages/{pid}), not the path: one series per route, not per passage id.
            route: Any = scope.get("route")
            path = getattr(route, "path", None)
            self.metrics.observe(path if isinstance(path, str) else UNMATCHED, scope["method"],
                                 _status(scope, status), time.perf_counter() - start)


def _status(scope: Scope, status: int) -> int:
    """408 for a request dropped by the body timeout (server/protocol.py), else what the app answered."""
    if (scope.get("extensions") or {}).get(READ_TIMEOUT_KEY):
        return 408
    return status
