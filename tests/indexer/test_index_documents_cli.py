"""Documents live, through the real front door: `dpr index --chunk`, `dpr kb upsert|delete`,
`dpr index compact|rollback` and `dpr eval --index --filter` over a chunked index.

The knowledge base is 15 documents of 2-3 joined nq_oracle gold passages, each with metadata
``{"source": "wiki"|"news", "year": int}``; the model is the tiny random DistilBERT of tests/conftest.py.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.sentences import split_sentences
from driver.main import main
from indexer import SearchIndex
from indexer.builds import current_build
from indexer.live_index import LiveIndex, embed_document
from retriever import DualEncoder, EncoderConfig

TRAIN = Path(__file__).resolve().parents[2] / "data" / "nq_oracle" / "nq-oracle-train.json"
CHUNK = "words:40"
N_DOCS = 15
SCHEMA = {"source": "string", "year": "number"}


# ---------------------------------------------------------------------------------------------- data


def _gold_texts() -> list[tuple[str, str]]:
    """``(title, text)`` of the train file's gold contexts, unique by text, in file order."""
    seen: dict[str, str] = {}
    for record in json.loads(TRAIN.read_text(encoding="utf-8")):
        seen.setdefault(record["gold_context"]["text"], record["gold_context"]["title"])
    return [(title, text) for text, title in seen.items()]


GOLD = _gold_texts()


def _document(doc_id: str, first: int, parts: int, source: str, year: int) -> dict[str, Any]:
    chosen = GOLD[first:first + parts]
    return {"id": doc_id, "title": chosen[0][0], "text": "\n\n".join(text for _, text in chosen),
            "metadata": {"source": source, "year": year}}


def _documents() -> list[dict[str, Any]]:
    docs, at = [], 0
    for i in range(N_DOCS):
        parts = 2 if i % 2 == 0 else 3
        docs.append(_document(f"d{i:02d}", at, parts, "wiki" if i % 2 == 0 else "news", 1990 + i))
        at += parts
    return docs


DOCS = _documents()                       # GOLD[0:37]; later gold texts make the upserted documents
BY_ID = {d["id"]: d for d in DOCS}


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _words(text: str, start: int, stop: int) -> str:
    return " ".join(text.split()[start:stop])


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random encoder saved as `dpr train` saves a model (what `dpr kb upsert` reloads)."""
    config = EncoderConfig(base_model=str(tiny_base), pooling="mean", similarity="cos", query_max_length=32,
                           passage_max_length=64)
    path = tmp_path_factory.mktemp("docs-model") / "model"
    DualEncoder.from_base(config).save(path)
    return path


@pytest.fixture(scope="module")
def encoder(model: Path) -> DualEncoder:
    return DualEncoder.load(model)


@pytest.fixture(scope="module")
def docs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_jsonl(tmp_path_factory.mktemp("docs") / "docs.jsonl", DOCS)


def _index(model: Path, kb: Path, out: Path, *extra: str) -> int:
    return main(["index", "--model", str(model), "--kb", str(kb), "--out", str(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def built(model: Path, docs_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dpr index --chunk words:40` of the 15 documents (never modified: tests that write copy it)."""
    out = tmp_path_factory.mktemp("built") / "idx"
    assert _index(model, docs_file, out, "--chunk", CHUNK) == 0
    return out


@pytest.fixture()
def index_copy(built: Path, tmp_path: Path) -> Path:
    """A private copy of ``built`` (symlinks kept) for tests that change the knowledge base."""
    out = tmp_path / "idx"
    shutil.copytree(built, out, symlinks=True)
    return out


def _manifest(index_dir: Path) -> dict[str, Any]:
    return json.loads((current_build(index_dir) / "manifest.json").read_text())


def _log_bytes(index_dir: Path) -> dict[str, bytes]:
    live = index_dir / "live"
    return {p.name: p.read_bytes() for p in sorted(live.glob("*.jsonl"))} if live.is_dir() else {}


class _Live:
    """A fresh ``LiveIndex`` over what ``index_dir/current`` is now, as a server that (re)opens it sees it."""

    def __init__(self, index_dir: Path) -> None:
        self.index = SearchIndex.open(index_dir)
        self.live = LiveIndex(self.index)

    def __enter__(self) -> LiveIndex:
        return self.live

    def __exit__(self, *exc: object) -> None:
        self.index.close()


