"""What ``dpr bench recall`` reports beside the metrics: paired tests between rows, the cost of each
row (wall time and peak memory), the Markdown table, and the training subprocess that makes a row's
peak memory its own.

Peak RSS, measured so that one row's figure is not another's:

- training (``cost.train_peak_rss_mb``): each trained row trains in a fresh process of its own
  (``multiprocessing`` forkserver, whose server has imported the trainer once, so a row does not
  pay the torch import again); the figure is that process's ``ru_maxrss`` at the end of training,
  i.e. what a standalone ``dpr train`` of the row holds at most: libraries, data, model, optimiser.
- evaluation (``cost.eval_peak_rss_mb``): runs in the benchmark process. On Linux the process's
  high-water mark is reset at the start of the row (``/proc/self/clear_refs``, value 5) and read at
  its end, so it is the peak *during the row* (``eval_rss_scope: "row"``); it includes what the
  process already held (libraries, the benchmark data, memory the allocator kept from earlier rows).
  Where the reset is refused the figure is the process's peak so far (``"process"``, cumulative).
"""
from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.compare import RANDOMIZATION_RESAMPLES, p_clause, paired_stats
from eval.evaluate import RANK_CUTOFF

logger = logging.getLogger(__name__)

DELTA_METRIC = f"ndcg@{RANK_CUTOFF}"          # the metric of the table's delta columns
COST_NOTES = {
    "train_peak_rss_mb": "ru_maxrss of the row's own training process (one fresh process per row)",
    "eval_peak_rss_mb": "the benchmark process's RSS high-water mark during the row's evaluation (reset at "
                        "its start via /proc/self/clear_refs: eval_rss_scope 'row'), else its peak so far "
                        "('process', cumulative)",
    "seconds": "wall time: train_seconds inside the training process (train_process_seconds: seen from the "
               "benchmark, starting the process included; the first trained row also starts the process server, "
               "which imports the trainer once), eval_seconds for loading, encoding, searching and scoring "
               "(BM25: indexing too; a tuned hybrid: its fusion tuning too)",
}


# ----------------------------------------------------------------------------- cost


def _peak_rss_mb() -> float:
    """This process's peak RSS in MiB: Linux's ``VmHWM``, which :func:`_reset_peak_rss` resets, else
    ``ru_maxrss`` (KiB on Linux, bytes on macOS), which nothing resets: it also keeps the peak of
    threads that have exited, so after a reset it can still report an earlier block's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class Measured:
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    scope: str = "row"


@contextmanager
def measured() -> Iterator[Measured]:
    """Wall time and peak RSS of the block (see the module docstring for what the peak covers)."""
    m = Measured(scope="row" if _reset_peak_rss() else "process")
    start = time.perf_counter()
    try:
        yield m
    finally:
        m.seconds = round(time.perf_counter() - start, 3)
        m.peak_rss_mb = _peak_rss_mb()


# How often a training process checks that the benchmark which started it is still there.
PARENT_CHECK_SECONDS = 5.0


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (killed, waiting to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True                      # no /proc (not Linux): existence is all we can tell
    return state != "Z"


def watch_parent(pid: int, on_gone: Any = None, every_s: float = PARENT_CHECK_SECONDS) -> threading.Thread:
    """Call ``on_gone()`` (default: exit at once) from a daemon thread when process ``pid`` is gone.

    A row trains in a process of its own, a child of multiprocessing's fork server rather than of the
    benchmark, so killing the benchmark does not stop it: left alone it would train on for hours and
    replace the row's model directory under whatever runs next. Writes are atomic, so exiting
    mid-step leaves the last complete checkpoint (and the resume state) as they were.
    """
    def gone() -> None:
        logger.error("the benchmark (pid %d) is gone: stopping this row's training", pid)
        os._exit(1)

    def watch() -> None:
        while process_alive(pid):
            time.sleep(every_s)
        (on_gone or gone)()

    thread = threading.Thread(target=watch, name=f"watch-parent-{pid}", daemon=True)
    thread.start()
    return thread


def _train_child(config: Any, progress: bool, log_level: int, parent_pid: int | None = None) -> dict[str, Any]:
    """In the training process: train, then report the log, the time and this process's peak RSS."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if parent_pid is not None:
        watch_parent(parent_pid)
    start = time.perf_counter()
    from retriever.train import train

    result = train(config, progress=progress)
    return {"best_epoch": result.best_epoch, "log": result.log, "seconds": round(time.perf_counter() - start, 3),
            "peak_rss_mb": _peak_rss_mb()}


def _context() -> Any:
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # Imported once by the server (never run: no thread pools to break by forking), then each row forks.
    ctx.set_forkserver_preload(["bench.recall_report", "retriever.train"])
    return ctx


