"""The live knowledge base: filtered search against brute force, the live segment in every mode,
the log's durability rules (torn tails, gaps, foreign models) and consistency under concurrency."""
from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import numpy as np
import pytest

from common.documents import Document
from indexer import SearchIndex, build_index
from indexer import live_index as live_module
from indexer import searcher as searcher_module
from indexer.config import IndexConfig
from indexer.filters import matches, parse_filter
from indexer.live_index import LiveIndex, embed_document
from indexer.live_log import LiveLog, LiveLogError
from tests.indexer.conftest import gold_records, write_jsonl

SOURCES = ("wiki", "news", "blog")


def _with_metadata(records: list[dict], seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i, r in enumerate(records):
        meta = {"source": SOURCES[i % 3], "year": 1990 + rng.randrange(35), "lang": rng.choice(["en", "de"])}
        if i % 7 == 0:
            del meta["lang"]                       # some passages lack a field
        out.append({**r, "metadata": meta})
    return out


@pytest.fixture()
def meta_kb(tmp_path: Path) -> tuple[Path, list[dict]]:
    records = _with_metadata(gold_records("nq-oracle-train.json", 0, 90))
    return write_jsonl(tmp_path / "meta.jsonl", records), records


def _open(path: Path) -> tuple[SearchIndex, LiveIndex]:
    index = SearchIndex.open(path)
    return index, LiveIndex(index)


FILTERS = [
    {"source": "wiki"},
    {"year": {"gte": 2000, "lt": 2010}},
    {"lang": {"in": ["de"]}, "source": {"ne": "news"}},
    {"source": {"nin": ["wiki", "blog"]}, "year": {"gt": 1995}},
    {"lang": "en", "year": {"lte": 1992}},
]


def _brute(index: SearchIndex, records: list[dict], q: np.ndarray, flt, k: int) -> list[list[tuple[int, float]]]:
    rows = index_rows(index, records)
    keep = np.array([matches(records[i]["metadata"], flt) for i in rows])
    scores = q @ index.embeddings.T                                              # [n, N]
    out = []
    for row_scores in scores:
        cand = np.flatnonzero(keep)
        order = np.lexsort((cand, -row_scores[cand]))[:k]
        out.append([(int(cand[j]), float(row_scores[cand[j]])) for j in order])
    return out


def index_rows(index: SearchIndex, records: list[dict]) -> list[int]:
    """For each row of the index, the position of its record (rows follow the KB order)."""
    by_id = {r["_id"]: i for i, r in enumerate(records)}
    return [by_id[p.pid] for p in index.passages(list(range(len(index))))]


@pytest.mark.parametrize("exact_rows", [20_000, 0], ids=["brute-force-subset", "faiss-selector"])
def test_filtered_flat_search_equals_brute_force(tiny_encoder, meta_kb, tmp_path: Path, monkeypatch,
                                                 exact_rows: int) -> None:
    monkeypatch.setattr(searcher_module, "EXACT_FILTER_ROWS", exact_rows)
    monkeypatch.setattr(searcher_module, "EXACT_FILTER_SHARE", 1)
    kb, records = meta_kb
    index, live = _open(build_index(tiny_encoder, [kb], tmp_path / "idx", model_dir="tiny", progress=False))
    with index:
        assert live.schema == {"lang": "string", "source": "string", "year": "number"}
        # 1 query (FAISS scan) and 9 (the torch matmul path) take different code paths.
        for n_queries in (1, 9):
            q = tiny_encoder.encode_queries([f"question about {w}" for w in "abcdefghi"[:n_queries]])
            for spec in FILTERS:
                flt = parse_filter(spec, live.schema)
                got = live.search(q, 10, flt)
                want = _brute(index, records, q, flt, 10)
                for g, w in zip(got, want, strict=True):
                    assert [r for r, _ in g] == [r for r, _ in w], spec
                    np.testing.assert_allclose([s for _, s in g], [s for _, s in w], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("index_type", ["hnsw", "ivfflat"])
def test_filtered_approximate_search_only_returns_matches(tiny_encoder, meta_kb, tmp_path: Path, monkeypatch,
                                                          index_type: str) -> None:
    monkeypatch.setattr(searcher_module, "EXACT_FILTER_ROWS", 0)     # force FAISS's IDSelector path
    kb, records = meta_kb
    config = IndexConfig(index_type=index_type, ivf_nlist=4, nprobe=4)
    index, live = _open(build_index(tiny_encoder, [kb], tmp_path / "idx", config, model_dir="tiny", progress=False))
    with index:
        q = tiny_encoder.encode_queries(["who won the world cup", "largest river in europe"])
        metas = {p.pid: p.metadata for p in index.all_passages()}
        for spec in FILTERS:
            flt = parse_filter(spec, live.schema)
            got = live.search(q, 5, flt)
            want = _brute(index, records, q, flt, 5)
            for g, w in zip(got, want, strict=True):
                passages = index.passages([r for r, _ in g])
                assert all(matches(metas[p.pid], flt) for p in passages), spec
                assert len(g) == len(w)                  # short answers fall back to exact search
                # On 90 vectors HNSW with ef 128 and IVF probing every list are exact.
                assert {r for r, _ in g} == {r for r, _ in w}


def test_filtered_bm25_keeps_the_unfiltered_order(tiny_encoder, meta_kb, tmp_path: Path) -> None:
    kb, _ = meta_kb
    index, live = _open(build_index(tiny_encoder, [kb], tmp_path / "idx", model_dir="tiny", progress=False))
    with index:
        queries = ["football world cup final", "river europe"]
        everything = live.bm25_search(queries, len(index))
        metas = {p.pid: p.metadata for p in index.all_passages()}
        rows_meta = {r: metas[p.pid] for r, p in enumerate(index.passages(list(range(len(index)))))}
        for spec in FILTERS:
            flt = parse_filter(spec, live.schema)
            got = live.bm25_search(queries, 10, flt)
            for g, full in zip(got, everything, strict=True):
                want = [(r, s) for r, s in full if matches(rows_meta[r], flt)][:10]
                assert [r for r, _ in g] == [r for r, _ in want]


def test_live_bm25_weights_match_the_index(tiny_encoder, kb80: Path, tmp_path: Path) -> None:
    """A passage scored as a live one gets the score bm25s gives it as an indexed one."""
    index, _ = _open(build_index(tiny_encoder, [kb80], tmp_path / "idx", model_dir="tiny", progress=False))
    with index:
        bm25 = index.bm25
        assert bm25.avg_length and bm25.avg_length > 5
        query = "the national football team history"
        hits = dict(index.bm25_search([query], len(index))[0])
        checked = 0
        for row, score in list(hits.items())[:10]:
            (weights,) = bm25.term_weights(index.passages([row]), bm25.avg_length)
            live_score = sum(weights.get(t, 0.0) for t in bm25.query_terms([query])[0])
            assert live_score == pytest.approx(score, rel=1e-4)
            checked += 1
        assert checked >= 3


def _doc(doc_id: str, text: str, **metadata: object) -> Document:
    return Document(doc_id=doc_id, title="Live", text=text, metadata=metadata or None)


def test_upserts_and_deletes_in_every_mode(tiny_encoder, meta_kb, tmp_path: Path) -> None:
    kb, records = meta_kb
    out = build_index(tiny_encoder, [kb], tmp_path / "idx", model_dir="tiny", progress=False)
    index, live = _open(out)
    with index:
        text = records[5]["text"]                    # words the build's BM25 vocabulary knows
        doc = _doc("fresh", text, source="zine", year=2030)
        result = live.upsert(doc, *embed_document(doc, live.chunk, tiny_encoder))
        assert result == {"id": "fresh", "passages": 1, "created": True}
        q = tiny_encoder.encode_queries([text])
        n = len(index)
        for name, ranked in (("dense", live.search(q, 3)), ("bm25", live.bm25_search([text], 3)),
                             ("hybrid", live.hybrid_search(q, [text], 3))):
            rows = [r for r, _ in ranked[0]]
            assert n in rows, name                   # the live passage (row n + slot 0)
            assert live.passages(rows)[rows.index(n)].pid == "fresh"
        # the new field is filterable, the built passages lack it
        flt = live.parse_filter({"source": "zine"})
        assert [r for r, _ in live.search(q, 10, flt)[0]] == [n]
        # delete it and a built document: gone from every mode
        built = records[5]["_id"]
        assert live.delete("fresh") and live.delete(built) and not live.delete("no-such-doc")
        for name, ranked in (("dense", live.search(q, n)), ("bm25", live.bm25_search([text], n)),
                             ("hybrid", live.hybrid_search(q, [text], n))):
            ids = {p.pid for p in live.passages([r for r, _ in ranked[0]])}
            assert "fresh" not in ids and built not in ids, name
        assert live.passage(built) is None and live.passage("fresh") is None
        assert len(live) == n - 1

    # a restarted reader (a new process) replays the log to the same state
    index2, live2 = _open(out)
    with index2:
        assert live2.passage(built) is None and not live2.has_document("fresh")
        assert live2.summary()["deleted_passages"] == 2 and len(live2) == n - 1


def test_many_tombstones_switch_from_overfetch_to_a_mask(tiny_encoder, kb80: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    index, live = _open(build_index(tiny_encoder, [kb80], tmp_path / "idx", model_dir="tiny", progress=False))
    with index:
        gone = [p.pid for p in index.passages(list(range(0, 80, 3)))]
        assert not live.delete_many(gone)
        q = tiny_encoder.encode_queries(["a question", "another one"])
        results = {}
        for limit in (1024, 2):
            monkeypatch.setattr(live_module, "OVERFETCH_MAX", limit)
            results[limit] = live.search(q, 20)
        for a, b in zip(results[1024], results[2], strict=True):
            assert [r for r, _ in a] == [r for r, _ in b]
            np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-5)
        returned = {p.pid for hits in results[2] for p in live.passages([r for r, _ in hits])}
        assert returned and not returned & set(gone)


def test_a_torn_last_line_is_dropped_and_cut_by_the_next_writer(tiny_encoder, kb80: Path, tmp_path: Path) -> None:
    out = build_index(tiny_encoder, [kb80], tmp_path / "idx", model_dir="tiny", progress=False)
    index, live = _open(out)
    with index:
        doc = _doc("a", "first live document about rivers")
        live.upsert(doc, *embed_document(doc, None, tiny_encoder))
    log = LiveLog(out)
    (number,) = log.files()
    with open(log.path(number), "ab") as f:
        f.write(b'{"op": "upsert", "id": "torn", "vec')        # a writer killed mid-line: never acknowledged
    index, live = _open(out)
    with index:
        assert live.has_document("a") and not live.has_document("torn")
        doc = _doc("b", "second live document about mountains")
        live.upsert(doc, *embed_document(doc, None, tiny_encoder))
    lines = log.path(number).read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line)["id"] in ("a", "b") for line in lines[:-1])
    index, live = _open(out)
    with index:
        assert live.has_document("a") and live.has_document("b")


