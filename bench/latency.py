"""``dpr bench latency --index DIR``: one question at a time against a real `dpr serve` of an index.

Starts ``dpr serve`` (what a user runs, query cache off) on a free port, sends ``--warmup``
untimed questions, then ``--n`` validation questions sequentially over one keep-alive connection, and
prints the client-side p50/p95/p99, the server's own split (queue / encode / search / fetch, from
``Server-Timing``) and, for nq_oracle questions, how often the gold passage came first. ``dpr bench
speed`` runs the same measurement on its own indexes.
"""
from __future__ import annotations

import argparse
import http.client
import json
from pathlib import Path

from common.choices import SEARCH_MODES

DEMO = Path(__file__).resolve().parents[1] / "data" / "nq_oracle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="index directory to serve")
    parser.add_argument("--val", default=str(DEMO / "nq-oracle-val.json"), help="questions (nq_oracle JSON)")
    parser.add_argument("--n", type=int, default=200, help="questions timed (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed questions first (default %(default)s)")
    parser.add_argument("--k", type=int, default=10, help="hits per query (default %(default)s)")
    parser.add_argument("--mode", choices=SEARCH_MODES, default="hybrid",
                        help="search mode asked for (default %(default)s, the server's default)")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `dpr serve` flag (repeatable)")


def gold_at_1(url: str, records: list[dict], k: int, mode: str) -> int:
    """How many questions get their gold passage (same text) at rank 1."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    hits = 0
    try:
        for record in records:
            conn.request("POST", "/search", body=json.dumps({"query": record["question"], "k": k, "mode": mode}),
                         headers={"Content-Type": "application/json"})
            results = json.loads(conn.getresponse().read())["results"]
            hits += bool(results) and results[0]["text"] == record["gold_context"]["text"]
    finally:
        conn.close()
    return hits


def run(args: argparse.Namespace) -> int:
    from bench.serve import sequential_latency, serving

    records = json.loads(Path(args.val).read_text(encoding="utf-8"))
    timed = records[:args.n]
    with serving(args.index, extra=args.serve_arg) as served:
        print(f"serving: {json.dumps(served['index'])}")
        result = sequential_latency(served["port"], [r["question"] for r in timed], k=args.k, warmup=args.warmup,
                                    mode=args.mode)
        golds = [r for r in timed if "gold_context" in r]
        at_1 = gold_at_1(served["url"], golds, args.k, args.mode) if golds else None
    c = result["client_ms"]
    print(f"{result['n']} sequential POST /search (k={args.k}, mode {args.mode}), client-side ms: p50 {c['p50']}  "
          f"p95 {c['p95']}  p99 {c['p99']}  mean {c['mean']}")
    for phase, values in result["server_ms"].items():
        print(f"  server {phase:<7} p50 {values['p50']:>7}  p95 {values['p95']:>7}")
    if at_1 is not None:
        print(f"gold passage at rank 1: {at_1}/{len(golds)} ({100 * at_1 / len(golds):.1f}%)")
    return 0
