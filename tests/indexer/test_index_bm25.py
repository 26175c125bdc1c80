"""The BM25 index beside the dense one: save/load round trip, manifest checks, reuse, old indexes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common.data import Passage, load_corpus
from indexer import IndexLoadError, SearchIndex, build_index
from indexer.builds import current_build
from retriever.bm25 import BM25_FILES, BM25Index

QUERIES = ["where does the river flow", "apple harvest in autumn", "zzzz unknownword"]


def test_bm25_save_load_round_trip_gives_the_same_results(tmp_path: Path) -> None:
    passages = [Passage("a", "Apples", "apple orchards harvest in autumn"),
                Passage("b", "Rivers", "the river flows to the sea"),
                Passage("c", "Stars", "stars shine at night in the sky")]
    built = BM25Index.build(passages)
    assert sorted(built.save(tmp_path / "bm25")) == sorted(BM25_FILES)
    assert {p.name for p in (tmp_path / "bm25").iterdir()} == set(BM25_FILES)
    loaded = BM25Index.load(tmp_path / "bm25", passages)
    assert len(loaded) == 3 and (loaded.k1, loaded.b) == (built.k1, built.b)
    for got, want in zip(loaded.search(QUERIES, 3), built.search(QUERIES, 3)):
        assert got.tolist() == want.tolist()
    assert loaded.search(["river"], 1)[1][0, 0] == 1
    with pytest.raises(ValueError, match="indexes 3 passages, 2 given"):
        BM25Index.load(tmp_path / "bm25", passages[:2])
    (tmp_path / "bm25" / "vocab.tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.tokenizer.json"):
        BM25Index.load(tmp_path / "bm25")


def test_built_index_records_bm25_and_searches_it(built: Path, kb80: Path) -> None:
    manifest = json.loads((current_build(built) / "manifest.json").read_text())
    entry = manifest["bm25"]
    assert entry["count"] == manifest["count"] == 80 and entry["library"] == "bm25s"
    assert set(entry["files"]) == set(BM25_FILES) and not entry["reused"]
    passages = load_corpus(kb80)
    reference = BM25Index.build(passages)
    with SearchIndex.open(built) as index:
        assert index.summary()["bm25"] is True
        hits = index.bm25_search(QUERIES, 5)
        scores, rows = reference.search(QUERIES, 5)
        for q_hits, q_scores, q_rows in zip(hits, scores, rows):
            assert [r for r, _ in q_hits] == [int(r) for r, s in zip(q_rows, q_scores) if s > 0]
        assert hits[2] == []                        # no indexed term: nothing retrieved
        top = index.passages([hits[1][0][0]])[0]
        assert "apple" in f"{top.title} {top.text}".lower() or "harvest" in top.text.lower()


def test_tampered_or_missing_bm25_files_are_refused(built: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(built, copy, symlinks=True)
    target = current_build(copy) / "bm25" / "data.csc.index.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match=r"data\.csc\.index\.npy: SHA-256 differs"):
        SearchIndex.open(copy)
    shutil.rmtree(current_build(copy) / "bm25")
    with pytest.raises(IndexLoadError, match="missing .the manifest records a BM25 index"):
        SearchIndex.open(copy, verify=False)


def test_index_without_bm25_still_opens_dense_only(built: Path, index_without_bm25) -> None:
    old = index_without_bm25(built)
    with SearchIndex.open(old) as index:
        assert index.bm25 is None and index.summary()["bm25"] is False and len(index) == 80
        with pytest.raises(IndexLoadError, match="has no BM25 index"):
            index.bm25_search(["river"], 3)


def test_rebuild_reuses_bm25_only_for_the_same_passages(built: Path, kb80: Path, make_kb, tiny_encoder,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "rebuilt"
    shutil.copytree(built, out, symlinks=True)
    build_index(tiny_encoder, [kb80], out, model_dir="tiny", progress=False)
    again = json.loads((current_build(out) / "manifest.json").read_text())["bm25"]
    assert again["reused"] is True
    assert again["files"] == json.loads((current_build(built) / "manifest.json").read_text())["bm25"]["files"]
    build_index(tiny_encoder, [make_kb("kb70.jsonl", 0, 70)], out, model_dir="tiny", progress=False)
    changed = json.loads((current_build(out) / "manifest.json").read_text())["bm25"]
    assert changed["reused"] is False and changed["count"] == 70
    build_index(tiny_encoder, [make_kb("kb70.jsonl", 0, 70)], out, model_dir="tiny", progress=False, bm25=False)
    assert "bm25" not in json.loads((current_build(out) / "manifest.json").read_text()) and not (current_build(out) / "bm25").exists()
