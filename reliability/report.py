"""What `dpr bench reliability` prints and writes: one line per check, and one table with the same
four figures for every check (inputs tried, 5xx answers, server crashes, server RSS)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reliability.checks import Report


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