def _knowledge_base(live: LiveIndex) -> dict[str, tuple]:
    """Every passage a search over ``live`` can return (a dense search for all of them): pid -> content."""
    query = np.ones((1, live.index.dim), dtype=np.float32)
    rows = [r for r, _ in live.search(query, len(live))[0]]
    assert len(rows) == len(live)
    return {p.pid: (p.doc_id, p.title, p.text, p.start, p.end, p.metadata) for p in live.passages(rows)}


def _dpr_kb(index_dir: Path, *argv: str) -> int:
    return main(["kb", argv[0], "--index", str(index_dir), *argv[1:], "--no-progress"])


# ------------------------------------------------------------------------------------ 1. dpr index --chunk


def test_chunked_build_records_documents_offsets_and_metadata(built: Path) -> None:
    documents = _manifest(built)["documents"]
    assert documents["chunk"] == CHUNK
    assert documents["metadata_fields"] == SCHEMA
    assert documents["live_from"] == 1
    with SearchIndex.open(built) as index:
        passages = index.all_passages()
        assert len(passages) == len(index) == _manifest(built)["count"]
    per_doc: dict[str, list] = {}
    for p in passages:
        per_doc.setdefault(p.doc_id, []).append(p)
        doc = BY_ID[p.doc_id]
        assert p.pid.startswith(p.doc_id + "#")
        assert doc["text"][p.start:p.end] == p.text and p.title == doc["title"]
        assert p.metadata == doc["metadata"]
        assert 1 <= len(p.text.split()) <= 40
    assert set(per_doc) == set(BY_ID)
    for doc_id, parts in per_doc.items():
        words = BY_ID[doc_id]["text"].split()
        assert [p.pid for p in parts] == [f"{doc_id}#{i}" for i in range(len(parts))]
        assert len(parts) == -(-len(words) // 40) >= 2                           # no overlap: ceil(words / 40)
        assert sum(len(p.text.split()) for p in parts) == len(words)
        assert all(a.end <= b.start for a, b in zip(parts, parts[1:]))


def test_chunk_with_a_stride_overlaps(model: Path, docs_file: Path, built: Path, tmp_path: Path) -> None:
    out = tmp_path / "overlap"
    assert _index(model, docs_file, out, "--chunk", "words:40:20", "--no-bm25") == 0
    assert _manifest(out)["documents"]["chunk"] == "words:40:20"
    with SearchIndex.open(out) as overlapping, SearchIndex.open(built) as plain:
        assert len(overlapping) > len(plain)
        passages = overlapping.all_passages()
    per_doc: dict[str, list] = {}
    for p in passages:
        per_doc.setdefault(p.doc_id, []).append(p)
        assert BY_ID[p.doc_id]["text"][p.start:p.end] == p.text
    for parts in per_doc.values():
        assert all(b.start < a.end for a, b in zip(parts, parts[1:]))           # consecutive windows share words
        assert all(_words(a.text, 20, 40) == _words(b.text, 0, 20) for a, b in zip(parts, parts[1:]))


def test_sentence_index_and_its_live_updates_cut_at_sentences(model: Path, docs_file: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sentences"
    assert _index(model, docs_file, out, "--chunk", "sentences:1", "--no-bm25") == 0
    assert _manifest(out)["documents"]["chunk"] == "sentences:1"
    fresh = _document("fresh", 40, 2, "news", 2024)
    assert _dpr_kb(out, "upsert", str(_write_jsonl(tmp_path / "new.jsonl", [fresh]))) == 0
    assert "1 new" in capsys.readouterr().out
    with _Live(out) as live:
        kb = _knowledge_base(live)
    for doc in [*DOCS, fresh]:
        parts = sorted((pid for pid in kb if kb[pid][0] == doc["id"]), key=lambda pid: int(pid.split("#")[1]))
        # The build and the live segment cut alike: each passage one sentence of the document, in order.
        assert [kb[pid][2] for pid in parts] == split_sentences(doc["text"]), doc["id"]
        assert all(doc["text"][kb[pid][3]:kb[pid][4]] == kb[pid][2] for pid in parts)
        assert len(parts) > 2


@pytest.mark.parametrize("spec", ["words:0", "lines:5", "words:10:20"])
def test_bad_chunk_spec_is_refused(spec: str, model: Path, docs_file: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "idx"
    assert _index(model, docs_file, out, "--chunk", spec) == 2
    assert f"chunk spec {spec!r}" in capsys.readouterr().err
    assert not out.exists()


def test_empty_document_is_refused_naming_it(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kb = _write_jsonl(tmp_path / "docs.jsonl", [DOCS[0], {"id": "blank", "title": "t", "text": "  \n "}, DOCS[1]])
    out = tmp_path / "idx"
    assert _index(model, kb, out, "--chunk", CHUNK) == 2
    err = capsys.readouterr().err
    assert f"{kb}:2" in err and "'blank'" in err and "no text" in err
    assert not out.exists()


def test_chunk_with_shard_is_refused(model: Path, docs_file: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shard0"
    assert _index(model, docs_file, out, "--chunk", CHUNK, "--shard", "0/2") == 2
    err = capsys.readouterr().err
    assert "--chunk is supported by a single-process" in err and "--shard" in err
    assert not out.exists()


# ------------------------------------------------------------------------------- 2. passages with metadata


def _passage_records() -> list[dict[str, Any]]:
    return [{"_id": f"p{i}", "title": title, "text": text,
             "metadata": {"source": "wiki" if i % 3 else "news", "year": 2000 + i}}
            for i, (title, text) in enumerate(GOLD[:12])]


def test_passage_records_keep_their_metadata(model: Path, tmp_path: Path) -> None:
    records = _passage_records()
    records[5]["metadata"]["reviewed"] = True
    kb = _write_jsonl(tmp_path / "passages.jsonl", records)
    out = tmp_path / "idx"
    assert _index(model, kb, out, "--no-bm25") == 0
    documents = _manifest(out)["documents"]
    assert documents["chunk"] is None
    assert documents["metadata_fields"] == {**SCHEMA, "reviewed": "bool"}
    with SearchIndex.open(out) as index:
        stored = {p.pid: p for p in index.all_passages()}
        assert stored["p5"].metadata == {"source": "wiki", "year": 2005, "reviewed": True}
        assert LiveIndex(index).schema == {**SCHEMA, "reviewed": "bool"}
    assert set(stored) == {r["_id"] for r in records}
    for r in records:
        assert (stored[r["_id"]].text, stored[r["_id"]].metadata) == (r["text"], r["metadata"])


def test_conflicting_metadata_type_is_refused_naming_the_field(model: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    records = _passage_records()
    records[7]["metadata"]["year"] = "2007"
    kb = _write_jsonl(tmp_path / "passages.jsonl", records)
    out = tmp_path / "idx"
    assert _index(model, kb, out) == 2
    err = capsys.readouterr().err
    assert "'year'" in err and "number" in err and "string" in err and "'p7'" in err
    assert not out.exists()


# -------------------------------------------------------------------------------- 3. dpr kb upsert/delete


def test_kb_upsert_then_delete(index_copy: Path, encoder: DualEncoder, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    fresh = _document("fresh", 40, 2, "news", 2024)
    assert _dpr_kb(index_copy, "upsert", str(_write_jsonl(tmp_path / "new.jsonl", [fresh]))) == 0
    assert "1 new" in capsys.readouterr().out
    fresh_passages, fresh_vectors = embed_document(_parse(fresh), CHUNK, encoder)
    assert len(fresh_passages) >= 2
    with _Live(index_copy) as live:
        before = _knowledge_base(live)
        assert {p.pid for p in fresh_passages} <= set(before)
        assert before[fresh_passages[0].pid][0] == "fresh" and before[fresh_passages[0].pid][5] == fresh["metadata"]
        # A dense search with the new passage's own vector finds it first; a filtered one too.
        assert live.passages([live.search(fresh_vectors[:1], 1)[0][0][0]])[0].pid == "fresh#0"
        flt = live.parse_filter({"year": {"gte": 2020}})
        hits = live.passages([r for r, _ in live.search(fresh_vectors[:1], 50, flt)[0]])
        assert {p.doc_id for p in hits} == {"fresh"} and len(hits) == len(fresh_passages)
        d02 = [pid for pid in before if pid.startswith("d02#")]
        assert d02 and live.passage(d02[0]) is not None

    assert _dpr_kb(index_copy, "delete", "d02", "fresh") == 0
    with _Live(index_copy) as live:
        after = _knowledge_base(live)
        assert set(after) == set(before) - set(d02) - {p.pid for p in fresh_passages}
        assert live.passage(d02[0]) is None and live.passage("fresh#0") is None
        assert not live.has_document("d02") and not live.has_document("fresh") and live.has_document("d03")
        assert live.summary()["deleted_passages"] == len(d02) + len(fresh_passages)
        # A search that once found them no longer does.
        assert "fresh" not in {p.doc_id for p in live.passages([r for r, _ in live.search(fresh_vectors, 10)[0]])}


def test_kb_upsert_embeds_at_the_builds_precision(model: Path, docs_file: Path, encoder: DualEncoder,
                                                   tmp_path: Path) -> None:
    """A bf16 build (`--quantize bf16`, auto on an AMX CPU): offline upserts get the bf16 vectors a rebuild
    would give them, as the server's live writes do, not fp32 ones."""
    from retriever.runtime import prepare_encoder

    out = tmp_path / "bf16"
    assert _index(model, docs_file, out, "--chunk", CHUNK, "--quantize", "bf16", "--no-bm25") == 0
    assert _manifest(out)["model"]["quantize"] == "bf16"
    fresh = _document("fresh", 40, 2, "news", 2024)
    assert _dpr_kb(out, "upsert", str(_write_jsonl(tmp_path / "new.jsonl", [fresh]))) == 0
    with _Live(out) as live:
        slots, vectors = live.segment.view().alive()
    passages, fp32 = embed_document(_parse(fresh), CHUNK, encoder)
    _, bf16 = embed_document(_parse(fresh), CHUNK, prepare_encoder(DualEncoder.load(model), "torch", "bf16"))
    assert len(slots) == len(passages)
    np.testing.assert_allclose(vectors, bf16, atol=1e-6)
    assert not np.allclose(vectors, fp32, atol=1e-6)


def _parse(doc: dict[str, Any]) -> Any:
    from common.documents import parse_document

    return parse_document(doc, "test")


def test_kb_delete_unknown_and_upsert_type_conflict_fail(index_copy: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert _dpr_kb(index_copy, "delete", "d01", "no-such-doc") == 2
    err = capsys.readouterr().err
    assert "no-such-doc" in err and "--missing-ok" in err
    with _Live(index_copy) as live:
        assert live.has_document("d01")                         # nothing deleted when an id is unknown
    assert _dpr_kb(index_copy, "delete", "no-such-doc", "--missing-ok") == 0
    capsys.readouterr()

    log = _log_bytes(index_copy)
    bad = _document("wrong", 40, 2, "news", 2024)
    bad["metadata"]["year"] = "2024"
    assert _dpr_kb(index_copy, "upsert", str(_write_jsonl(tmp_path / "bad.jsonl", [_document("ok", 42, 1, "wiki", 1),
                                                                                  bad]))) == 2
    err = capsys.readouterr().err
    assert "'year'" in err and "number" in err
    assert _log_bytes(index_copy) == log                        # nothing written, not even the good document
    with _Live(index_copy) as live:
        assert not live.has_document("ok") and not live.has_document("wrong")

    # A field new to the index with two types within one upsert: refused too (the log would hold a line
    # no reader can apply, and the index would no longer open).
    a, b = _document("lang-a", 40, 1, "wiki", 2000), _document("lang-b", 41, 1, "wiki", 2000)
    a["metadata"]["lang"], b["metadata"]["lang"] = "en", 5
    assert _dpr_kb(index_copy, "upsert", str(_write_jsonl(tmp_path / "langs.jsonl", [a, b]))) == 2
    err = capsys.readouterr().err
    assert "'lang'" in err and "'lang-b'" in err
    assert _log_bytes(index_copy) == log
    with _Live(index_copy) as live:
        assert not live.has_document("lang-a") and "lang" not in live.schema


# ------------------------------------------------------------------------------------ 4. dpr index compact


REPLACED = _document("d05", 44, 2, "wiki", 2020)                  # was news, 1995, other text
NEW = _document("n01", 46, 3, "news", 2021)
DELETED = "d03"
FINAL = [d for d in DOCS if d["id"] not in (DELETED, REPLACED["id"])] + [REPLACED, NEW]


def _write_and_compact(index_dir: Path, tmp_path: Path) -> None:
    assert _dpr_kb(index_dir, "upsert", str(_write_jsonl(tmp_path / "up.jsonl", [NEW, REPLACED]))) == 0
    assert _dpr_kb(index_dir, "delete", DELETED) == 0
    with _Live(index_dir) as live:
        assert live.summary()["live_passages"] > 0 and live.summary()["deleted_passages"] > 0


def _top10(index: SearchIndex, encoder: DualEncoder, queries: list[str]) -> Iterator[tuple[list, list]]:
    scores, rows = index.search(encoder.encode_queries(queries), 10)
    for q_scores, q_rows in zip(scores, rows):
        yield [p.pid for p in index.passages(q_rows.tolist())], q_scores.tolist()
    for hits in index.bm25_search(queries, 10):
        yield [p.pid for p in index.passages([r for r, _ in hits])], [s for _, s in hits]


def _same_ranking(a: tuple[list, list], b: tuple[list, list]) -> None:
    (a_ids, a_scores), (b_ids, b_scores) = a, b
    np.testing.assert_allclose(a_scores, b_scores, atol=1e-4)
    assert len(a_ids) == len(b_ids)
    # Ties aside: an id whose score is clearly above the last one kept must be in both lists.
    clear = [i for i, s in zip(a_ids, a_scores) if s > a_scores[-1] + 1e-4]
    assert set(clear) <= set(b_ids)
    strict = [(i, s) for i, s in zip(a_ids, a_scores)
              if all(abs(s - t) > 1e-4 for j, t in zip(a_ids, a_scores) if j != i)]
    for pid, _ in strict:                                        # an untied id sits at the same rank
        assert b_ids.index(pid) == a_ids.index(pid)


def test_compaction_equals_a_fresh_build(index_copy: Path, model: Path, encoder: DualEncoder,
                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_and_compact(index_copy, tmp_path)
    before = _manifest(index_copy)
    assert main(["index", "compact", str(index_copy), "--no-progress"]) == 0
    assert "nothing embedded" in capsys.readouterr().out
    after = _manifest(index_copy)
    assert after["documents"]["live_from"] > before["documents"]["live_from"]
    assert after["documents"]["chunk"] == CHUNK and after["compacted"]["embedded"] == 0
    with _Live(index_copy) as live:
        assert live.summary()["live_passages"] == 0 and live.summary()["deleted_passages"] == 0
        assert not live.has_document(DELETED) and live.has_document("n01")

    fresh_dir = tmp_path / "fresh"
    assert _index(model, _write_jsonl(tmp_path / "final.jsonl", FINAL), fresh_dir, "--chunk", CHUNK) == 0
    assert _manifest(fresh_dir)["documents"]["metadata_fields"] == after["documents"]["metadata_fields"] == SCHEMA
    with SearchIndex.open(index_copy) as compacted, SearchIndex.open(fresh_dir) as fresh:
        ours = {p.pid: p for p in compacted.all_passages()}
        theirs = {p.pid: p for p in fresh.all_passages()}
        assert set(ours) == set(theirs)
        assert {p.doc_id for p in ours.values()} == {d["id"] for d in FINAL}
        for pid, p in ours.items():
            q = theirs[pid]
            assert (p.text, p.title, p.doc_id, p.start, p.end, p.metadata) == \
                   (q.text, q.title, q.doc_id, q.start, q.end, q.metadata), pid
            np.testing.assert_allclose(compacted.embeddings[compacted.row_of(pid)], fresh.embeddings[fresh.row_of(pid)],
                                       atol=1e-5, err_msg=pid)
        assert ours["d05#0"].metadata == REPLACED["metadata"] and ours["d05#0"].text in REPLACED["text"]
        queries = [_words(NEW["text"], 10, 25), _words(REPLACED["text"], 50, 62), _words(DOCS[4]["text"], 0, 12),
                   "who won the world cup"]
        for a, b in zip(_top10(compacted, encoder, queries), _top10(fresh, encoder, queries), strict=True):
            _same_ranking(a, b)


def test_writes_after_compaction_and_rollback_are_kept(index_copy: Path, encoder: DualEncoder, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    _write_and_compact(index_copy, tmp_path)
    old_build = current_build(index_copy).name
    late = _parse(_document("late", 50, 2, "wiki", 2025))
    with SearchIndex.open(index_copy) as old:                     # a server still on the old build
        old_live = LiveIndex(old)
        assert main(["index", "compact", str(index_copy), "--no-progress"]) == 0
        assert current_build(index_copy).name != old_build
        old_live.upsert(late, *embed_document(late, old_live.chunk, encoder))
        assert old_live.has_document("late")
        old_kb = _knowledge_base(old_live)
    with _Live(index_copy) as live:                              # the new build applies the write made after rotation
        assert live.has_document("late") and live.summary()["live_passages"] == len(live.document("late")) >= 1
        new_kb = _knowledge_base(live)
    assert new_kb == old_kb and "late#0" in new_kb and not any(pid.startswith(DELETED + "#") for pid in new_kb)

    capsys.readouterr()
    assert main(["index", "rollback", str(index_copy)]) == 0
    assert current_build(index_copy).name == old_build and "rolled back" in capsys.readouterr().out
    with _Live(index_copy) as live:                              # previous build + every log file
        assert live.index.build == old_build
        assert _knowledge_base(live) == new_kb


# ---------------------------------------------------------------------------------------- 5. dpr eval


@pytest.fixture(scope="module")
def beir_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BEIR folder over the 15 documents; qrels name documents. q_news's only relevant one is news."""
    folder = tmp_path_factory.mktemp("beir-docs") / "beir"
    (folder / "qrels").mkdir(parents=True)
    _write_jsonl(folder / "corpus.jsonl", [{"_id": d["id"], "title": d["title"], "text": d["text"],
                                             "metadata": d["metadata"]} for d in DOCS])
    queries = {"q_wiki": ("d00", 48), "q_news": ("d01", 90), "q_wiki2": ("d04", 10), "q_news2": ("d07", 130)}
    _write_jsonl(folder / "queries.jsonl", [{"_id": q, "text": _words(BY_ID[d]["text"], at, at + 14)}
                                            for q, (d, at) in queries.items()])
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t1\n" for q, (d, _) in queries.items()))
    return folder


def _eval(built: Path, beir: Path, out: Path, *extra: str) -> tuple[dict[str, Any], dict[str, dict[str, list[str]]]]:
    """`dpr eval --index --bm25` -> (systems by name, runs by system name {qid: [ids]})."""
    assert main(["eval", "--data", str(beir), "--index", str(built), "--bm25", "--out", str(out / "report.json"),
                 "--run-out", str(out / "run.trec"), "--resamples", "20", "--no-progress", *extra]) == 0
    report = json.loads((out / "report.json").read_text())
    runs: dict[str, dict[str, list[str]]] = {}
    for name, path in report["trec_runs"].items():
        for line in Path(path).read_text().splitlines():
            qid, _, doc, *_ = line.split()
            runs.setdefault(name, {}).setdefault(qid, []).append(doc)
    return {s["name"]: s for s in report["systems"]}, runs


def test_eval_ranks_documents_and_filters(built: Path, beir_docs: Path, tmp_path: Path) -> None:
    (tmp_path / "all").mkdir()
    systems, runs = _eval(built, beir_docs, tmp_path / "all")
    dense, bm25 = systems["dense"], systems["bm25"]
    assert dense["units"] == "documents" and dense["gold_in_kb"] == 1.0
    for name in ("dense", "bm25"):
        assert set(runs[name]) == {"q_wiki", "q_news", "q_wiki2", "q_news2"}
        for ids in runs[name].values():
            assert not any("#" in i for i in ids) and set(ids) <= set(BY_ID)
            assert len(ids) == len(set(ids))                                         # one entry per document
    # Every passage is fetched for k=100, so every document is ranked: a qrel on a document is always hit.
    assert all(len(ids) == N_DOCS for ids in runs["dense"].values())
    assert dense["metrics"]["recall@100"]["value"] == 1.0
    # Queries are sentences copied from their document: BM25 finds it.
    assert bm25["metrics"]["recall@10"]["value"] > 0.5
    assert bm25["per_query"]["recall@1"]["q_news"] == 1.0

    (tmp_path / "wiki").mkdir()
    systems, runs = _eval(built, beir_docs, tmp_path / "wiki", "--filter", '{"source": "wiki"}')
    wiki = {d["id"] for d in DOCS if d["metadata"]["source"] == "wiki"}
    assert systems["dense"]["filter"] == {"source": "wiki"}
    for name in ("dense", "bm25"):
        assert all(set(ids) <= wiki for ids in runs[name].values()), name
    assert all(len(ids) == len(wiki) for ids in runs["dense"].values())
    per_query = systems["dense"]["per_query"]["recall@100"]
    assert per_query["q_news"] == per_query["q_news2"] == 0.0 and per_query["q_wiki"] == per_query["q_wiki2"] == 1.0
    assert systems["dense"]["metrics"]["recall@100"]["value"] == 0.5
    assert systems["bm25"]["per_query"]["recall@10"]["q_news"] == 0.0


@pytest.mark.parametrize(("flt", "message"), [('{"source": ', "--filter is not JSON"),
                                              ('["wiki"]', "--filter must be a JSON object"),
                                              ('{"colour": "red"}', "unknown metadata field 'colour' (fields: source, "
                                                                    "year)"),
                                              ('{"year": "1990"}', "filter field 'year' is a number")])
def test_eval_bad_filter_fails_clearly(flt: str, message: str, built: Path, beir_docs: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--data", str(beir_docs), "--index", str(built), "--filter", flt, "--no-progress"]) == 2
    assert message in capsys.readouterr().err
