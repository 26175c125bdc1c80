"""`dpr bench reliability` (`make reliability`): the long reliability checks, one figure each.

- fuzz: requests generated from the OpenAPI document plus hand-written bad input -> tried / 5xx seen;
- load: `dpr serve` on the 2,500-passage index, concurrency 32 for 60 s -> requests sent / failed,
  p50/p99, server RSS growth from the first to the last 10 s (a leak check: no swap in this run);
- swap: the same load with index B hot-swapped in through ``POST /admin/reload`` halfway ->
  requests sent / failed, and whether the answers switched (RSS reported: it holds a new index);
- index-kill: kill -9 `dpr index` mid-embedding -> crashes injected / data lost (served index hashes);
- train-kill: kill -9 `dpr train` mid-epoch, then `--resume` -> crashes injected / data lost (metrics);
- corrupt: `dpr serve` on damaged index files -> corrupt files tried / served anyway;
- stalled: 50 slowloris connections (nothing, half a request line, half the headers, half a body) held
  for 30 s while a client searches -> connections dropped by the server, and when;
- metrics: 80 requests with made-up 8 KB methods and 1 KB paths -> growth of /metrics in bytes;
- rebuild: `dpr index --out` the served directory while searching, 15 s idle, reload -> answers that
  differ from the old build's before the reload, or are not the new build's after it;
- tampered: stores and manifests tampered with (schema, replaced/injected rows, nested, wrong types,
  a BM25 path out of the build) -> served anyway by `dpr serve`, accepted by `/admin/reload`.

Index A = nq_oracle train + val gold passages + 1000 distractors (2,471 unique); index B = the same
without the train passages, so train questions' top hits visibly change when B is swapped in.
"""
from __future__ import annotations

import json
import logging
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from reliability.serve_proc import dpr_command, rss_bytes, run_to_exit, start_server

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
NQ = REPO / "data" / "nq_oracle"
DISTRACTORS = "wiki-psgs_w100-sample1000.jsonl"
CHECKS = ("fuzz", "load", "swap", "index-kill", "train-kill", "corrupt", "stalled", "metrics", "rebuild", "tampered")


@dataclass(frozen=True)
class ReliabilityOptions:
    work: str = "runs/reliability"
    model: str = "minilm"
    distractors: str = str(REPO.parent / "shared" / "data" / "distractors" / DISTRACTORS)
    duration_s: float = 60.0
    # Load before the measured window, so RSS growth is measured after the first-request allocations
    # (thread pools, tokenizer and allocator arenas), i.e. it shows leaks, not start-up.
    warmup_s: float = 10.0
    concurrency: int = 32
    swap_at_s: float = 30.0
    fuzz_examples: int = 200
    stalled_connections: int = 50
    stalled_hold_s: float = 30.0
    junk_requests: int = 40
    rebuild_idle_s: float = 15.0
    checks: tuple[str, ...] = CHECKS


@dataclass
class Report:
    options: dict[str, Any]
    started: str
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.get("ok", False) for r in self.results.values())


def _kb_a(o: ReliabilityOptions) -> list[str]:
    return [str(NQ / "nq-oracle-train.json"), str(NQ / "nq-oracle-val.json"), o.distractors]


def _kb_b(o: ReliabilityOptions) -> list[str]:
    return [str(NQ / "nq-oracle-val.json"), o.distractors]


def _build(o: ReliabilityOptions, kb: list[str], out: Path) -> None:
    code, text = run_to_exit(dpr_command("index", "--model", o.model, *[a for p in kb for a in ("--kb", p)],
                                         "--out", str(out), "--no-progress"), timeout_s=3600)
    if code != 0:
        raise RuntimeError(f"building {out} failed:\n{text[-2000:]}")


def prepare_indexes(o: ReliabilityOptions) -> tuple[Path, Path]:
    """Index A and B under ``work`` (built once, then reused). B starts as a copy of A so its build
    reuses A's embeddings and takes seconds."""
    from indexer.builds import is_index_root

    work = Path(o.work)
    a, b = work / "index-a", work / "index-b"
    if not is_index_root(a):
        logger.info("building %s (the 2,500-passage index; minutes on a CPU)", a)
        _build(o, _kb_a(o), a)
    if not is_index_root(b):
        shutil.rmtree(b, ignore_errors=True)
        shutil.copytree(a, b, symlinks=True)
        _build(o, _kb_b(o), b)
    return a, b


