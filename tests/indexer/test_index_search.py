"""Build, open and search: exact agreement with brute force, store lookups, approximate index types."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from common.data import load_corpus
from indexer import IndexConfig, SearchIndex, build_index
from indexer.builds import current_build


def _questions(n: int) -> list[str]:
    path = Path(__file__).resolve().parents[2] / "data" / "nq_oracle" / "nq-oracle-train.json"
    return [r["question"] for r in json.loads(path.read_text())[:n]]


def test_build_writes_all_files_and_manifest(built: Path, kb80: Path, tiny_encoder) -> None:
    assert {p.name for p in built.iterdir()} == {"builds", "current"}
    build = current_build(built)
    assert build.parent == (built / "builds").resolve() and (built / "current").is_symlink()
    names = {p.name for p in build.iterdir()}
    assert names == {"index.faiss", "passages.sqlite", "embeddings.npy", "passage_hashes.npy",
                     "index_config.json", "manifest.json", "bm25"}
    # Published files are read-only: nothing rewrites a build in place.
    assert all(not p.stat().st_mode & 0o222 for p in build.rglob("*") if p.is_file())
    manifest = json.loads((current_build(built) / "manifest.json").read_text())
    assert manifest["count"] == 80 and manifest["dim"] == tiny_encoder.dim == 32
    assert manifest["model"]["weights_sha256"] == tiny_encoder.fingerprint()
    assert manifest["model_dir"] == "tiny"
    assert (manifest["pooling"], manifest["similarity"], manifest["normalize"]) == ("mean", "cos", True)
    assert manifest["kb"][0]["path"] == str(kb80.resolve()) and len(manifest["kb"][0]["sha256"]) == 64
    assert manifest["index_type"] == "flat" and manifest["build"]["embedded"] == 80
    assert json.loads((current_build(built) / "index_config.json").read_text())["index_type"] == "flat"
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]   # no temp dirs left


def test_exact_search_matches_numpy_brute_force(built: Path, kb80: Path, tiny_encoder) -> None:
    passages = load_corpus(kb80)
    # Fresh embeddings, not the stored ones: this also checks that FAISS rows follow corpus order.
    p_emb = tiny_encoder.encode_passages(passages)
    q_emb = tiny_encoder.encode_queries(_questions(12))
    brute = q_emb @ p_emb.T
    with SearchIndex.open(built, tiny_encoder) as index:
        scores, rows = index.search(q_emb, 10)
        assert scores.dtype == np.float32 and rows.dtype == np.int64 and rows.shape == (12, 10)
        expected_rows = np.argsort(-brute, axis=1, kind="stable")[:, :10]
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_allclose(scores, np.take_along_axis(brute, expected_rows, axis=1), atol=1e-5)
        assert (np.diff(scores, axis=1) <= 1e-7).all()
        ex_scores, ex_rows = index.exact_search(q_emb, 10)
        np.testing.assert_array_equal(ex_rows, rows)
        # The hits carry the passages the rows point at.
        hits = index.passages(rows[0])
        assert [h.pid for h in hits] == [passages[r].pid for r in rows[0]]


def test_k_larger_than_index_and_bad_queries(built: Path, tiny_encoder) -> None:
    with SearchIndex.open(built) as index:
        assert len(index) == 80 and index.dim == 32
        q = tiny_encoder.encode_queries(["who sings"])
        scores, rows = index.search(q, 500)
        assert rows.shape == (1, 80) and sorted(rows[0].tolist()) == list(range(80))
        scores1, rows1 = index.search(q[0], 3)                   # a single vector is accepted too
        assert rows1.shape == (1, 3)
        with pytest.raises(ValueError, match=r"\[n, 32\]"):
            index.search(np.zeros((1, 16), dtype=np.float32), 3)
        with pytest.raises(ValueError, match="k must be"):
            index.search(q, 0)


def test_store_lookups_by_row_and_id(built: Path, kb80: Path) -> None:
    passages = load_corpus(kb80)
    with SearchIndex.open(built) as index:
        assert index.passages([5, 0, 5, 79]) == [passages[5], passages[0], passages[5], passages[79]]
        assert index.passage(passages[42].pid) == passages[42]
        assert index.row_of(passages[42].pid) == 42
        assert index.passage("no-such-id") is None and index.row_of("no-such-id") is None
        with pytest.raises(IndexError, match="row"):
            index.passages([80])
        summary = index.summary()
        assert summary["count"] == 80 and summary["dims"] == 32 and summary["index_type"] == "flat"
        assert len(summary["weights_sha256"]) == 12 and summary["model"] == "tiny"
        assert index.model_dir == "tiny" and isinstance(index.model_dir, str)


def test_concurrent_searches_from_threads_agree_with_serial(built: Path, tiny_encoder) -> None:
    q = tiny_encoder.encode_queries(_questions(16))
    with SearchIndex.open(built) as index:
        serial = [(index.search(q[i:i + 1], 5)[1][0].tolist(), [p.pid for p in index.passages(index.search(
            q[i:i + 1], 5)[1][0])]) for i in range(16)]
        results: dict[int, tuple] = {}
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for _ in range(5):
                    rows = index.search(q[i:i + 1], 5)[1][0]
                    results[i] = (rows.tolist(), [p.pid for p in index.passages(rows)])
            except BaseException as e:  # noqa: BLE001 - reported by the assertion below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert [results[i] for i in range(16)] == serial


def _self_recall(index: SearchIndex, k: int = 1) -> float:
    emb = np.asarray(index.embeddings)
    _, rows = index.search(emb, k)
    return float(np.mean([i in rows[i] for i in range(len(emb))]))


def test_hnsw_builds_restores_ef_search_and_finds_neighbours(tiny_encoder, make_kb, tmp_path: Path) -> None:
    kb = make_kb("kb200.jsonl", 0, 200)
    config = IndexConfig(index_type="hnsw", hnsw_m=8, hnsw_ef_construction=40, hnsw_ef_search=64)
    out = build_index(tiny_encoder, [kb], tmp_path / "hnsw", config, progress=False)
    with SearchIndex.open(out, tiny_encoder) as index:
        assert index._faiss.hnsw.efSearch == 64
        assert _self_recall(index) >= 0.95
        q = tiny_encoder.encode_queries(_questions(20))
        approx = index.search(q, 10)[1]
        exact = index.exact_search(q, 10)[1]
        overlap = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
        assert overlap >= 0.8


def test_ivfpq_builds_with_auto_params_and_rescored_results(tiny_encoder, make_kb, tmp_path: Path) -> None:
    kb = make_kb("kb200.jsonl", 0, 200)
    # pq_m=48 does not divide the tiny model's 32 dims: it is lowered to a divisor, not an error.
    config = IndexConfig(index_type="ivfpq", pq_nbits=4, nprobe=4)
    out = build_index(tiny_encoder, [kb], tmp_path / "ivfpq", config, progress=False)
    saved = json.loads((current_build(out) / "index_config.json").read_text())
    assert saved["pq_m"] == 32 and saved["ivf_nlist"] == round(4 * 200 ** 0.5) and saved["nprobe"] == 4
    with SearchIndex.open(out, tiny_encoder) as index:
        import faiss
        assert faiss.extract_index_ivf(index._faiss).nprobe == 4
        scores, rows = index.search(tiny_encoder.encode_queries(_questions(5)), 10)
        assert (rows >= 0).all() and (np.diff(scores, axis=1) <= 1e-7).all()
        # Rescoring uses the exact vectors, so reported scores are the true inner products.
        exact = np.take_along_axis(tiny_encoder.encode_queries(_questions(5)) @ index.embeddings.T, rows, axis=1)
        np.testing.assert_allclose(scores, exact, atol=1e-5)
        assert _self_recall(index, k=5) >= 0.8


def test_ivfpq_with_too_few_vectors_is_a_clear_error(tiny_encoder, kb80: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the error must come before any embedding work")

    monkeypatch.setattr(tiny_encoder, "encode_passages", never)
    with pytest.raises(ValueError, match=r"ivfpq needs at least 256 vectors.*has 80"):
        build_index(tiny_encoder, [kb80], tmp_path / "ivf", IndexConfig(index_type="ivfpq"), progress=False)
    assert not (tmp_path / "ivf").exists()


def test_bad_index_config_is_refused() -> None:
    with pytest.raises(ValueError, match="index_type"):
        IndexConfig(index_type="lsh")
    with pytest.raises(ValueError, match="pq_nbits"):
        IndexConfig(pq_nbits=0)
    with pytest.raises(ValueError, match="unknown index config keys"):
        IndexConfig.from_dict({"index_type": "flat", "bogus": 1})


def test_kb_sources_nq_oracle_json_and_beir_folder(tiny_encoder, small_nq, make_kb, tmp_path: Path) -> None:
    train, _ = small_nq
    beir = tmp_path / "beir"
    beir.mkdir()
    make_kb("beir/corpus.jsonl", 100, 110)
    out = build_index(tiny_encoder, [train, beir], tmp_path / "idx", progress=False)
    expected = load_corpus([train, beir])
    with SearchIndex.open(out, tiny_encoder) as index:
        assert len(index) == len(expected) and index.passages(range(len(index))) == expected
        sources = index.manifest["kb"]
        assert [s["path"] for s in sources] == [str(train.resolve()), str(beir.resolve())]
        assert sources[1]["file"] == str((beir / "corpus.jsonl").resolve())
    gold = json.loads(train.read_text())[0]["gold_context"]
    with SearchIndex.open(out) as index:
        _, rows = index.search(tiny_encoder.encode_passages([expected[0]]), 1)
        assert index.passages(rows[0])[0].text == gold["text"]


def test_relative_model_dir_is_recorded_absolute(tiny_encoder, tiny_base: Path, kb80: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny_base.parent)
    out = build_index(tiny_encoder, [kb80], tmp_path / "idx", model_dir=Path(tiny_base.name), progress=False)
    with SearchIndex.open(out) as index:
        assert index.model_dir == str(tiny_base.resolve())
