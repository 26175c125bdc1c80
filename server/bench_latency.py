"""Latency of `dpr serve`: start it, send real nq_oracle val questions one at a time, report percentiles.

    python -m server.bench_latency --index /tmp/h3idx [--n 200] [--k 10] [--port 8765]

Starts ``dpr serve`` as a subprocess (what a user runs), waits for /readyz, sends 5 warm-up
questions from the training file, then ``n`` validation questions sequentially over one keep-alive
connection. Latency is measured by the client (request sent to response parsed). Prints p50/p95/p99
and how many questions had their gold passage (same text) at rank 1.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEMO = Path(__file__).resolve().parents[1] / "data" / "nq_oracle"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def start_server(index: str, port: int, extra: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """``dpr serve`` as a subprocess; ``env`` adds variables (e.g. ``DPR_ENCODE_CACHE_SIZE``)."""
    cmd = [sys.executable, "-m", "driver.main", "serve", "--index", index, "--port", str(port), "--no-access-log",
           *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           **(env or {})}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen, port: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dpr serve exited with {proc.returncode}:\n{proc.stderr.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            response = conn.getresponse()
            body = response.read()
            if response.status == 200:
                return json.loads(body)
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"dpr serve not ready after {timeout:.0f}s")


def post(conn: http.client.HTTPConnection, query: str, k: int) -> tuple[float, dict[str, Any]]:
    body = json.dumps({"query": query, "k": k})
    start = time.perf_counter()
    conn.request("POST", "/search", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read())
    elapsed = (time.perf_counter() - start) * 1000
    if response.status != 200:
        raise RuntimeError(f"POST /search {query!r}: HTTP {response.status}: {data}")
    return elapsed, data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True)
    parser.add_argument("--val", default=str(DEMO / "nq-oracle-val.json"))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--startup-timeout", type=float, default=300)
    parser.add_argument("serve_args", nargs="*", help="extra `dpr serve` flags, after --")
    args = parser.parse_args()

    records = json.loads(Path(args.val).read_text())[:args.n]
    warmup = [r["question"] for r in json.loads((DEMO / "nq-oracle-train.json").read_text())[:5]]
    proc = start_server(args.index, args.port, args.serve_args)
    try:
        ready = wait_ready(proc, args.port, args.startup_timeout)
        print(f"serving: {json.dumps(ready['index'])}")
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
        for q in warmup:
            post(conn, q, args.k)
        client_ms, server_ms, gold_at_1 = [], [], 0
        for record in records:
            elapsed, data = post(conn, record["question"], args.k)
            client_ms.append(elapsed)
            server_ms.append(data["took_ms"])
            gold_at_1 += bool(data["results"]) and data["results"][0]["text"] == record["gold_context"]["text"]
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    n = len(client_ms)
    print(f"{n} sequential POST /search (k={args.k}), client-side latency ms: "
          f"p50 {percentile(client_ms, 50):.2f}  p95 {percentile(client_ms, 95):.2f}  "
          f"p99 {percentile(client_ms, 99):.2f}  mean {statistics.fmean(client_ms):.2f}  max {max(client_ms):.2f}")
    print(f"server-side took_ms: p50 {percentile(server_ms, 50):.2f}  p95 {percentile(server_ms, 95):.2f}")
    print(f"gold passage at rank 1: {gold_at_1}/{n} ({100 * gold_at_1 / n:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
