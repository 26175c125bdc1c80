"""`bench.ann_index.build_synthetic_index`: a servable index over synthetic vectors, named after MiniLM."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

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


def test_bench_ann_measures_several_hnsw_graphs_without_ivf(tmp_path: Path) -> None:
    from bench.ann import main

    assert main(["--n", "2000", "--queries", "16", "--no-ivf", "--no-flat", "--hnsw", "8,32;16,40",
                 "--ef-search", "16,64", "--reps", "3", "--out", str(tmp_path / "ann")]) == 0
    rows = json.loads((tmp_path / "ann" / "ann.json").read_text())["rows"]
    assert {r["type"] for r in rows} == {"hnsw"}
    assert sorted((r["params"]["M"], r["params"]["efConstruction"], r["params"]["efSearch"]) for r in rows) == [
        (8, 32, 16), (8, 32, 64), (16, 40, 16), (16, 40, 64)]
    for m in (8, 16):
        low, high = (next(r for r in rows if r["params"]["M"] == m and r["params"]["efSearch"] == ef)
                     for ef in (16, 64))
        assert high["recall_at_10"] >= low["recall_at_10"]
    with pytest.raises(ValueError, match="M,efConstruction pairs"):
        main(["--n", "100", "--hnsw", "8", "--out", str(tmp_path / "bad")])


def test_combine_keeps_first_rows_and_each_rows_own_command(tmp_path: Path) -> None:
    from bench.ann import combine

    def row(kind: str, n: int, recall: float, run: str | None = None) -> dict:
        r = {"data": "synthetic 384-d", "n": n, "type": kind, "params": {"nprobe": 16}, "recall_at_10": recall}
        return {**r, "run": run} if run else r

    new = {"command": "dpr bench ann --n 1000000 (quiet)", "date": "2026-12-01T13:00:00+00:00", "machine": {},
           "rows": [row("ivfflat", 1_000_000, 0.99)]}
    old = {"command": "a && b", "date": "2026-11-25T20:00:00+00:00", "machine": {},
           "rows": [row("ivfflat", 1_000_000, 0.98, run="a"), row("ivfpq", 1_000_000, 0.9, run="b")]}
    paths = []
    for name, table in (("new.json", new), ("old.json", old)):
        (tmp_path / name).write_text(json.dumps(table))
        paths.append(tmp_path / name)
    table = combine(paths)
    assert [(r["type"], r["recall_at_10"], r["run"]) for r in table["rows"]] == [
        ("ivfflat", 0.99, "dpr bench ann --n 1000000 (quiet)"), ("ivfpq", 0.9, "b")]
    assert table["date"] == "2026-12-01T13:00:00+00:00"
