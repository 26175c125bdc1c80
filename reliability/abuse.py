"""Abusive clients against a running `dpr serve`, over raw sockets: what a hostile or broken client
can do to the server's connections and memory without sending a single well-formed request.

- :func:`stalled_clients`: slowloris. Connections that send nothing, half a request line, half the
  headers or half a body, held open; the server must drop every one (408) within its timeouts while
  it keeps answering a well-behaved client.
- :func:`junk_methods`: requests with made-up, kilobyte-long method names and paths; ``/metrics``
  must not grow with them (every label is from a fixed set).
"""
from __future__ import annotations

import socket
import threading
import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit

STALL_PREFIXES = {
    "nothing": b"",
    "partial request line": b"POST /sea",
    "partial headers": b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
    "partial body": b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n"
                    b"\r\n{\"query\": \"who",
}


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def _status_of(raw: bytes) -> int | None:
    try:
        return int(raw.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def _metrics_bytes(url: str) -> int:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return len(r.read())


def stalled_clients(url: str, connections: int = 50, hold_s: float = 30.0, probe_every_s: float = 0.5,
                    query: str = "who wrote the declaration of independence") -> dict[str, Any]:
    """Open ``connections`` stalled connections (the four kinds in turn) and wait up to ``hold_s`` for
    the server to drop each; a prober searches every ``probe_every_s`` meanwhile."""
    host, port = _address(url)
    kinds = list(STALL_PREFIXES)
    dropped: dict[int, tuple[float, int | None]] = {}
    start = time.monotonic()

    def hold(i: int) -> None:
        kind = kinds[i % len(kinds)]
        try:
            s = socket.create_connection((host, port), timeout=hold_s + 5)
        except OSError:
            dropped[i] = (time.monotonic() - start, None)
            return
        with s:
            try:
                s.sendall(STALL_PREFIXES[kind])
                data = b""
                while chunk := s.recv(65536):          # the server's answer, then its close
                    data += chunk
                dropped[i] = (time.monotonic() - start, _status_of(data))
            except OSError:
                dropped[i] = (time.monotonic() - start, None)

    probes = {"sent": 0, "ok": 0, "5xx": 0, "failed": 0}
    stop = threading.Event()

    def probe() -> None:
        import json

        while not stop.wait(probe_every_s):
            probes["sent"] += 1
            body = json.dumps({"query": query, "k": 5}).encode()
            request = urllib.request.Request(url + "/search", data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    probes["ok" if r.status == 200 else "failed"] += 1
            except urllib.error.HTTPError as e:
                probes["5xx" if e.code >= 500 else "failed"] += 1
            except OSError:
                probes["failed"] += 1

    threads = [threading.Thread(target=hold, args=(i,), daemon=True) for i in range(connections)]
    prober = threading.Thread(target=probe, daemon=True)
    for t in threads:
        t.start()
    prober.start()
    for t in threads:
        t.join(timeout=max(0.0, hold_s - (time.monotonic() - start)))
    stop.set()
    prober.join(timeout=15)
    kept = connections - len(dropped)
    times = sorted(t for t, _ in dropped.values())
    statuses: dict[str, int] = {}
    for _, status in dropped.values():
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"connections": connections, "hold_s": hold_s, "dropped": len(dropped), "kept_open": kept,
            "drop_s_max": round(times[-1], 2) if times else None, "drop_s_min": round(times[0], 2) if times else None,
            "answers": statuses, "probes": probes,
            "ok": kept == 0 and probes["5xx"] == 0 and probes["failed"] == 0 and probes["ok"] > 0}


def junk_methods(url: str, requests: int = 40, method_bytes: int = 8000) -> dict[str, Any]:
    """Send requests with made-up methods (and paths) of ``method_bytes`` bytes; how much ``/metrics`` grew."""
    host, port = _address(url)
    statuses: dict[str, int] = {}

    def send(i: int, count: bool = True) -> None:
        method = f"J{i}".encode() + b"M" * method_bytes
        path = b"/" + f"junk{i}-".encode() + b"p" * 1000
        for line in (method + b" /search HTTP/1.1\r\n", b"GET " + path + b" HTTP/1.1\r\n"):
            with socket.create_connection((host, port), timeout=10) as s:
                s.sendall(line + b"Host: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                data = b""
                try:
                    while chunk := s.recv(65536):
                        data += chunk
                except OSError:
                    pass
            if count:
                key = str(_status_of(data))
                statuses[key] = statuses.get(key, 0) + 1

    # One of each first: the series for "unmatched route" and "rejected request" exist from then on,
    # and what is measured is whether more junk grows /metrics further.
    send(-1, count=False)
    _metrics_bytes(url)
    before = _metrics_bytes(url)
    for i in range(requests):
        send(i)
    after = _metrics_bytes(url)
    server_errors = sum(n for status, n in statuses.items() if status.isdigit() and int(status) >= 500)
    return {"requests": 2 * requests, "method_bytes": method_bytes, "metrics_bytes_before": before,
            "metrics_bytes_after": after, "growth_bytes": after - before, "answers": statuses,
            "server_errors": server_errors, "ok": after - before < 2048 and server_errors == 0}