def train_in_subprocess(config: Any, progress: bool) -> dict[str, Any]:
    """``retriever.train.train(config)`` in a fresh process: ``{"best_epoch", "log", "seconds",
    "peak_rss_mb"}``. An exception in training is raised here (the child's traceback as its cause)."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=1, mp_context=_context()) as pool:
        future = pool.submit(_train_child, config, progress, logging.getLogger().getEffectiveLevel(), os.getpid())
        try:
            return future.result()
        except BrokenProcessPool as e:
            raise RuntimeError(f"training into {config.out}: the training process died ({e}): killed (out of "
                               "memory?), or a script calling run_bench lacks `if __name__ == '__main__':` "
                               "(multiprocessing imports the main module again)") from None


# ----------------------------------------------------------------------------- paired tests


def paired_metrics(ks: Sequence[int]) -> list[str]:
    return [f"ndcg@{RANK_CUTOFF}", *(f"recall@{k}" for k in ks), f"mrr@{RANK_CUTOFF}"]


def add_paired_tests(rows: Sequence[dict[str, Any]], baselines: Sequence[str], metrics: Sequence[str],
                     n_resamples: int, seed: int) -> dict[str, Any]:
    """Give every row ``vs = {baseline: {metric: {"diff", "low", "high", "p"}}}`` against each of
    ``baselines`` that ran (not against itself), paired on the rows' per-query values; returns the
    report's ``paired`` entry (what was tested, how)."""
    by_name = {row["name"]: row for row in rows}
    ran = [b for b in baselines if b in by_name]
    for row in rows:
        row["vs"] = {b: paired_stats(row["per_query"], by_name[b]["per_query"], metrics, n_resamples=n_resamples,
                                     seed=seed) for b in ran if b != row["name"]}
    return {"baselines": ran, "metrics": list(metrics), "bootstrap_resamples": n_resamples,
            "randomization_resamples": max(n_resamples, RANDOMIZATION_RESAMPLES), "seed": seed,
            "confidence": 0.95, "diff": "row - baseline, per query (same query ids), then averaged",
            "p": "paired randomisation test (sign flips), two-sided"}


# ----------------------------------------------------------------------------- the table


def _label(name: str) -> str:
    return name.replace("recall@", "R@").replace("ndcg@", "nDCG@").replace("mrr@", "MRR@")


def _cell(result: Mapping[str, float]) -> str:
    return f"{100 * result['value']:.1f} ({100 * result['ci_low']:.1f}-{100 * result['ci_high']:.1f})"


def _delta(stats: Mapping[str, float] | None) -> str:
    if stats is None:
        return "-"
    diff = f"{100 * stats['diff']:+.1f}"
    return f"**{diff}** ({p_clause(stats['p'])})" if stats["p"] < 0.05 else f"{diff} ({p_clause(stats['p'])})"


def _cost(seconds: float | None, mb: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s, {mb:.0f} MB"


def bench_table(rows: Sequence[Mapping[str, Any]], names: Sequence[str], baselines: Sequence[str]) -> str:
    """Systems down; metrics across (``value (95% CI)`` in %), then the Δ nDCG@10 against each
    baseline with its p-value (bold: p < 0.05), then training and evaluation cost."""
    header = (["system", *map(_label, names)] + [f"Δ {_label(DELTA_METRIC)} vs {b} (p)" for b in baselines]
              + ["train (time, peak RSS)", "eval (time, peak RSS)"])
    lines = ["| " + " | ".join(header) + " |", "|---|" + "|".join([":---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cost = row.get("cost") or {}
        cells = [_cell(row["metrics"][n]) if n in row["metrics"] else "-" for n in names]
        cells += [_delta((row.get("vs") or {}).get(b, {}).get(DELTA_METRIC)) for b in baselines]
        reused = " †" if row.get("training_reused") else ""
        cells += [_cost(cost.get("train_seconds"), cost.get("train_peak_rss_mb")) + reused,
                  _cost(cost.get("eval_seconds"), cost.get("eval_peak_rss_mb"))
                  + (" ‡" if cost.get("eval_vectors_reused") else "")]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_notes(baselines: Sequence[str], rows: Sequence[Mapping[str, Any]] = ()) -> str:
    """The notes under the table; the † and ‡ notes only when one of ``rows`` reused its training or vectors."""
    reused = any(r.get("training_reused") for r in rows)
    vectors_reused = any((r.get("cost") or {}).get("eval_vectors_reused") for r in rows)
    vs = (f"Δ: {_label(DELTA_METRIC)} of the row minus that of the baseline, in points, paired on the same "
          f"queries, p from a randomisation test (two-sided), **bold** when p < 0.05 (every Recall@k and MRR "
          f"with 95% intervals: bench_recall.json, rows[].vs); " if baselines else "")
    return (f"values in %, 95% bootstrap CI over queries; {vs}train: inside the row's own training process; "
            "peak RSS in MB (eval: the benchmark process during the row)"
            + ("; †: training reused from an earlier run of the same recipe on the same data, with the cost "
               "that run recorded" if reused else "")
            + ("; ‡: passage vectors reused from an earlier run of the same model on the same passages (the "
               "time encoding them took then: bench_recall.json, rows[].cost.eval_encode_passages_s)"
               if vectors_reused else ""))


def print_report(report: Mapping[str, Any]) -> None:
    data = report["data"]
    print(f"held-out queries: {data['test_queries']}, knowledge base: {data['kb_passages']} passages, "
          f"training queries: {data['train_queries']}")
    print()
    print(report["table"])
    chosen = report["fusion"]["chosen"]
    notes = table_notes(report["paired"]["baselines"], report["rows"])
    print(f"\n{notes}\ntuned hybrid: fusion {chosen['method']}"
          f"{'' if chosen['alpha_dense'] is None else ' alpha_dense=' + format(chosen['alpha_dense'], '.2f')}"
          f" chosen on the {report['fusion']['n_queries']} training questions; "
          f"wall time {report['wall_seconds']}s\nwrote {report['options']['out']}/bench_recall.json, "
          f"bench_recall.md, recall_curves.png")
