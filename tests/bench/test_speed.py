"""`dpr bench speed` end to end in a tiny configuration: tiny model, 24-passage KB, small synthetic index."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from driver.main import main


def _finite_positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture()
def tiny_kb(small_nq: tuple[Path, Path]) -> list[str]:
    return [str(p) for p in small_nq]


def test_bench_speed_encode_and_int8_sections(tmp_path: Path, saved_model: Path, small_nq, tiny_kb, capsys) -> None:
    train, val = small_nq
    out = tmp_path / "speed"
    code = main(["bench", "speed", "--out", str(out), "--model", str(saved_model), "--kb", tiny_kb[0],
                 "--kb", tiny_kb[1], "--train", str(train), "--val", str(val), "--sections", "encode,int8",
                 "--encode-passages", "20", "--batch-size", "8"])
    assert code == 0
    report = json.loads((out / "speed.json").read_text())
    encode = report["encode"]
    assert encode["passages"] == 20 and _finite_positive(encode["matmul_gflops"])
    rows = {r["name"]: r for r in encode["rows"]}
    assert {"indexer", "naive", "indexer int8", "indexer bf16", "indexer onnx", "indexer onnx int8",
            "sentence-transformers"} <= set(rows)
    for name in ("indexer", "naive", "indexer int8", "indexer bf16", "indexer onnx", "indexer onnx int8"):
        for key in ("passages_per_s", "gflops", "share_of_matmul", "indexer_speedup"):
            assert _finite_positive(rows[name][key]), (name, key)
    assert rows["indexer"]["indexer_speedup"] == 1.0
    # Every other way keeps its speed-up over the indexer per round, one entry per round.
    assert encode["repeats"] == 3 and "x_indexer_rounds" not in rows["indexer"]
    for name in ("naive", "indexer int8", "indexer bf16", "indexer onnx", "indexer onnx int8"):
        rounds, row = rows[name]["x_indexer_rounds"], rows[name]
        assert len(rounds) == 3 and all(_finite_positive(x) for x in rounds), name
        assert len(rows[name]["passes_s"]) == 3 and min(rows[name]["passes_s"]) == rows[name]["seconds"]
        assert min(rounds) <= row["x_indexer_median"] <= max(rounds)
        assert row["x_indexer_best"] == pytest.approx(1 / row["indexer_speedup"], rel=0.1)  # both rounded
    # The naive loop computes the same function, only slower: identical vectors.
    assert rows["naive"]["cosine_to_indexer"] > 0.999
    assert 0.5 < rows["indexer int8"]["cosine_to_indexer"] <= 1.0001
    assert 0.5 < rows["indexer onnx int8"]["cosine_to_indexer"] <= 1.0001
    assert 0.99 < rows["indexer bf16"]["cosine_to_indexer"] <= 1.0001
    # fp32 on ONNX Runtime is the same function as torch, fused differently.
    assert rows["indexer onnx"]["cosine_to_indexer"] > 0.999
    # A saved dual-encoder dir is no sentence-transformers checkpoint: the row says why it has no figures.
    st = rows["sentence-transformers"]
    assert "passages_per_s" in st or st["note"].startswith("skipped")
    int8 = report["int8"]
    assert [(r["queries"], r["passages"]) for r in int8["rows"]] == [
        ("fp32", "fp32"), ("int8 torch", "int8 torch"), ("int8 torch", "fp32"), ("fp32", "int8 torch"),
        ("int8 onnx", "int8 onnx"), ("int8 onnx", "fp32"), ("fp32", "int8 onnx")]
    assert int8["rows"][0]["delta@5"] == 0.0
    for r in int8["rows"]:
        assert 0.0 <= r["recall@5"] <= 100.0 and r["recall@1"] <= r["recall@5"] <= r["recall@20"]
    assert set(int8["int8_speedup"]) == {"torch", "onnx"}
    assert all(_finite_positive(v) for sp in int8["int8_speedup"].values() for v in sp.values())
    assert all(0.5 < c <= 1.0001 for cos in int8["cosine_int8_vs_fp32"].values() for c in cos.values())
    md = (out / "speed.md").read_text()
    assert "### Encoding" in md and "### int8 vs fp32" in md and "| indexer |" in md
    assert "x indexer per round: median (min-max)" in md
    assert "### Encoding" in capsys.readouterr().out


def test_bench_speed_latency_and_throughput_sections(tmp_path: Path, saved_model: Path, small_nq, tiny_kb) -> None:
    train, val = small_nq
    out = tmp_path / "speed"
    code = main(["bench", "speed", "--out", str(out), "--model", str(saved_model), "--kb", tiny_kb[0],
                 "--val", str(val), "--sections", "latency,throughput", "--synthetic-n", "3000",
                 "--synthetic-types", "hnsw", "--latency-queries", "6", "--concurrency", "1,4", "--duration", "0.5"])
    assert code == 0
    report = json.loads((out / "speed.json").read_text())
    rows = report["latency"]["rows"]
    assert [r["index"] for r in rows] == ["real KB", "synthetic 3000"]
    from common.data import load_corpus

    assert rows[0]["count"] == len(load_corpus([tiny_kb[0]]))
    assert rows[1]["count"] == 3000 and rows[1]["index_type"] == "hnsw"
    assert 0.0 < rows[1]["recall@10"] <= 1.0 and _finite_positive(rows[1]["build_s"])
    assert _finite_positive(rows[1]["faiss_mb"])
    for r in rows:
        assert r["n"] == 6
        assert all(_finite_positive(r["client_ms"][p]) for p in ("p50", "p95", "p99"))
        assert r["client_ms"]["p50"] <= r["client_ms"]["p99"]
        # The server's own split (Server-Timing) is present and no phase exceeds the client's total.
        for phase in ("encode", "search", "fetch"):
            assert r["server_ms"][phase]["p50"] >= 0
        assert r["server_ms"]["encode"]["p50"] <= r["client_ms"]["p99"]
    tp = report["throughput"]["rows"]
    assert [(r["microbatch"], r["concurrency"]) for r in tp] == [(True, 1), (True, 4), (False, 1), (False, 4)]
    for r in tp:
        assert r["failed"] == 0 and r["ok"] > 0 and _finite_positive(r["qps"]) and _finite_positive(r["p50_ms"])
    assert "### Sequential HTTP latency" in (out / "speed.md").read_text()


def test_mixed_lengths_recuts_real_words_to_varied_lengths() -> None:
    from bench.encode import mixed_lengths
    from common.data import Passage

    words = [f"w{i}" for i in range(100)]
    passages = [Passage(pid=f"p{i}", title="t", text=" ".join(words)) for i in range(200)]
    out = mixed_lengths(passages, seed=0, min_words=5, max_words=80)
    lengths = [len(p.text.split()) for p in out]
    assert len(out) == 200 and min(lengths) >= 5 and max(lengths) <= 80
    assert max(lengths) >= 4 * min(lengths)                 # mixed, not a constant length
    assert all(set(p.text.split()) <= set(words) for p in out)
    assert mixed_lengths(passages, seed=0, min_words=5, max_words=80) == out


def test_machine_names_its_cpu_and_fastest_matrix_unit() -> None:
    from bench.speed import SPEED_FLAGS, cpu_label, machine_info

    machine = machine_info()
    assert set(machine["cpu_flags"]) <= set(SPEED_FLAGS) and machine["cores"] >= 1
    assert cpu_label({"cpu": "Intel(R) Xeon(R) Processor", "cpu_flags": ["avx2", "avx512f", "avx512_vnni",
                                                                         "amx_bf16"]}) == "Intel Xeon (AMX)"
    assert cpu_label({"cpu": "EPYC", "cpu_flags": ["avx2", "avx512f", "avx512_vnni"]}) == "EPYC (VNNI)"
    assert cpu_label({"cpu": "Old", "cpu_flags": ["avx2"]}) == "Old (AVX2)"
    assert cpu_label({"cpu": "AMD EPYC"}) == "AMD EPYC"          # runs recorded before the flags were
