"""`bench.ann_index.build_synthetic_index`: a servable index over synthetic vectors, named after MiniLM."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.ann_index import build_synthetic_index
from bench.synthetic import synthetic_passages
from indexer import SearchIndex
from indexer.builds import current_build


def test_synthetic_index_opens_with_minilm_manifest_and_is_cached(tmp_path: Path) -> None:
    out = build_synthetic_index(tmp_path / "syn", 300, "hnsw", hnsw_m=8, progress=False)
    manifest = json.loads((current_build(out) / "manifest.json").read_text())
    assert manifest["model_dir"] == "minilm" and manifest["dim"] == 384 and manifest["count"] == 300
    assert manifest["model"]["architecture"] == "bert" and "bm25" not in manifest
    with SearchIndex.open(out) as index:
        np.testing.assert_array_equal(index.embeddings, synthetic_passages(300, 384))
        _, rows = index.search(index.embeddings[7], 3)
        assert rows[0, 0] == 7 and index.passages([7])[0].pid == "syn-7"
    stamp = (current_build(out) / "manifest.json").stat().st_mtime_ns
    assert build_synthetic_index(tmp_path / "syn", 300, "hnsw", hnsw_m=8, progress=False) == out
    assert (current_build(out) / "manifest.json").stat().st_mtime_ns == stamp        # reused, not rebuilt
    build_synthetic_index(tmp_path / "syn", 300, "hnsw", hnsw_m=12, progress=False)
    assert json.loads((current_build(out) / "manifest.json").read_text())["index_params"]["hnsw_m"] == 12


def test_bench_ann_small_run_writes_table_the_planner_reads(tmp_path: Path) -> None:
    from bench.ann import main
    from indexer.planner import load_table, plan_index

    table = tmp_path / "planner_table.json"
    assert main(["--n", "3000", "--queries", "24", "--nlist", "16", "--pq-m", "8", "--nprobe", "2,16",
                 "--hnsw", "8,32", "--ef-search", "16", "--reps", "5", "--rescore", "40",
                 "--out", str(tmp_path / "ann"), "--planner-table", str(table)]) == 0
    rows = json.loads((tmp_path / "ann" / "ann.json").read_text())["rows"]
    kinds = {r["type"] for r in rows}
    assert kinds == {"flat-faiss", "flat-torch", "hnsw", "ivfflat", "ivfpq"}
    by = {(r["type"], r["params"].get("nprobe")): r for r in rows}
    assert by[("flat-faiss", None)]["recall_at_10"] == 1.0 == by[("flat-torch", None)]["recall_at_10"]
    assert by[("ivfflat", 16)]["recall_at_10"] == 1.0                 # every list probed: exact
    assert by[("ivfflat", 2)]["recall_at_10"] <= 1.0
    pq = by[("ivfpq", 16)]
    assert pq["bytes_per_vector"] < by[("ivfflat", 16)]["bytes_per_vector"] / 8
    assert "| ivfpq |" in (tmp_path / "ann" / "ann.md").read_text()
    plan = plan_index(3000, 384, ram_gb=1, table=load_table(table))
    assert plan["recommendation"]["type"] == "flat" and plan["recommendation"]["timing"].startswith("measured")