def check_fuzz(o: ReliabilityOptions, index: Path) -> dict[str, Any]:
    from fastapi.testclient import TestClient
    from schemathesis.python.asgi import shutdown_lifespans

    from reliability.fuzz import fuzz_openapi, run_hand_cases
    from server.app import create_app
    from server.settings import Settings

    token = secrets.token_urlsafe(16)
    settings = Settings(index_dir=index, admin_token=token, torch_threads=1)
    try:
        result = fuzz_openapi(create_app(settings), examples=o.fuzz_examples, admin_token=token)
    finally:
        shutdown_lifespans()
    with TestClient(create_app(settings)) as client:
        result.merge(run_hand_cases(client, settings.max_body_bytes))
    return {**result.summary(), "ok": result.server_errors == 0 and not result.bad}


def _train_questions() -> tuple[list[dict[str, Any]], set[str]]:
    from common.data import load_corpus, load_examples

    examples = load_examples(NQ / "nq-oracle-train.json")
    only_a = {p.pid for p in load_corpus(NQ / "nq-oracle-train.json")} - \
             {p.pid for p in load_corpus(NQ / "nq-oracle-val.json")}
    return [{"query": ex.question, "k": 10} for ex in examples], only_a


def check_load_and_swap(o: ReliabilityOptions, index_a: Path, index_b: Path) -> dict[str, Any]:
    """Load `dpr serve` for ``duration_s`` and hot-swap A -> B at ``swap_at_s`` (0: no swap)."""
    import httpx

    from reliability.loadgen import load

    bodies, only_a = _train_questions()
    token = secrets.token_urlsafe(24)
    served = start_server(index_a, Path(o.work) / "load-serve.log", env={"DPR_ADMIN_TOKEN": token})
    rss: list[tuple[float, int]] = []
    reload: dict[str, Any] = {}
    stop = threading.Event()
    t_start = time.perf_counter()

    def sample() -> None:
        while not stop.wait(0.5):
            if (value := rss_bytes(served.proc.pid)) is not None:
                rss.append((time.perf_counter() - t_start, value))

    def swap() -> None:
        if stop.wait(o.swap_at_s):
            return
        reload["start_s"] = time.perf_counter() - t_start
        r = httpx.post(served.url + "/admin/reload", json={"index_dir": str(index_b.resolve())},
                       headers={"Authorization": f"Bearer {token}"}, timeout=300)
        reload.update(status=r.status_code, done_s=time.perf_counter() - t_start, body=r.json())

    threads = [threading.Thread(target=sample, daemon=True)]
    if o.swap_at_s > 0:
        threads.append(threading.Thread(target=swap, daemon=True))
    if o.warmup_s > 0:
        warm = load(served.url, bodies, o.concurrency, duration_s=o.warmup_s)
        if warm.failed:
            logger.warning("warm-up: %d of %d requests failed: %s", warm.failed, warm.sent, dict(warm.errors))
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    try:
        result = load(served.url, bodies, o.concurrency, duration_s=o.duration_s,
                      inspect=lambda p: p["results"][0]["id"] if p.get("results") else None)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=310)
        code = served.stop()
    # loadgen's clock starts a moment after ours; the offset is far below the 10 s windows used here.
    first = [v for t, v in rss if t <= 10.0]
    last = [v for t, v in rss if t >= rss[-1][0] - 10.0] if rss else []
    growth = (np.mean(last) / np.mean(first) - 1.0) if first and last else float("nan")
    mb = 2**20
    out = {**result.summary(), "server_exit": code, "warmup_s": o.warmup_s,
           "rss_mb_every_5s": [round(v / mb, 1) for t, v in rss[::10]],
           "rss_first10s_mb": round(np.mean(first) / mb, 1) if first else None,
           "rss_last10s_mb": round(np.mean(last) / mb, 1) if last else None, "rss_growth_pct": round(100 * growth, 2)}
    out["load_ok"] = ok = bool(result.failed == 0 and result.sent > 0 and growth < 0.10)
    # A swap loads a second index while the first drains: RSS is reported then, not judged.
    if o.swap_at_s > 0:
        before = [pid in only_a for t, pid in result.samples if t < reload.get("start_s", 0)]
        after = [pid in only_a for t, pid in result.samples if t > reload.get("done_s", float("inf")) + 1.0]
        out["reload"] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in reload.items() if k != "body"}
        out["top_hit_in_old_only_passages_before"] = round(float(np.mean(before)), 3) if before else None
        out["top_hit_in_old_only_passages_after"] = round(float(np.mean(after)), 3) if after else None
        out["answers_before_after"] = [len(before), len(after)]
        switched = bool(before and after and np.mean(before) > 0.5 and np.mean(after) == 0.0)
        out["answers_switched"] = switched
        out["swap_ok"] = ok = bool(result.failed == 0 and result.sent > 0 and reload.get("status") == 200
                                   and switched)
    return {**out, "ok": ok}


