"""`dpr bench live` end to end in a tiny configuration, and the docs blocks it feeds."""
from __future__ import annotations

import json
import math
from pathlib import Path

from bench.docs import live_block, live_details
from driver.main import main


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_live_measures_upserts_search_filters_and_memory(tmp_path: Path, saved_model: Path, small_nq) -> None:
    train, _ = small_nq
    out = tmp_path / "live"
    code = main(["bench", "live", "--out", str(out), "--model", str(saved_model), "--kb", str(train),
                 "--queries", "8", "--rounds", "1", "--single-upserts", "2", "--synthetic", "3000",
                 "--live-fraction", "0.25"])
    assert code == 0
    report = json.loads((out / "live.json").read_text())
    real = report["real_kb"]
    assert real["live_documents"] == int(real["kb_documents"] * 0.25) and real["built"] + real["live_documents"] \
        == real["kb_documents"]
    up = real["upserts"]
    assert up["single"]["documents"] == 2 and up["passages"] == real["live_documents"]
    for key in ("single", "batched", "encode_only"):
        assert _positive(up[key]["docs_per_s"]), key
    # The reader that replays the log holds every live passage, with its vector and more.
    assert real["memory"]["live_passages"] == real["live_documents"]
    assert real["memory"]["bytes_per_live_passage"] > 4 * 8         # at least the tiny model's vector
    assert set(real["latency"]) == {"dense", "bm25", "hybrid", "dense+encode"}
    for row in real["latency"].values():
        assert _positive(row["live_p50_ms"]) and _positive(row["compacted_p50_ms"]) and _positive(row["ratio"])
    shares = [real["filters"][name]["share"] for name in ("50%", "10%", "1%")]
    assert shares == sorted(shares, reverse=True) and 0 < shares[0] < 1
    rows = report["synthetic"]["rows"]
    assert {(r["index_type"], r["filter"]) for r in rows} == {(t, f) for t in ("flat", "hnsw", "ivfflat") for f in ("50%", "10%", "1%")}
    assert all(r["recall_at_10"] == 1.0 for r in rows if r["index_type"] == "flat")     # flat filtering is exact
    assert all(0.0 <= r["recall_at_10"] <= 1.0 for r in rows)

    block = live_block(report)
    assert f"{up['batched']['docs_per_s']}/s in batches of 64" in block and "Command: `dpr bench live" in block
    assert "| hnsw | 3,000 |" in live_details(report)
