"""The HTTP half of ``dpr bench speed``: sequential query latency (split by Server-Timing) and throughput.

Each measurement starts ``dpr serve`` as a subprocess (what a user runs) on a free loopback port,
with the query-embedding cache off (``DPR_ENCODE_CACHE_SIZE=0``) so repeated questions measure the
encoder, not the LRU. Queries are real nq_oracle val questions; the body asks for ``mode: dense``.
"""
from __future__ import annotations

import http.client
import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common.stats import latency_summary
from reliability.serve_proc import rss_bytes, start_server
from server.timing import parse_server_timing

logger = logging.getLogger(__name__)

PHASES = ("queue", "encode", "search", "fetch", "total")


def _rss_mb(pid: int) -> float | None:
    rss = rss_bytes(pid)
    return None if rss is None else round(rss / 2**20, 1)


@contextmanager
def serving(index_dir: str | Path, extra: Sequence[str] = (), env: dict[str, str] | None = None,
            startup_timeout: float = 600) -> Iterator[dict[str, Any]]:
    """A running ``dpr serve`` of ``index_dir`` with the query cache off: yields ``{"url", "port", "pid",
    "index", "rss_mb"}``."""
    served = start_server(index_dir, env={"DPR_ENCODE_CACHE_SIZE": "0", **(env or {})}, extra_args=tuple(extra),
                          wait_s=startup_timeout)
    try:
        yield {"url": served.url, "port": served.port, "pid": served.proc.pid, "index": served.ready["index"],
               "rss_mb": _rss_mb(served.proc.pid)}
    finally:
        served.stop(timeout_s=30)


def sequential_latency(port: int, queries: Sequence[str], k: int = 10, warmup: int = 5,
                       mode: str = "dense", host: str = "127.0.0.1") -> dict[str, Any]:
    """One query at a time over one keep-alive connection: client-side p50/p95/p99, and the server's split."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    client_ms: list[float] = []
    phases: dict[str, list[float]] = {p: [] for p in PHASES}
    try:
        for i, query in enumerate([*queries[:warmup], *queries]):
            body = json.dumps({"query": query, "k": k, "mode": mode})
            start = time.perf_counter()
            conn.request("POST", "/search", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            elapsed = 1000 * (time.perf_counter() - start)
            if response.status != 200:
                raise RuntimeError(f"POST /search {query!r}: HTTP {response.status}: {payload[:300]!r}")
            if i < warmup:
                continue
            client_ms.append(elapsed)
            timing = parse_server_timing(response.getheader("Server-Timing") or "")
            for p in PHASES:
                if f"{p}_ms" in timing:
                    phases[p].append(timing[f"{p}_ms"])
    finally:
        conn.close()
    out: dict[str, Any] = {"n": len(client_ms), "k": k, "mode": mode, "client_ms": latency_summary(client_ms)}
    out["server_ms"] = {p: latency_summary(v) for p, v in phases.items() if v}
    return out


def throughput(url: str, queries: Sequence[str], concurrencies: Sequence[int], duration_s: float,
               k: int = 10, mode: str = "dense", warmup_requests: int = 8) -> list[dict[str, Any]]:
    """``reliability.loadgen`` at each concurrency for ``duration_s``: q/s, latency percentiles, failures."""
    from reliability.loadgen import load

    bodies = [{"query": q, "k": k, "mode": mode} for q in queries]
    load(url, bodies[:warmup_requests], max(concurrencies), requests=warmup_requests)
    rows = []
    for c in concurrencies:
        summary = load(url, bodies, c, duration_s=duration_s).summary()
        logger.info("concurrency %d: %.1f q/s, p50 %.1f ms, %d failed", c, summary["qps"], summary["p50_ms"],
                    summary["failed"])
        rows.append(summary)
    return rows
