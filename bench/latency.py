"""``dpr bench latency --index DIR``: one question at a time against a real `dpr serve` of an index.

Starts ``dpr serve`` (what a user runs, query cache off) on a free port, sends ``--warmup``
untimed questions, then ``--n`` validation questions sequentially over one keep-alive connection, and
prints the client-side p50/p95/p99, the server's own split (queue / encode / search / fetch, from
``Server-Timing``) and, for nq_oracle questions, how often the gold passage came first. ``dpr bench
speed`` runs the same measurement on its own indexes.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

from common.choices import SEARCH_MODES

DEMO = Path(__file__).resolve().parents[1] / "data" / "nq_oracle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--index", help="index directory to serve (a `dpr serve` started for the run)")
    where.add_argument("--url", help="measure a server already running at this URL instead (e.g. another "
                       "version of dpr, or a deployment); --serve-arg does not apply")
    parser.add_argument("--val", default=str(DEMO / "nq-oracle-val.json"), help="questions (nq_oracle JSON)")
    parser.add_argument("--n", type=int, default=200, help="questions timed (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed questions first (default %(default)s)")
    parser.add_argument("--k", type=int, default=10, help="hits per query (default %(default)s)")
    parser.add_argument("--mode", choices=SEARCH_MODES, default="hybrid",
                        help="search mode asked for (default %(default)s, the server's default)")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `dpr serve` flag (repeatable)")
    parser.add_argument("--json", type=Path, help="also record the run in this JSON file, under --label (other "
                        "labels kept): what docs/results/latency.json holds for the README's latency split")
    parser.add_argument("--label", help="name of this run in --json (default: the --serve-arg flags)")


def gold_at_1(url: str, records: list[dict], k: int, mode: str) -> int:
    """How many questions get their gold passage (same text) at rank 1."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=60)
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
    from bench.speed import machine_info

    machine = machine_info()          # before the server starts: its load average is the machine's own
    records = json.loads(Path(args.val).read_text(encoding="utf-8"))
    timed = records[:args.n]
    golds = [r for r in timed if "gold_context" in r]
    with contextlib.ExitStack() as stack:
        if args.url:
            url = args.url.rstrip("/")
            parts = urlsplit(url)
            host, port = parts.hostname or "127.0.0.1", parts.port or 80
        else:
            served = stack.enter_context(serving(args.index, extra=args.serve_arg))
            print(f"serving: {json.dumps(served['index'])}")
            url, host, port = served["url"], "127.0.0.1", served["port"]
        result = sequential_latency(port, [r["question"] for r in timed], k=args.k, warmup=args.warmup,
                                    mode=args.mode, host=host)
        at_1 = gold_at_1(url, golds, args.k, args.mode) if golds else None
    c = result["client_ms"]
    print(f"{result['n']} sequential POST /search (k={args.k}, mode {args.mode}), client-side ms: p50 {c['p50']}  "
          f"p95 {c['p95']}  p99 {c['p99']}  mean {c['mean']}")
    for phase, values in result["server_ms"].items():
        print(f"  server {phase:<7} p50 {values['p50']:>7}  p95 {values['p95']:>7}")
    if at_1 is not None:
        print(f"gold passage at rank 1: {at_1}/{len(golds)} ({100 * at_1 / len(golds):.1f}%)")
    if args.json is not None:
        record(args, result, at_1, len(golds), machine)
    return 0


def record(args: argparse.Namespace, result: dict, at_1: int | None, n_golds: int, machine: dict) -> None:
    """Add this run to ``args.json`` under its label; runs under other labels stay (a before/after table
    is several runs, each its own server)."""
    import shlex
    from datetime import datetime, timezone

    from common.files import write_json

    label = args.label or " ".join(args.serve_arg) or "defaults"
    report = json.loads(args.json.read_text(encoding="utf-8")) if args.json.is_file() else {"runs": []}
    run = {
        "label": label, **result, "serve_args": list(args.serve_arg), "gold_at_1": at_1, "golds": n_golds,
        "index": str(args.index or args.url), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "command": shlex.join(["dpr", "bench", "latency", *(["--url", args.url] if args.url else ["--index", str(args.index)]),
                               "--mode", args.mode, "--n",
                               str(args.n), *[f"--serve-arg={a}" for a in args.serve_arg], "--label", label,
                               "--json", str(args.json)]),
    }
    # A list, so the table keeps the order the runs were made in (before, then after); a label run
    # again replaces its row in place.
    labels = [r["label"] for r in report["runs"]]
    if label in labels:
        report["runs"][labels.index(label)] = run
    else:
        report["runs"].append(run)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, report)
