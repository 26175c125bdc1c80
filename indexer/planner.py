"""The index planner behind ``dpr index plan``: which index type fits a corpus, a RAM budget and a recall target.

Memory comes from the index layouts (exact formulas; the HNSW graph overhead is the measured one).
Recall, latency and build time come from ``planner_table.json``, written by ``bench/ann.py`` (``dpr bench ann``) on
this project's machine (1M synthetic 384-d vectors and the nq_oracle KB): at the measured size and dim
they are *measured*; anywhere else they are *extrapolated* (latency and build time scaled by the work
each index does; recall assumed to carry over, which holds best for the same dims per PQ sub-quantizer
and the same fraction of lists probed). Every figure in a plan says which it is.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TABLE_FILE = Path(__file__).with_name("planner_table.json")
GB = 1e9
# Below this estimated single-query latency exact search is recommended whenever it fits: it needs no
# training, no tuning and has recall 1.
FLAT_MAX_P50_MS = 50.0
_IVF_ID_BYTES = 8


def load_table(path: Path = TABLE_FILE) -> dict[str, Any]:
    """The measured table; an empty one (formulas only) when the benchmark has not been run."""
    if not path.is_file():
        logger.warning("%s: no measured table; plans will have memory figures only", path)
        return {"rows": []}
    return json.loads(path.read_text(encoding="utf-8"))


def default_nlist(count: int) -> int:
    """About 4*sqrt(n) lists, a power of two (FAISS's guideline is 4..16 * sqrt(n))."""
    return 2 ** max(4, round(math.log2(4 * math.sqrt(max(count, 1)))))


def memory_bytes(index_type: str, count: int, dim: int, **p: Any) -> float:
    """Bytes the FAISS index holds in RAM (the float vectors kept for re-scoring stay on disk, read per query)."""
    if index_type == "flat":
        return count * dim * 4.0
    if index_type == "hnsw":
        # Level 0 keeps 2*M neighbour ids of 4 bytes; upper levels add ~1/M of that again.
        m = p.get("M", 32)
        return count * (dim * 4.0 + 2 * m * 4 * (1 + 1 / m) + p.get("graph_extra", 0.0))
    nlist = p.get("nlist") or default_nlist(count)
    if index_type == "ivfflat":
        return count * (dim * 4.0 + _IVF_ID_BYTES) + nlist * dim * 4.0
    if index_type == "ivfpq":
        m = p.get("m", dim // 8)
        rotation = dim * dim * 4.0 if p.get("opq") else 0.0
        return count * (m + _IVF_ID_BYTES) + nlist * dim * 4.0 + 256 * dim * 4.0 + rotation
    raise ValueError(f"unknown index type {index_type!r}")


def _synthetic_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in table.get("rows", []) if str(r.get("data", "")).startswith("synthetic")]


def _at_largest_size(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per index type the rows measured at the largest size, and for HNSW per (M, efConstruction)
    graph, since bigger graphs cost more to build and were measured at smaller sizes."""
    largest: dict[tuple[str, ...], int] = {}
    for r in rows:
        largest[_family(r)] = max(largest.get(_family(r), 0), r["n"])
    return [r for r in rows if r["n"] == largest[_family(r)]]


def _measured_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The synthetic rows the planner extrapolates from (see :func:`_at_largest_size`)."""
    return _at_largest_size(_synthetic_rows(table))


def _family(row: dict[str, Any]) -> tuple[str, ...]:
    if row["type"] == "hnsw":
        return ("hnsw", str(row["params"].get("M")), str(row["params"].get("efConstruction")))
    return (row["type"],)


def _dim_of(row: dict[str, Any]) -> int:
    return 384 if "384" in str(row.get("data", "384")) else int(row.get("dim", 384))


def _scale(row: dict[str, Any], count: int, dim: int) -> dict[str, float]:
    """Latency, throughput and build-time factors from the measured row to ``count`` x ``dim``."""
    n0, d0 = row["n"], _dim_of(row)
    kind = row["type"]
    if kind.startswith("flat"):
        work = (count * dim) / (n0 * d0)
        build = work
    elif kind == "hnsw":
        work = (math.log(count) / math.log(n0)) * dim / d0
        build = count / n0 * work
    else:
        # IVF scans nprobe/nlist of the vectors; with nlist ~ sqrt(n) and the same probed fraction that
        # is linear in n (list scan) plus the coarse search over the centroids.
        work = count / n0 * (dim / d0 if kind == "ivfflat" else 1.0)
        build = count / n0 * dim / d0
    return {"latency": work, "build": build}


def _candidate(row: dict[str, Any], count: int, dim: int) -> dict[str, Any]:
    kind = "flat" if row["type"].startswith("flat") else row["type"]
    params = dict(row["params"])
    exact_size = row["n"] == count and _dim_of(row) == dim
    if kind == "ivfpq":
        # Keep the dims per sub-quantizer that was measured (e.g. 384/48 = 8): PQ recall follows it.
        per = _dim_of(row) / params["m"]
        params["m"] = max(1, int(dim / per))
        nlist = default_nlist(count)
        params["nprobe"] = max(1, round(params["nprobe"] * nlist / params["nlist"]))
        params["nlist"] = nlist
    elif kind == "ivfflat":
        nlist = default_nlist(count)
        params["nprobe"] = max(1, round(params["nprobe"] * nlist / params["nlist"]))
        params["nlist"] = nlist
    extra = 0.0
    if kind == "hnsw":
        extra = row["bytes_per_vector"] - memory_bytes("hnsw", 1, _dim_of(row), M=params["M"])
    mem = memory_bytes(kind, count, dim, **params, graph_extra=max(0.0, extra))
    factor = _scale(row, count, dim)
    status = "measured" if exact_size else "extrapolated"
    recall, recall_note = row["recall_at_10"], (f"measured at {row['n']:,} x {_dim_of(row)}"
                                                + ("" if exact_size else ", assumed to carry over"))
    if kind == "hnsw" and count > row["n"]:
        # At fixed M and efSearch an HNSW graph's recall falls as it grows (measured: M=16, efSearch 128
        # gives 0.885 at 1M), so a recall measured on fewer vectors says nothing safe about more.
        recall, recall_note = None, f"not known above the {row['n']:,} vectors measured (falls as n grows)"
    elif kind == "hnsw" and not exact_size:
        recall_note = f"measured at {row['n']:,} x {_dim_of(row)}; fewer vectors recall at least as well"
    return {
        "type": kind, "engine": row["type"], "params": params,
        "memory_gb": round(mem / GB, 2), "memory": "formula" + (" (+ measured graph overhead)" if kind == "hnsw" else ""),
        "recall_at_10": recall,
        "recall": "exact" if kind == "flat" else recall_note,
        "p50_ms": round(row["p50_ms"] * factor["latency"], 2),
        "batch_qps": round(row["batch_qps"] / factor["latency"], 1),
        "build_s": round(row["build_s"] * factor["build"], 1),
        "timing": status + f" (from {row['n']:,} x {_dim_of(row)}, 1 search thread)",
    }


def plan_index(count: int, dim: int, ram_gb: float | None = None, target_recall: float = 0.95,
               table: dict[str, Any] | None = None) -> dict[str, Any]:
    """Recommend an index for ``count`` vectors of ``dim``; see the module doc for what is measured."""
    if count < 1 or dim < 1:
        raise ValueError(f"--count and --dim must be positive, got {count}, {dim}")
    if not 0 < target_recall <= 1:
        raise ValueError(f"--target-recall must be in (0, 1], got {target_recall}")
    if ram_gb is not None and ram_gb <= 0:
        raise ValueError(f"--ram-gb must be positive, got {ram_gb}")
    table = load_table() if table is None else table
    rows = _measured_rows(table)
    candidates = [_candidate(r, count, dim) for r in rows]
    if not candidates:
        candidates = [{"type": t, "params": {}, "memory_gb": round(memory_bytes(t, count, dim) / GB, 2),
                       "memory": "formula", "recall_at_10": 1.0 if t == "flat" else None, "recall": "unmeasured",
                       "p50_ms": None, "batch_qps": None, "build_s": None, "timing": "unmeasured"}
                      for t in ("flat", "hnsw", "ivfflat", "ivfpq")]
    budget = ram_gb * GB if ram_gb is not None else math.inf
    fits = [c for c in candidates if c["memory_gb"] * GB <= budget]
    good = [c for c in fits if (c["recall_at_10"] or 0) >= target_recall]
    order = {"flat": 0, "hnsw": 1, "ivfflat": 2, "ivfpq": 3}
    choice, reason = None, ""
    flats = [c for c in good if c["type"] == "flat"]
    fast_flat = [c for c in flats if c["p50_ms"] is None or c["p50_ms"] <= FLAT_MAX_P50_MS]
    if fast_flat:
        choice = min(fast_flat, key=lambda c: c["p50_ms"] or 0)
        reason = f"exact search fits in RAM and is fast enough (p50 <= {FLAT_MAX_P50_MS:.0f} ms)"
    elif good:
        approx = [c for c in good if c["type"] != "flat"] or good
        choice = min(approx, key=lambda c: (c["p50_ms"] if c["p50_ms"] is not None else math.inf, order[c["type"]]))
        reason = f"fastest measured setting with recall@10 >= {target_recall} that fits the RAM budget"
    elif fits:
        choice = max(fits, key=lambda c: c["recall_at_10"] or 0)
        reason = f"nothing measured reaches recall@10 {target_recall} within the budget; best recall that fits"
    notes = [f"flat index for {count:,} x {dim}: {memory_bytes('flat', count, dim) / GB:.1f} GB of float32 "
             "vectors (formula)"]
    if choice is None:
        smallest = min(candidates, key=lambda c: c["memory_gb"])
        notes.append(f"no index fits {ram_gb} GB; the smallest is {smallest['type']} {smallest['params']} at "
                     f"{smallest['memory_gb']} GB: add RAM or split the corpus over several servers")
    if choice is not None and choice["type"] in ("ivfpq",):
        notes.append(f"ivfpq re-scores its candidates on the float vectors (embeddings.npy, "
                     f"{count * dim * 4 / GB:.1f} GB on disk, read per query): fast disk or page cache needed")
    hnsw_note = _hnsw_note([r for r in _synthetic_rows(table) if r["type"] == "hnsw"], count, dim, target_recall)
    if hnsw_note is not None:
        notes.append(hnsw_note)
    best_of = {}
    for c in sorted(candidates, key=lambda c: (order[c["type"]], -(c["recall_at_10"] or 0))):
        best_of.setdefault((c["type"], json.dumps(c["params"], sort_keys=True)), c)
    return {"count": count, "dim": dim, "ram_gb": ram_gb, "target_recall": target_recall,
            "recommendation": choice, "reason": reason, "notes": notes,
            "candidates": list(best_of.values()), "table": {k: table.get(k) for k in ("command", "date", "machine")}}


def _hnsw_note(rows: list[dict[str, Any]], count: int, dim: int, target_recall: float) -> str | None:
    """Why HNSW is not offered where only smaller graphs reached the target, with what was measured."""
    reached = [r for r in _at_largest_size(rows) if r["recall_at_10"] >= target_recall and r["n"] < count]
    if not reached:
        return None
    best = min(reached, key=lambda r: r["p50_ms"])
    setting = f"M={best['params']['M']} efSearch={best['params']['efSearch']}"
    build = best["build_s"] * _scale(best, count, dim)["build"]
    # The same setting measured on a smaller graph shows how recall falls with n.
    smaller = [r for r in rows if r["params"] == best["params"] and r["n"] < best["n"]]
    trend = (f" ({setting}: {max(smaller, key=lambda r: r['n'])['recall_at_10']} at "
             f"{max(r['n'] for r in smaller):,}, {best['recall_at_10']} at {best['n']:,})" if smaller else "")
    return (f"hnsw: {setting} reaches recall@10 {best['recall_at_10']} at {best['n']:,} vectors (measured; built "
            f"in {best['build_s']:.0f} s), but its recall at {count:,} is not known: at fixed M and efSearch it "
            f"falls as the graph grows{trend}. It also holds every float vector plus the graph in RAM, and this "
            f"graph at {count:,} x {dim} would take ~{build / 3600:.1f} h to build here (extrapolated). Measure "
            f"before choosing it: `dpr bench ann --n {count} --no-ivf --hnsw {best['params']['M']},"
            f"{best['params']['efConstruction']} --ef-search {best['params']['efSearch']}`")


def format_plan(plan: dict[str, Any], as_json: bool = False) -> str:
    """The plan as text for the terminal (or JSON)."""
    if as_json:
        return json.dumps(plan, indent=2)
    budget = "none" if plan["ram_gb"] is None else f"{plan['ram_gb']} GB"
    lines = [f"plan for {plan['count']:,} vectors x {plan['dim']} dims, RAM budget {budget}, "
             f"target recall@10 {plan['target_recall']}"]
    c = plan["recommendation"]
    if c is None:
        lines.append("recommendation: none fits")
    else:
        params = " ".join(f"{k}={v}" for k, v in c["params"].items())
        lines.append(f"recommendation: {c['type']} {params}  ({plan['reason']})")
        lines.append(f"  memory {c['memory_gb']} GB [{c['memory']}]; recall@10 {c['recall_at_10']} [{c['recall']}]")
        if c["p50_ms"] is not None:
            lines.append(f"  p50 {c['p50_ms']} ms/query, {c['batch_qps']} q/s in batches of 32, build ~{c['build_s']} s "
                         f"[{c['timing']}]")
    lines.append("candidates (memory GB | recall@10 | p50 ms | build s):")
    for c in plan["candidates"]:
        params = " ".join(f"{k}={v}" for k, v in c["params"].items())
        lines.append(f"  {c['type']:8} {params:48} {c['memory_gb']:>9} | {c['recall_at_10']} | {c['p50_ms']} | "
                     f"{c['build_s']}")
    lines += [f"note: {n}" for n in plan["notes"]]
    if plan["table"].get("date"):
        runs = len(str(plan["table"].get("command") or "").split(" && "))
        lines.append(f"measured table: {TABLE_FILE.name}, {runs} benchmark run(s), newest {plan['table']['date']}; "
                     "the commands are in it (and in --json)")
    return "\n".join(lines)