def test_a_corrupt_line_a_gap_or_a_foreign_model_is_refused(tiny_encoder, kb80: Path, tmp_path: Path) -> None:
    out = build_index(tiny_encoder, [kb80], tmp_path / "idx", model_dir="tiny", progress=False)
    log = LiveLog(out)
    log.append([{"op": "delete", "id": "nothing"}])
    path = log.path(1)
    good = path.read_bytes()
    path.write_bytes(b"not json\n" + good)
    with pytest.raises(LiveLogError, match=r"00000001\.jsonl:1: not a JSON line"):
        _open(out)
    path.write_bytes(b'{"op": "upsert", "id": "x", "model": "someone-else", "passages": []}\n')
    with pytest.raises(LiveLogError, match="written with model weights someone-els"):
        _open(out)
    path.write_bytes(good)
    log.rotate()
    log.rotate()
    log.path(2).unlink()
    with pytest.raises(LiveLogError, match=r"00000002\.jsonl: missing from the live log"):
        _open(out)


def test_searches_never_see_half_a_document(tiny_encoder, kb80: Path, tmp_path: Path) -> None:
    """A writer replaces a 3-passage document over and over; readers always see one version, whole."""
    out = build_index(tiny_encoder, [kb80], tmp_path / "idx", model_dir="tiny", progress=False)
    index, live = _open(out)
    words = " ".join(f"w{i}" for i in range(30))
    versions = [Document("x", "T", " ".join(f"{words} v{v}" for _ in range(3)), {"version": v}) for v in range(25)]
    embedded = [embed_document(d, "words:31", tiny_encoder) for d in versions]
    assert all(len(p) == 3 for p, _ in embedded)
    q = tiny_encoder.encode_queries(["w1 w2 w3"])
    seen: list[tuple[int, ...]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                hits = live.search(q, len(index) + 10)[0]
                passages = [p for p in live.passages([r for r, _ in hits]) if p.doc_id == "x"]
                seen.append(tuple(sorted(p.metadata["version"] for p in passages)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    with index:
        readers = [threading.Thread(target=read) for _ in range(2)]
        for t in readers:
            t.start()
        for doc, (passages, vectors) in zip(versions, embedded, strict=True):
            live.upsert(doc, passages, vectors)
        done.set()
        for t in readers:
            t.join()
    assert not errors
    assert len(seen) > 10
    for versions_seen in seen:
        assert versions_seen == () or (len(versions_seen) == 3 and len(set(versions_seen)) == 1), versions_seen


def test_two_writers_on_one_document_end_with_one_whole_version(tiny_encoder, kb80: Path, tmp_path: Path) -> None:
    out = build_index(tiny_encoder, [kb80], tmp_path / "idx", model_dir="tiny", progress=False)
    writers = [_open(out) for _ in range(2)]           # as two processes: own readers, own log handles
    words = " ".join(f"w{i}" for i in range(30))

    def write(live: LiveIndex, tag: str) -> None:
        for round_ in range(10):
            doc = Document("shared", "T", " ".join(f"{words} {tag}" for _ in range(3)), {"writer": tag, "round": round_})
            live.upsert(doc, *embed_document(doc, "words:31", tiny_encoder))

    threads = [threading.Thread(target=write, args=(live, tag)) for (_, live), tag in zip(writers, "AB")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    index, live = _open(out)
    with index:
        passages = live.document("shared")
        assert len(passages) == 3
        assert len({(p.metadata["writer"], p.metadata["round"]) for p in passages}) == 1
        # every reader agrees on the final version: the last line of the log
        for other_index, other in writers:
            other.refresh()
            assert [p.metadata for p in other.document("shared")] == [p.metadata for p in passages]
            other_index.close()
