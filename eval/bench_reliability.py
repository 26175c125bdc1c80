"""`dpr bench reliability` (`make reliability`): the long reliability checks, one figure each.

- fuzz: requests generated from the OpenAPI document plus hand-written bad input -> tried / 5xx seen;
- load: `dpr serve` on the 2,500-passage index, concurrency 32 for 60 s -> requests sent / failed,
  p50/p99, server RSS growth from the first to the last 10 s (a leak check: no swap in this run);
- swap: the same load with index B hot-swapped in through ``POST /admin/reload`` halfway ->
  requests sent / failed, and whether the answers switched (RSS reported: it holds a new index);
- index-kill: kill -9 `dpr index` mid-embedding -> crashes injected / data lost (served index hashes);
- train-kill: kill -9 `dpr train` mid-epoch, then `--resume` -> crashes injected / data lost (metrics);
- corrupt: `dpr serve` on damaged index files -> corrupt files tried / served anyway.

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

from eval.serve_proc import dpr_command, rss_bytes, run_to_exit, start_server

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
NQ = REPO / "data" / "nq_oracle"
DISTRACTORS = "wiki-psgs_w100-sample1000.jsonl"
CHECKS = ("fuzz", "load", "swap", "index-kill", "train-kill", "corrupt")


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

    from eval.fuzz import fuzz_openapi, run_hand_cases
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
    from retriever.data import load_corpus, load_examples

    examples = load_examples(NQ / "nq-oracle-train.json")
    only_a = {p.pid for p in load_corpus(NQ / "nq-oracle-train.json")} - \
             {p.pid for p in load_corpus(NQ / "nq-oracle-val.json")}
    return [{"query": ex.question, "k": 10} for ex in examples], only_a


def check_load_and_swap(o: ReliabilityOptions, index_a: Path, index_b: Path) -> dict[str, Any]:
    """Load `dpr serve` for ``duration_s`` and hot-swap A -> B at ``swap_at_s`` (0: no swap)."""
    import httpx

    from eval.loadgen import load

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
    from eval.faults import CHUNK_WRITTEN, kill_indexer_mid_build

    served = Path(o.work) / "kill-served"
    shutil.rmtree(served, ignore_errors=True)
    shutil.copytree(index_b, served, symlinks=True)
    # A's KB on top of B: the 500 train passages need embedding, so the build is killed mid-embedding.
    # Small chunks, killed once one is on disk: the re-run should resume from it, not start over.
    return kill_indexer_mid_build(served, o.model, _kb_a(o), extra_args=("--chunk-size", "128"),
                                  kill_on=CHUNK_WRITTEN)


def check_train_kill(o: ReliabilityOptions) -> dict[str, Any]:
    from eval.faults import kill_trainer_mid_epoch

    work = Path(o.work) / "train-kill"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    train, val = work / "train.json", work / "val.json"
    train.write_text(json.dumps(json.loads((NQ / "nq-oracle-train.json").read_text())[:160]))
    val.write_text(json.dumps(json.loads((NQ / "nq-oracle-val.json").read_text())[:40]))
    return kill_trainer_mid_epoch(work, train, val, epochs=2, batch_size=8, checkpoint_every=3)


def check_corrupt(o: ReliabilityOptions, index_a: Path) -> dict[str, Any]:
    from eval.faults import corrupt_and_serve

    work = Path(o.work) / "corrupt"
    work.mkdir(parents=True, exist_ok=True)
    return corrupt_and_serve(index_a, work)


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
             "corrupt": lambda: check_corrupt(o, index_a)}
    for name in o.checks:
        logger.info("reliability check: %s", name)
        t0 = time.perf_counter()
        try:
            report.results[name] = steps[name]()
        except Exception as e:          # one broken check must not hide the others' figures
            logger.exception("check %s failed", name)
            report.results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        report.results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        Path(o.work, "reliability.json").write_text(json.dumps(asdict(report), indent=2, default=str))
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
    return f"{name:<11} {status} {r}"


def print_report(report: Report) -> None:
    for name, r in report.results.items():
        print(headline(name, r))
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
    parser.add_argument("--checks", default=",".join(d.checks),
                        help=f"comma-separated subset of {','.join(CHECKS)} (default: all)")


def options_from_args(args: Any) -> ReliabilityOptions:
    return ReliabilityOptions(work=args.work, model=args.model, distractors=args.distractors,
                              duration_s=args.duration, warmup_s=args.warmup, concurrency=args.concurrency,
                              swap_at_s=args.swap_at,
                              fuzz_examples=args.fuzz_examples,
                              checks=tuple(c.strip() for c in args.checks.split(",") if c.strip()))
