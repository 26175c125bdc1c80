"""Markdown tables for a ``dpr bench speed`` report (the dict :func:`bench.speed.run_speed` returns)."""
from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows)]


def _encode(e: dict[str, Any]) -> list[str]:
    lines = [f"### Encoding ({e['passages']} passages, {e['mean_tokens']} tokens mean / {e['max_tokens']} max, "
             f"batch {e['batch_size']}, max length {e['max_length']}, {e['torch_threads']} torch threads, "
             f"best of {e.get('repeats', 1)} round(s) taking turns; "
             f"fp32 matmul {e['matmul_gflops']} GFLOP/s)", ""]
    rows = [[r["name"], r.get("passages_per_s"), r.get("gflops"), r.get("share_of_matmul"),
             r.get("indexer_speedup"), _rounds(r), r.get("cosine_to_indexer"), r["note"]] for r in e["rows"]]
    return lines + _table(["path", "passages/s", "GFLOP/s", "share of matmul", "indexer / this",
                           "x indexer per round: median (min-max)", "cosine to indexer", "note"], rows)


def _rounds(row: dict[str, Any]) -> str | None:
    rounds = row.get("x_indexer_rounds")
    if not rounds:
        return None
    return f"{row['x_indexer_median']:g} ({min(rounds):g}-{max(rounds):g})"


def _int8(q: dict[str, Any]) -> list[str]:
    ks = [key.split("@")[1] for key in q["rows"][0] if key.startswith("recall@")]
    per_runtime = "; ".join(
        f"int8 {rt}: speedup passages {sp['passages']}x, queries {sp['queries']}x, mean cosine to fp32 passages "
        f"{q['cosine_int8_vs_fp32'][rt]['passages']}, queries {q['cosine_int8_vs_fp32'][rt]['queries']}"
        for rt, sp in q["int8_speedup"].items())
    lines = [f"### int8 vs fp32 torch ({q['questions']} questions, {q['passages']} passages): {per_runtime}", ""]
    rows = [[r["queries"], r["passages"], *(r[f"recall@{k}"] for k in ks), r["mrr@10"],
             *(r[f"delta@{k}"] for k in ks)] for r in q["rows"]]
    return lines + _table(["queries", "passages", *(f"R@{k}" for k in ks), "MRR@10", *(f"ΔR@{k}" for k in ks)], rows)


def _latency(lat: dict[str, Any]) -> list[str]:
    lines = [f"### Sequential HTTP latency ({lat['queries']} queries, k={lat['k']}, mode dense, query cache off; ms)",
             ""]
    rows = []
    for r in lat["rows"]:
        server = r.get("server_ms", {})
        recall_key = next((key for key in r if key.startswith("recall@")), None)
        rows.append([r["index"], r.get("index_type"), r.get("count"), r.get(recall_key) if recall_key else None,
                     r.get("faiss_mb"), r.get("flat_mb"), r.get("build_s"), r.get("rss_mb"),
                     r["client_ms"]["p50"], r["client_ms"]["p95"], r["client_ms"]["p99"],
                     *((server.get(p) or {}).get("p50") for p in ("encode", "search", "fetch", "queue"))])
    return lines + _table(["index", "type", "vectors", "recall@10 vs exact", "index MB", "flat MB", "build s",
                           "server RSS MB", "p50", "p95", "p99", "encode p50", "search p50", "fetch p50",
                           "queue p50"], rows)


def _throughput(t: dict[str, Any]) -> list[str]:
    scaling = {k: v for k, v in t.items() if k.startswith("qps_")}
    lines = [f"### Throughput over loopback ({t['duration_s']} s per point, k={t['k']}, mode dense, query cache off; "
             f"{scaling})", ""]
    rows = [["on" if r["microbatch"] else "off", r["concurrency"], r["qps"], r["p50_ms"], r["p95_ms"], r["p99_ms"],
             r["ok"], r["failed"]] for r in t["rows"]]
    return lines + _table(["micro-batching", "concurrency", "q/s", "p50 ms", "p95 ms", "p99 ms", "ok", "failed"], rows)


def peer_rows(p: dict[str, Any]) -> list[list[Any]]:
    """``[work, dpr, peer, peer, ratio]`` rows of a peers section (ratio: how many times dpr is ahead)."""
    v, b, h, t = p["versions"], p["build"], p["http"], p["train"]
    seq = h["sequential"]
    rows = [[f"index build, whole process (best of {p['rounds']})", f"{min(b['dpr_s'])} s",
             f"txtai {v['txtai']}", f"{min(b['txtai_s'])} s", f"{b['ratio']}x"],
            ["HTTP p50 / p95, sequential", f"{seq['dpr']['p50']} / {seq['dpr']['p95']} ms", "txtai API",
             f"{seq['txtai']['p50']} / {seq['txtai']['p95']} ms", f"{seq['p50_ratio']}x"]]
    for r in h["throughput"]:
        rows.append([f"q/s at concurrency {r['concurrency']}", r["dpr_qps"], "txtai", r["txtai_qps"],
                     f"{r['ratio']}x"])
    rows.append([f"training pairs/s ({t['pairs']} pairs, batch {t['batch_size']}, 1 epoch)", t["dpr_pairs_per_s"],
                 f"sentence-transformers {v['sentence_transformers']}", t["st_pairs_per_s"], f"{t['ratio']}x"])
    return rows


def _peers(p: dict[str, Any]) -> list[str]:
    lines = [f"### Peers (same data and model; interleaved rounds: {p['rounds']}; {p['note']})", ""]
    return lines + _table(["work", "dpr", "peer", "peer's figure", "dpr ahead by"], peer_rows(p))


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"## dpr bench speed — {report['date']}", "",
             f"`{report['command']}`", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; load average at start "
             f"{m.get('load_avg_at_start')}, at end {m.get('load_avg_at_end')}.", ""]
    for name, render in (("encode", _encode), ("int8", _int8), ("latency", _latency), ("throughput", _throughput),
                         ("peers", _peers)):
        if name in report:
            lines += render(report[name]) + [""]
    return "\n".join(lines)