def check_index_kill(o: ReliabilityOptions, index_b: Path) -> dict[str, Any]:
    from reliability.faults import CHUNK_WRITTEN, kill_indexer_mid_build

    served = Path(o.work) / "kill-served"
    shutil.rmtree(served, ignore_errors=True)
    shutil.copytree(index_b, served, symlinks=True)
    # A's KB on top of B: the 500 train passages need embedding, so the build is killed mid-embedding.
    # Small chunks, killed once one is on disk: the re-run should resume from it, not start over.
    return kill_indexer_mid_build(served, o.model, _kb_a(o), extra_args=("--chunk-size", "128"),
                                  kill_on=CHUNK_WRITTEN)


def check_train_kill(o: ReliabilityOptions) -> dict[str, Any]:
    from reliability.faults import kill_trainer_mid_epoch

    work = Path(o.work) / "train-kill"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    train, val = work / "train.json", work / "val.json"
    train.write_text(json.dumps(json.loads((NQ / "nq-oracle-train.json").read_text())[:160]))
    val.write_text(json.dumps(json.loads((NQ / "nq-oracle-val.json").read_text())[:40]))
    return kill_trainer_mid_epoch(work, train, val, epochs=2, batch_size=8, checkpoint_every=3)


def check_corrupt(o: ReliabilityOptions, index_a: Path) -> dict[str, Any]:
    from reliability.faults import corrupt_and_serve

    work = Path(o.work) / "corrupt"
    work.mkdir(parents=True, exist_ok=True)
    return corrupt_and_serve(index_a, work)


def _with_server(index: Path, log: Path, check) -> dict[str, Any]:
    """Run ``check(url)`` against a `dpr serve` of ``index``; adds its RSS and whether it survived."""
    served = start_server(index, log)
    try:
        result = check(served.url)
        rss = rss_bytes(served.proc.pid)
        alive = served.proc.poll() is None
    finally:
        code = served.stop()
    return {**result, "server_rss_mb": round(rss / 2**20, 1) if rss else None, "server_crashed": not alive,
            "server_exit": code, "ok": bool(result.get("ok")) and alive}


def check_stalled(o: ReliabilityOptions, index_a: Path) -> dict[str, Any]:
    from reliability.abuse import stalled_clients

    return _with_server(index_a, Path(o.work) / "stalled-serve.log",
                        lambda url: stalled_clients(url, o.stalled_connections, o.stalled_hold_s))


def check_metrics(o: ReliabilityOptions, index_a: Path) -> dict[str, Any]:
    from reliability.abuse import junk_methods

    return _with_server(index_a, Path(o.work) / "metrics-serve.log", lambda url: junk_methods(url, o.junk_requests))


def check_rebuild(o: ReliabilityOptions, index_a: Path) -> dict[str, Any]:
    from reliability.faults import rebuild_while_serving

    bodies, _ = _train_questions()
    queries = [b["query"] for b in bodies[:20]]
    return rebuild_while_serving(index_a, _kb_b(o), o.model, Path(o.work), queries, idle_s=o.rebuild_idle_s)


def check_tampered(o: ReliabilityOptions, index_a: Path) -> dict[str, Any]:
    from reliability.faults import tampered_builds

    work = Path(o.work) / "tampered"
    work.mkdir(parents=True, exist_ok=True)
    return tampered_builds(index_a, work)


def summary_row(name: str, r: dict[str, Any]) -> dict[str, Any]:
    """The same four figures for every check: inputs tried, 5xx answers, server crashes, server RSS."""
    tried = {"fuzz": r.get("tried"), "load": r.get("sent"), "swap": r.get("sent"), "index-kill": r.get("crashes"),
             "train-kill": r.get("crashes"), "corrupt": r.get("crashes"), "stalled": r.get("connections"),
             "metrics": r.get("requests"), "rebuild": r.get("answers"), "tampered": r.get("tried")}.get(name)
    if name in ("load", "swap"):
        five = sum(n for s, n in (r.get("status_counts") or {}).items() if str(s).isdigit() and int(s) >= 500)
    elif name == "stalled":
        five = (r.get("probes") or {}).get("5xx")
    else:
        five = r.get("server_errors", 0 if name in ("index-kill", "train-kill", "corrupt") else None)
    crashed = r.get("server_crashed")
    if crashed is None and "server_exit" in r:
        crashed = r["server_exit"] not in (0, -15, None)
    rss = r.get("server_rss_mb") or r.get("rss_last10s_mb")
    return {"check": name, "tried": tried, "5xx": five, "server_crashes": int(bool(crashed)) if crashed is not None
            else 0, "rss_mb": rss, "ok": bool(r.get("ok"))}


