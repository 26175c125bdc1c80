"""Optional protection of the search routes for exposed deployments: API keys and a rate limit.

Both are off by default. ``DPR_API_KEYS=k1,k2`` makes ``/search``, ``/search/batch`` and
``/passages/*`` require ``Authorization: Bearer <key>`` (401 otherwise); ``DPR_RATE_LIMIT_PER_S``
gives each client a token bucket of that rate and ``DPR_RATE_LIMIT_BURST`` tokens (429 with
``Retry-After`` when empty). A client is its API key when keys are set, else its address (behind a
proxy that is the proxy's: rate-limit there instead). ``/healthz``, ``/readyz``, ``/metrics`` and
the page stay open; the admin routes have their own token.
"""
from __future__ import annotations

import hmac
import math
import threading
import time
from collections import OrderedDict

from fastapi import Request

from server.errors import APIError
from server.settings import Settings

# Buckets kept; the least recently seen client is forgotten first (it then starts with a full bucket).
MAX_CLIENTS = 10_000


def bearer_token(request: Request) -> bytes:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return given.strip().encode() if scheme.lower() == "bearer" else b""


def key_matches(given: bytes, keys: list[bytes]) -> bool:
    """Constant time in which key matched: every key is compared, without stopping at the first."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return matched


class RateLimiter:
    """Token buckets by client: ``rate`` tokens per second up to ``burst``; thread-safe."""

    def __init__(self, rate: float, burst: int, max_clients: int = MAX_CLIENTS) -> None:
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self._buckets: OrderedDict[bytes | str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: bytes | str, now: float | None = None) -> float:
        """0.0 if ``client`` may go now (a token is spent), else the seconds until it may."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait


async def require_client(request: Request) -> None:
    """The search routes' guard: the API key (when keys are configured), then the rate limit."""
    settings: Settings = request.app.state.settings
    keys: list[bytes] = request.app.state.api_keys
    client: bytes | str = request.client.host if request.client else "unknown"
    if keys:
        given = bearer_token(request)
        if not key_matches(given, keys):
            raise APIError(401, "missing or wrong API key", "send 'Authorization: Bearer <key>' (DPR_API_KEYS)",
                           headers={"WWW-Authenticate": "Bearer"})
        client = given
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is not None:
        wait = limiter.take(client)
        if wait > 0:
            raise APIError(429, "rate limit exceeded", {"rate_per_s": settings.rate_limit_per_s,
                                                        "burst": settings.rate_limit_burst},
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
