"""A bounded HTTP load generator (asyncio + httpx): N workers keep requests in flight for a while, then stop.

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

import numpy as np


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
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "sent": self.sent, "ok": self.ok, "failed": self.failed,
                "qps": round(self.qps, 1), "p50_ms": round(self.percentile(50), 2),
                "p95_ms": round(self.percentile(95), 2), "p99_ms": round(self.percentile(99), 2),
                "duration_s": round(self.duration_s, 2), "status_counts": dict(self.status_counts),
                "errors": dict(self.errors)}


async def run_load(url: str, bodies: Sequence[dict[str, Any]], concurrency: int, *,
                   duration_s: float | None = None, requests: int | None = None, path: str = "/search",
                   timeout_s: float = 30.0, headers: dict[str, str] | None = None,
                   inspect: Callable[[dict[str, Any]], Any] | None = None) -> LoadResult:
    """POST ``bodies`` (cycled) to ``url + path`` from ``concurrency`` workers until time or count runs out.

    ``inspect``, if given, is called on each successful JSON response and its non-None results are kept
    in ``samples`` (with the time they arrived), e.g. to see answers switch after an index hot swap.
    """
    import httpx

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if (duration_s is None) == (requests is None):
        raise ValueError("give exactly one of duration_s or requests")
    if not bodies:
        raise ValueError("no request bodies")
    result = LoadResult(concurrency=concurrency)
    counter = itertools.count()
    target = url.rstrip("/") + path
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    start = time.perf_counter()
    deadline = start + duration_s if duration_s is not None else None

    def more() -> int | None:
        i = next(counter)
        if requests is not None and i >= requests:
            return None
        if deadline is not None and time.perf_counter() >= deadline:
            return None
        return i

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, headers=headers) as client:
        async def worker() -> None:
            while (i := more()) is not None:
                result.sent += 1
                t0 = time.perf_counter()
                try:
                    response = await client.post(target, json=bodies[i % len(bodies)])
                    payload = response.json()
                except httpx.HTTPError as e:
                    result.failed += 1
                    result.errors[type(e).__name__] += 1
                    continue
                except ValueError:
                    result.failed += 1
                    result.errors["non-JSON body"] += 1
                    continue
                elapsed = time.perf_counter()
                result.status_counts[response.status_code] += 1
                if not response.is_success:
                    result.failed += 1
                    result.errors[f"HTTP {response.status_code}"] += 1
                    continue
                result.ok += 1
                result.latencies_ms.append(1000 * (elapsed - t0))
                result.finished_at.append(elapsed - start)
                if inspect is not None and (seen := inspect(payload)) is not None:
                    result.samples.append((round(elapsed - start, 3), seen))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.duration_s = time.perf_counter() - start
    return result


def load(url: str, bodies: Sequence[dict[str, Any]], concurrency: int, **kwargs: Any) -> LoadResult:
    """Synchronous wrapper around :func:`run_load` (for scripts; not from inside a running event loop)."""
    return asyncio.run(run_load(url, bodies, concurrency, **kwargs))