def run_reliability(o: ReliabilityOptions) -> Report:
    unknown = set(o.checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown check(s) {sorted(unknown)}; choose from {', '.join(CHECKS)}")
    Path(o.work).mkdir(parents=True, exist_ok=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)     # one INFO line per request otherwise
    report = Report(options=asdict(o), started=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    needs_index = set(o.checks) - {"train-kill"}
    index_a, index_b = prepare_indexes(o) if needs_index else (Path(), Path())
    steps = {"fuzz": lambda: check_fuzz(o, index_a),
             "load": lambda: check_load_and_swap(replace(o, swap_at_s=0.0), index_a, index_b),
             "swap": lambda: check_load_and_swap(o, index_a, index_b),
             "index-kill": lambda: check_index_kill(o, index_b), "train-kill": lambda: check_train_kill(o),
             "corrupt": lambda: check_corrupt(o, index_a), "stalled": lambda: check_stalled(o, index_a),
             "metrics": lambda: check_metrics(o, index_a), "rebuild": lambda: check_rebuild(o, index_a),
             "tampered": lambda: check_tampered(o, index_a)}
    for name in o.checks:
        logger.info("reliability check: %s", name)
        t0 = time.perf_counter()
        try:
            report.results[name] = steps[name]()
        except Exception as e:          # one broken check must not hide the others' figures
            logger.exception("check %s failed", name)
            report.results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        report.results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        report.results[name]["summary"] = summary_row(name, report.results[name])
        Path(o.work, "reliability.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    Path(o.work, "reliability.md").write_text(summary_table(report))
    return report


def headline(name: str, r: dict[str, Any]) -> str:
    """The one figure per check the issue asks for."""
    if "error" in r and len(r) <= 3:
        return f"{name:<11} ERROR: {r['error'][:300]}"
    status = "ok  " if r.get("ok") else "FAIL"
    if name == "fuzz":
        return (f"{name:<11} {status} bad inputs tried / 5xx seen: {r['tried']} / {r['server_errors']} "
                f"(non-JSON errors {r['non_json_errors']}, contract breaks {len(r['bad'])})")
    if name in ("load", "swap"):
        line = (f"{name:<11} {status} requests sent / failed: {r['sent']} / {r['failed']} at concurrency "
                f"{r['concurrency']} for {r['duration_s']} s: {r['qps']} q/s, p50 {r['p50_ms']} ms, "
                f"p99 {r['p99_ms']} ms, "
                f"RSS {r['rss_first10s_mb']} -> {r['rss_last10s_mb']} MB ({r['rss_growth_pct']:+}%)")
        if "reload" in r:
            rl = r["reload"]
            line += (f"\n{'':<16} reload at {rl.get('start_s')} s -> HTTP {rl.get('status')} "
                     f"in {round(rl.get('done_s', 0) - rl.get('start_s', 0), 2)} s; top hit in the old index's own "
                     f"passages: {r['top_hit_in_old_only_passages_before']} before, "
                     f"{r['top_hit_in_old_only_passages_after']} after")
        return line
    if name == "index-kill":
        return (f"{name:<11} {status} crashes injected / data lost: {r['crashes']} / {r['data_lost']} "
                f"(served index unchanged: {r['served_unchanged']}, still loads: {r['served_still_loads']}; "
                f"re-run exit {r['rerun_exit']} in {r['rerun_seconds']} s, {r['rerun_resumed_from_chunks']} passages resumed "
                f"from the killed build's chunks: {' '.join(r['rerun_summary'])[:200]})")
    if name == "train-kill":
        return (f"{name:<11} {status} crashes injected / data lost: {r.get('crashes')} / {r.get('data_lost')} "
                f"(killed at {r.get('killed_at')}, max metric diff vs uninterrupted {r.get('max_metric_diff')}, "
                f"max loss diff {r.get('max_loss_diff')}{'; ' + r['error'][:300] if 'error' in r else ''})")
    if name == "corrupt":
        return (f"{name:<11} {status} corrupt files tried / served anyway: {r['crashes']} / {r['served_corrupt']}")
    if name == "stalled":
        return (f"{name:<11} {status} stalled connections / dropped by the server: {r['connections']} / {r['dropped']} "
                f"(in {r['drop_s_min']}-{r['drop_s_max']} s, answers {r['answers']}); searches meanwhile "
                f"{r['probes']['ok']} ok / {r['probes']['5xx']} 5xx / {r['probes']['failed']} failed; "
                f"RSS {r['server_rss_mb']} MB")
    if name == "metrics":
        return (f"{name:<11} {status} junk requests / /metrics growth: {r['requests']} / {r['growth_bytes']} bytes "
                f"({r['metrics_bytes_before']} -> {r['metrics_bytes_after']}; answers {r['answers']})")
    if name == "rebuild":
        return (f"{name:<11} {status} answers checked / wrong: {r['answers']} / {r['wrong_answers']} "
                f"(phases {r['phases']}; reload HTTP {r['reload_status']}, "
                f"{r['answers_switched_after_reload']} of the queries' answers changed after it)")
    if name == "tampered":
        return (f"{name:<11} {status} tampered builds / served anyway / reload accepted: {r['tried']} / "
                f"{r['served_anyway']} / {r['reload_accepted']} (5xx {r['server_errors']})")
    return f"{name:<11} {status} {r}"


def summary_table(report: Report) -> str:
    """Markdown: one row per check with its inputs tried, 5xx, server crashes and RSS."""
    lines = ["| check | inputs tried | 5xx | server crashes | server RSS MB | result | seconds |",
             "|---|---|---|---|---|---|---|"]
    for name, r in report.results.items():
        row = r.get("summary") or summary_row(name, r)
        cells = ["-" if row[k] is None else str(row[k]) for k in ("tried", "5xx", "server_crashes", "rss_mb")]
        lines.append(f"| {name} | {' | '.join(cells)} | {'ok' if row['ok'] else 'FAIL'} | {r.get('seconds', '-')} |")
    return "\n".join(lines) + "\n"


def print_report(report: Report) -> None:
    for name, r in report.results.items():
        print(headline(name, r))
    print()
    print(summary_table(report))
    print(f"overall: {'all checks passed' if report.ok else 'SOME CHECKS FAILED'} "
          f"(details: {Path(report.options['work']) / 'reliability.json'})")


def add_arguments(parser: Any) -> None:
    d = ReliabilityOptions()
    parser.add_argument("--work", default=d.work, help="indexes, logs and reliability.json (default: %(default)s)")
    parser.add_argument("--model", default=d.model, help="model to build the indexes with (default: %(default)s)")
    parser.add_argument("--distractors", default=d.distractors, help="extra passages (JSONL) in index A and B")
    parser.add_argument("--duration", type=float, default=d.duration_s, help="load test seconds (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=d.warmup_s,
                        help="seconds of load before the measured window (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=d.concurrency, help="default: %(default)s")
    parser.add_argument("--swap-at", type=float, default=d.swap_at_s,
                        help="seconds into the swap check's load to hot-swap index B in (default: %(default)s)")
    parser.add_argument("--fuzz-examples", type=int, default=d.fuzz_examples,
                        help="generated requests per operation and mode (default: %(default)s)")
    parser.add_argument("--stalled-connections", type=int, default=d.stalled_connections, help="default: %(default)s")
    parser.add_argument("--stalled-hold", type=float, default=d.stalled_hold_s,
                        help="seconds the stalled connections are held at most (default: %(default)s)")
    parser.add_argument("--junk-requests", type=int, default=d.junk_requests, help="default: %(default)s")
    parser.add_argument("--rebuild-idle", type=float, default=d.rebuild_idle_s,
                        help="seconds idle after the in-place rebuild, before searching again (default: %(default)s)")
    parser.add_argument("--checks", default=",".join(d.checks),
                        help=f"comma-separated subset of {','.join(CHECKS)} (default: all)")


def options_from_args(args: Any) -> ReliabilityOptions:
    return ReliabilityOptions(work=args.work, model=args.model, distractors=args.distractors,
                              duration_s=args.duration, warmup_s=args.warmup, concurrency=args.concurrency,
                              swap_at_s=args.swap_at,
                              fuzz_examples=args.fuzz_examples, stalled_connections=args.stalled_connections,
                              stalled_hold_s=args.stalled_hold, junk_requests=args.junk_requests,
                              rebuild_idle_s=args.rebuild_idle,
                              checks=tuple(c.strip() for c in args.checks.split(",") if c.strip()))
