"""The ``Server-Timing`` header: where a search's time went (queue / encode / search / fetch / total).

Written by ``/search``; read back by ``dpr bench speed`` to split client latency into its parts.
"""
from __future__ import annotations


def server_timing(timings: dict[str, float]) -> str:
    """A ``Server-Timing`` header value: ``encode;dur=1.23, search;dur=0.10, ...`` (ms; ``batch`` is a count)."""
    parts = []
    for name in ("queue", "encode", "search", "fetch", "total"):
        value = timings.get(f"{name}_ms")
        if value is not None:
            parts.append(f"{name};dur={value:.3f}")
    if "batch" in timings:
        parts.append(f'batch;desc="{int(timings["batch"])}"')
    return ", ".join(parts)


def parse_server_timing(header: str) -> dict[str, float]:
    """The inverse of :func:`server_timing`: ``{"encode_ms": 1.23, ..., "batch": 4.0}``."""
    out: dict[str, float] = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";")
        if rest.startswith("dur="):
            out[f"{name}_ms"] = float(rest[4:])
        elif rest.startswith("desc="):
            out[name] = float(rest[5:].strip('"'))
    return out
