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
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.flags import add_dataclass_arguments, dataclass_from_args, opt
from reliability.report import print_report, summary_row, summary_table
from reliability.serve_proc import dpr_command, rss_bytes, run_to_exit, start_server

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
NQ = REPO / "data" / "nq_oracle"
DISTRACTORS = "wiki-psgs_w100-sample1000.jsonl"
CHECKS = ("fuzz", "load", "swap", "index-kill", "train-kill", "corrupt", "stalled", "metrics", "rebuild", "tampered")


@dataclass(frozen=True)
class ReliabilityOptions:
    work: str = opt("runs/reliability", "indexes, logs, reliability.json and reliability.md")
    model: str = opt("minilm", "model to build the indexes with")
    distractors: str = opt(str(REPO.parent / "shared" / "data" / "distractors" / DISTRACTORS),
                           "extra passages (JSONL) in index A and B", show_default=False)
    duration_s: float = opt(60.0, "load test seconds", flag="--duration")
    # Load before the measured window, so RSS growth is measured after the first-request allocations
    # (thread pools, tokenizer and allocator arenas), i.e. it shows leaks, not start-up.
    warmup_s: float = opt(10.0, "seconds of load before the measured window", flag="--warmup")
    concurrency: int = opt(32, "clients of the load and swap checks")
    swap_at_s: float = opt(30.0, "seconds into the swap check's load to hot-swap index B in", flag="--swap-at")
    fuzz_examples: int = opt(200, "generated requests per operation and mode")
    stalled_connections: int = opt(50, "slowloris connections of the stalled check")
    stalled_hold_s: float = opt(30.0, "seconds the stalled connections are held at most", flag="--stalled-hold")
    junk_requests: int = opt(40, "made-up methods (and as many made-up paths) of the metrics check")
    rebuild_idle_s: float = opt(15.0, "seconds idle after the in-place rebuild, before searching again",
                                flag="--rebuild-idle")
    checks: tuple[str, ...] = opt(CHECKS, "comma-separated subset of the checks", metavar="CHECK,CHECK")


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
    # Generated PUT and DELETE /documents requests change the knowledge base: fuzz a copy.
    work = Path(tempfile.mkdtemp(prefix="dpr-fuzz-"))
    index = Path(shutil.copytree(index, work / "index", symlinks=True))
    settings = Settings(index_dir=index, admin_token=token, torch_threads=1)
    try:
        result = fuzz_openapi(create_app(settings), examples=o.fuzz_examples, admin_token=token)
    finally:
        shutdown_lifespans()
    with TestClient(create_app(settings)) as client:
        result.merge(run_hand_cases(client, settings.max_body_bytes))
    shutil.rmtree(work, ignore_errors=True)
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
    from reliability.tamper import rebuild_while_serving

    bodies, _ = _train_questions()
    queries = [b["query"] for b in bodies[:20]]
    return rebuild_while_serving(index_a, _kb_b(o), o.model, Path(o.work), queries, idle_s=o.rebuild_idle_s)


def check_tampered(o: ReliabilityOptions, index_a: Path) -> dict[str, Any]:
    from reliability.tamper import tampered_builds

    work = Path(o.work) / "tampered"
    work.mkdir(parents=True, exist_ok=True)
    return tampered_builds(index_a, work)


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


def add_arguments(parser: Any) -> None:
    add_dataclass_arguments(parser, ReliabilityOptions)


def options_from_args(args: Any) -> ReliabilityOptions:
    return dataclass_from_args(ReliabilityOptions, args)


def run(args: Any) -> int:
    """``dpr bench reliability`` (``make reliability``): exit 1 if any check failed."""
    report = run_reliability(options_from_args(args))
    print_report(report)
    return 0 if report.ok else 1
