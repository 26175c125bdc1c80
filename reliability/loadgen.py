"""A bounded HTTP load generator: N workers keep requests in flight for a while, then stop.

Asyncio streams, one keep-alive connection per worker (see :class:`_Connection` for why not httpx).

Used by the speed benchmark (throughput at concurrency 1/8/32) and the reliability checks (60 s at
concurrency 32, hot swap under load). It always stops by itself: after ``duration_s`` seconds or
``requests`` requests, whichever is given. Every response is checked: a non-2xx status, a body that
is not JSON, or a transport error counts as a failure, with the reason tallied.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

from common.stats import percentile


@dataclass
class LoadResult:
    """What one load run saw; ``latencies_ms`` holds successful requests only."""

    concurrency: int
    sent: int = 0
    ok: int = 0
    failed: int = 0
    status_counts: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)    # seconds since start, per successful request
    duration_s: float = 0.0
    samples: list[Any] = field(default_factory=list)          # values returned by ``inspect`` (if given)

    @property
    def qps(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def summary(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "sent": self.sent, "ok": self.ok, "failed": self.failed,
                "qps": round(self.qps, 1), "p50_ms": round(self.percentile(50), 2),
                "p95_ms": round(self.percentile(95), 2), "p99_ms": round(self.percentile(99), 2),
                "duration_s": round(self.duration_s, 2), "status_counts": dict(self.status_counts),
                "errors": dict(self.errors)}


class _Connection:
    """One keep-alive HTTP/1.1 connection on raw asyncio streams.

    Why not httpx: on 2 cores the load generator shares the CPU with the server it measures, and
    httpx's per-request cost grows with concurrency (measured against `dpr serve` at concurrency 32:
    6.6 ms of client CPU per request against 2.8 ms at concurrency 1, more than the server's own
    ~3 ms), so throughput at high concurrency measured the client. This client does one
    ``write`` and a header parse per request (``content-length`` bodies only, which is all uvicorn
    sends for JSON).
    """

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        return await asyncio.wait_for(self._request(head, body), self.timeout_s)

    async def _request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(head + body)
        # A closed connection raises IncompleteReadError here (counted as a failure by the worker).
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length, close = 0, False
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise ValueError("chunked responses are not supported by the load generator")
        payload = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, payload


def _split_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"the load generator speaks plain http://host:port, got {url!r}")
    return parts.hostname, parts.port or 80


async def run_load(url: str, bodies: Sequence[dict[str, Any]], concurrency: int, *,
                   duration_s: float | None = None, requests: int | None = None, path: str = "/search",
                   timeout_s: float = 30.0, headers: dict[str, str] | None = None,
                   inspect: Callable[[dict[str, Any]], Any] | None = None, method: str = "POST") -> LoadResult:
    """POST ``bodies`` (cycled) to ``url + path`` from ``concurrency`` workers until time or count runs out.

    ``method="GET"``: each body is sent as the query string instead (``path?query=...&limit=10``),
    for servers whose search is a GET (txtai's API, in ``dpr bench speed --peers``).

    Each worker holds one keep-alive connection (reopened after a transport error, which counts as a
    failure). ``inspect``, if given, is called on each successful JSON response and its non-None
    results are kept in ``samples`` (with the time they arrived), e.g. to see answers switch after an
    index hot swap.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if (duration_s is None) == (requests is None):
        raise ValueError("give exactly one of duration_s or requests")
    if not bodies:
        raise ValueError("no request bodies")
    host, port = _split_url(url)
    target = url.rstrip("/") + path
    prefix = urlsplit(target).path or "/"
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    if method == "GET":
        encoded = [b""] * len(bodies)
        heads = [f"GET {prefix}?{urlencode(b)} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
                 for b in bodies]
    elif method == "POST":
        encoded = [orjson.dumps(b) for b in bodies]
        heads = [(f"POST {prefix} HTTP/1.1\r\nHost: {host}:{port}\r\ncontent-type: application/json\r\n"
                  f"{extra}content-length: {len(b)}\r\n\r\n").encode() for b in encoded]
    else:
        raise ValueError(f"method must be GET or POST, got {method!r}")
    result = LoadResult(concurrency=concurrency)
    counter = itertools.count()
    start = time.perf_counter()
    deadline = start + duration_s if duration_s is not None else None

    def more() -> int | None:
        i = next(counter)
        if requests is not None and i >= requests:
            return None
        if deadline is not None and time.perf_counter() >= deadline:
            return None
        return i

    async def worker() -> None:
        conn = _Connection(host, port, timeout_s)
        try:
            while (i := more()) is not None:
                result.sent += 1
                j = i % len(bodies)
                t0 = time.perf_counter()
                try:
                    status, raw = await conn.request(heads[j], encoded[j])
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                        ValueError, IndexError) as e:
                    result.failed += 1
                    result.errors[type(e).__name__] += 1
                    await conn.close()
                    continue
                elapsed = time.perf_counter()
                result.status_counts[status] += 1
                try:
                    payload = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    result.failed += 1
                    result.errors["non-JSON body"] += 1
                    continue
                if not 200 <= status < 300:
                    result.failed += 1
                    result.errors[f"HTTP {status}"] += 1
                    continue
                result.ok += 1
                result.latencies_ms.append(1000 * (elapsed - t0))
                result.finished_at.append(elapsed - start)
                if inspect is not None and (seen := inspect(payload)) is not None:
                    result.samples.append((round(elapsed - start, 3), seen))
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.duration_s = time.perf_counter() - start
    return result


def load(url: str, bodies: Sequence[dict[str, Any]], concurrency: int, **kwargs: Any) -> LoadResult:
    """Synchronous wrapper around :func:`run_load` (for scripts; not from inside a running event loop)."""
    return asyncio.run(run_load(url, bodies, concurrency, **kwargs))
