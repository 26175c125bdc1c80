"""The index planner: memory formulas, rules, measured vs extrapolated labels, the shipped table, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from driver.main import main
from indexer.planner import TABLE_FILE, load_table, memory_bytes, plan_index


def _row(kind: str, params: dict, recall: float, bpv: float, p50: float, n: int = 1_000_000) -> dict:
    return {"data": "synthetic 384-d", "n": n, "type": kind, "params": params, "recall_at_10": recall,
            "bytes_per_vector": bpv, "index_bytes": bpv * n, "build_s": 100.0, "p50_ms": p50, "p99_ms": p50 * 2,
            "batch_qps": 1000 / p50}


TABLE = {"command": "test", "date": "today", "rows": [
    _row("flat-faiss", {}, 1.0, 1536, 120.0),
    _row("hnsw", {"M": 16, "efConstruction": 80, "efSearch": 64}, 0.97, 1676, 0.5),
    _row("ivfflat", {"nlist": 4096, "nprobe": 32}, 0.96, 1544, 2.0),
    _row("ivfpq", {"nlist": 4096, "m": 48, "opq": False, "nprobe": 32, "rescore": 40}, 0.90, 56, 1.0),
    _row("ivfpq", {"nlist": 4096, "m": 48, "opq": False, "nprobe": 32, "rescore": 100}, 0.99, 56, 1.5),
]}


def test_flat_memory_of_21m_passages_at_768_dims() -> None:
    assert round(memory_bytes("flat", 21_000_000, 768) / 1e9, 1) == 64.5
    pq = memory_bytes("ivfpq", 21_000_000, 768, m=96, nlist=16384)
    assert pq < memory_bytes("flat", 21_000_000, 768) / 8


def test_small_corpus_gets_exact_search() -> None:
    plan = plan_index(2_500, 384, ram_gb=4, table=TABLE)
    assert plan["recommendation"]["type"] == "flat" and plan["recommendation"]["recall"] == "exact"
    assert "extrapolated" in plan["recommendation"]["timing"]


def test_budget_below_flat_picks_a_fitting_index_that_reaches_the_target() -> None:
    plan = plan_index(21_000_000, 768, ram_gb=16, target_recall=0.95, table=TABLE)
    choice = plan["recommendation"]
    assert choice["type"] == "ivfpq" and choice["memory_gb"] <= 16 and choice["recall_at_10"] >= 0.95
    assert choice["params"]["m"] == 96 and choice["params"]["rescore"] == 100   # same 8 dims per sub-quantizer
    assert any("64.5 GB" in note for note in plan["notes"])


def test_ample_ram_at_scale_prefers_the_fastest_index_meeting_recall() -> None:
    plan = plan_index(1_000_000, 384, ram_gb=64, target_recall=0.95, table=TABLE)
    choice = plan["recommendation"]
    assert choice["type"] == "hnsw" and choice["timing"].startswith("measured")
    assert plan_index(1_000_000, 384, ram_gb=64, target_recall=0.999, table=TABLE)["recommendation"]["type"] == "flat"


def test_nothing_fits_says_so() -> None:
    plan = plan_index(21_000_000, 768, ram_gb=0.5, table=TABLE)
    assert plan["recommendation"] is None and any("no index fits" in n for n in plan["notes"])
    with pytest.raises(ValueError, match="target-recall"):
        plan_index(10, 8, target_recall=1.5, table=TABLE)


def test_shipped_table_is_a_measured_1m_run() -> None:
    table = load_table(TABLE_FILE)
    rows = [r for r in table["rows"] if r["data"].startswith("synthetic")]
    assert max(r["n"] for r in rows) >= 1_000_000
    assert {"flat-faiss", "flat-torch", "hnsw", "ivfflat", "ivfpq"} <= {r["type"] for r in rows}
    assert all(0 <= r["recall_at_10"] <= 1 and r["index_bytes"] > 0 for r in rows)


def test_cli_plan(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["index", "plan", "--count", "21000000", "--dim", "768", "--ram-gb", "32", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["count"] == 21_000_000 and plan["recommendation"]["memory_gb"] <= 32
    assert main(["index", "plan", "--dim", "768"]) == 2
    assert "needs --count" in capsys.readouterr().err


def test_hnsw_graphs_measured_at_a_smaller_size_are_offered_only_up_to_it() -> None:
    table = {**TABLE, "rows": [
        _row("flat-faiss", {}, 1.0, 1536, 120.0),
        _row("hnsw", {"M": 16, "efConstruction": 80, "efSearch": 128}, 0.885, 1676, 0.5),
        _row("hnsw", {"M": 32, "efConstruction": 128, "efSearch": 256}, 0.99, 1800, 0.7, n=50_000),
        _row("hnsw", {"M": 32, "efConstruction": 128, "efSearch": 64}, 0.90, 1800, 0.3, n=200_000),
        _row("hnsw", {"M": 32, "efConstruction": 128, "efSearch": 256}, 0.97, 1800, 0.8, n=200_000),
        _row("ivfflat", {"nlist": 4096, "nprobe": 32}, 0.96, 1544, 2.0)]}
    small = plan_index(150_000, 384, target_recall=0.95, table=table)
    m32 = [c for c in small["candidates"] if c["type"] == "hnsw" and c["params"]["M"] == 32]
    assert {c["recall_at_10"] for c in m32} == {0.90, 0.97}
    assert all("fewer vectors recall at least as well" in c["recall"] for c in m32)
    assert not any(n.startswith("hnsw:") for n in small["notes"])

    big = plan_index(500_000, 384, ram_gb=100, target_recall=0.95, table=table)
    m32 = [c for c in big["candidates"] if c["type"] == "hnsw" and c["params"]["M"] == 32]
    assert m32 and all(c["recall_at_10"] is None and "not known above the 200,000" in c["recall"] for c in m32)
    m16 = [c for c in big["candidates"] if c["type"] == "hnsw" and c["params"]["M"] == 16]
    assert m16[0]["recall_at_10"] == 0.885                      # measured at 1M, more than 500k: it stands
    assert big["recommendation"]["type"] != "hnsw"
    note = next(n for n in big["notes"] if n.startswith("hnsw:"))
    assert "M=32 efSearch=256 reaches recall@10 0.97 at 200,000" in note and "not known" in note
    assert "(M=32 efSearch=256: 0.99 at 50,000, 0.97 at 200,000)" in note and "extrapolated" in note
    assert "--n 500000 --no-ivf --hnsw 32,128 --ef-search 256" in note
