"""Documents live: ``PUT``/``DELETE``/``GET /documents/{id}``, metadata filters and ``group_by`` in
``/search`` and ``/search/batch``, and writes that survive a ``kill -9`` of a real ``dpr serve``.

The indexes are built here from 15 documents (2-3 nq_oracle gold contexts each, cut ``words:30``) with
``source``/``year``/``lang`` metadata, and from 20 plain passage records with metadata (no chunking).
Expected results are computed by brute force from those records: a dense search with ``k`` above the
knowledge base's size over a flat index returns every passage that passes the filter.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from common.documents import Document
from indexer.chunking import ChunkSpec, chunk_document

DEMO = Path(__file__).resolve().parents[2] / "data" / "nq_oracle" / "nq-oracle-train.json"
TOKEN = "documents-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODES = ("dense", "bm25", "hybrid")
MAX_K = 500
CHUNK = "words:30"
MARK = re.compile(r"vermark[A-Za-z]+")
WORD = re.compile(r"\b[a-z]{7,}\b")


def _contexts() -> list[dict[str, str]]:
    seen: set[str] = set()
    out = []
    for record in json.loads(DEMO.read_text()):
        ctx = record["gold_context"]
        if ctx["title"] not in seen:
            seen.add(ctx["title"])
            out.append(ctx)
    return out


CONTEXTS = _contexts()
# doc{i}: 2 or 3 gold contexts joined; source news every third, lang de every fourth, year 2000 + i.
DOCS: list[dict[str, Any]] = [
    {"id": f"doc{i}", "title": CONTEXTS[3 * i]["title"],
     "text": " ".join(c["text"] for c in CONTEXTS[3 * i:3 * i + 2 + i % 2]),
     "metadata": {"source": "news" if i % 3 == 0 else "wiki", "year": 2000 + i, "lang": "de" if i % 4 == 0 else "en"}}
    for i in range(15)]
DOC_BY_ID = {d["id"]: d for d in DOCS}
# p{i}: one gold context each, a passage record (no chunking).
PLAIN: list[dict[str, Any]] = [
    {"id": f"p{i}", "title": c["title"], "text": c["text"],
     "metadata": {"source": "news" if i % 2 else "wiki", "year": 1990 + i}}
    for i, c in enumerate(CONTEXTS[60:80])]


def _passage_count(text: str) -> int:
    return len(chunk_document(Document(doc_id="x", title="", text=text), ChunkSpec.parse(CHUNK)))


PASSAGES = {d["id"]: _passage_count(d["text"]) for d in DOCS}
TOTAL = sum(PASSAGES.values())


def _unique_words() -> dict[str, list[str]]:
    """Per document, the words (7+ letters) that no other document has: BM25 queries that hit only it."""
    words = {d["id"]: set(WORD.findall(f"{d['title']} {d['text']}".lower())) for d in DOCS}
    out = {}
    for doc_id, mine in words.items():
        others = set().union(*(w for d, w in words.items() if d != doc_id))
        out[doc_id] = sorted(mine - others)
    return out


UNIQUE = _unique_words()


def _with_word(word: str, filler_doc: str, n_words: int, every: int = 10) -> str:
    """``n_words`` words of a built document's text with ``word`` before every ``every``-th one."""
    out = []
    for i, w in enumerate(DOC_BY_ID[filler_doc]["text"].split()[:n_words]):
        if i % every == 0:
            out.append(word)
        out.append(w)
    return " ".join(out)


def _version_text(mark: str) -> str:
    """90 words, so 3 passages of 30, each holding the marker ``vermark<mark>`` three times."""
    return _with_word(f"vermark{mark}", "doc7", 81, every=9)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def built(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """'chunked': the 15 documents cut words:30; 'plain': the 20 passage records."""
    from indexer import build_index
    from retriever.encoder import load_encoder, model_ref

    root = tmp_path_factory.mktemp("documents-kb")
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (root / "plain.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PLAIN))
    encoder = load_encoder(tiny_model_dir)
    ref = model_ref(tiny_model_dir)
    return {"chunked": build_index(encoder, [root / "docs.jsonl"], root / "chunked", model_dir=ref, progress=False,
                                   chunk=CHUNK),
            "plain": build_index(encoder, [root / "plain.jsonl"], root / "plain", model_dir=ref, progress=False)}


@contextmanager
def serve(index_dir: Path, admin_token: str | None = TOKEN, **settings: Any) -> Iterator[TestClient]:
    """An in-process app over ``index_dir``; a server error comes back as a 500 response, not raised."""
    from server.app import create_app
    from server.settings import Settings

    app = create_app(Settings(index_dir=index_dir, admin_token=admin_token, max_k=MAX_K, torch_threads=1,
                              **settings))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst, symlinks=True))


@pytest.fixture(scope="module")
def reader(built: dict[str, Path]) -> Iterator[TestClient]:
    """The chunked index as built; tests using it never write."""
    with serve(built["chunked"]) as c:
        yield c


@pytest.fixture()
def writer(built: dict[str, Path], tmp_path: Path) -> Iterator[TestClient]:
    """A private copy of the chunked index, for a test that writes."""
    with serve(_copy(built["chunked"], tmp_path / "chunked")) as c:
        yield c


@pytest.fixture(scope="module")
def refuser(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A copy of the chunked index that only refused writes reach."""
    with serve(_copy(built["chunked"], tmp_path_factory.mktemp("refused") / "chunked")) as c:
        yield c


# ---------------------------------------------------------------------------------------------- helpers


def search(c: TestClient, query: str, mode: str = "dense", k: int = MAX_K, **extra: Any) -> list[dict[str, Any]]:
    r = c.post("/search", json={"query": query, "k": k, "mode": mode, **extra})
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == mode
    return r.json()["results"]


def of_doc(hits: list[dict[str, Any]], doc_id: str) -> list[dict[str, Any]]:
    return [h for h in hits if h["doc_id"] == doc_id]


def put(c: TestClient, doc_id: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return c.put(f"/documents/{doc_id}", json=body, headers=AUTH if headers is None else headers)


def live_passages(c: TestClient) -> int:
    return c.get("/readyz").json()["index"]["live_passages"]


def check_slices(passages: list[dict[str, Any]], text: str) -> None:
    for p in passages:
        assert text[p["start"]:p["end"]] == p["text"], p


def error_loc(body: dict[str, Any]) -> str:
    """``detail.loc`` of an error body (pydantic's errors are a list: its first entry's)."""
    detail = body["detail"]
    return detail[0]["loc"] if isinstance(detail, list) else detail["loc"]


# ---------------------------------------------------------------------------------------------- 1. lifecycle


def test_put_search_get_replace_delete_a_live_document(writer: TestClient) -> None:
    c = writer
    w1, w2 = UNIQUE["doc2"][0], UNIQUE["doc6"][0]
    v1 = _with_word(w1, "doc1", 80)                   # 88 words: 3 passages, each holding w1
    v2 = _with_word(w2, "doc4", 40)                   # 44 words: 2 passages, each holding w2, none w1
    meta = {"source": "blog", "year": 2021, "lang": "en"}
    assert c.get("/documents/live-1").status_code == 404
    assert not of_doc(search(c, "plague"), "live-1")

    r = put(c, "live-1", {"title": DOC_BY_ID["doc1"]["title"], "text": v1, "metadata": meta})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "passages", "created", "took_ms"}
    assert (body["id"], body["passages"], body["created"]) == ("live-1", _passage_count(v1), True)
    assert body["passages"] == 3 and body["took_ms"] >= 0

    r = c.get("/documents/live-1")
    assert r.status_code == 200
    got = r.json()["passages"]
    assert r.json()["id"] == "live-1"
    assert [p["id"] for p in got] == ["live-1#0", "live-1#1", "live-1#2"]
    check_slices(got, v1)
    assert all(p["metadata"] == meta and p["title"] == DOC_BY_ID["doc1"]["title"] for p in got)
    ids_v1 = {p["id"] for p in got}

    hits = of_doc(search(c, "who died of the plague"), "live-1")
    assert {h["id"] for h in hits} == ids_v1
    check_slices(hits, v1)
    assert all(h["metadata"] == meta for h in hits)
    bm25 = search(c, w1, "bm25")
    assert {h["id"] for h in of_doc(bm25, "live-1")} == ids_v1          # scored with the build's vocabulary
    assert of_doc(bm25, "doc2") and {h["doc_id"] for h in bm25} == {"doc2", "live-1"}
    assert all(h["score"] > 0 for h in bm25)
    assert {h["id"] for h in of_doc(search(c, w1, "hybrid"), "live-1")} == ids_v1
    assert not of_doc(search(c, w2, "bm25"), "live-1")

    # Replaced whole: the third passage of v1 goes too, and v1's word matches nothing of it any more.
    r = put(c, "live-1", {"text": v2, "metadata": meta})
    assert r.status_code == 200, r.text
    assert (r.json()["passages"], r.json()["created"]) == (2, False)
    got = c.get("/documents/live-1").json()["passages"]
    assert [p["id"] for p in got] == ["live-1#0", "live-1#1"]
    check_slices(got, v2)
    assert all(p["title"] == "" for p in got)
    hits = of_doc(search(c, "plague"), "live-1")
    assert {h["id"] for h in hits} == {"live-1#0", "live-1#1"}
    check_slices(hits, v2)
    assert not of_doc(search(c, w1, "bm25"), "live-1")
    assert {h["id"] for h in of_doc(search(c, w2, "bm25"), "live-1")} == {"live-1#0", "live-1#1"}
    hybrid = of_doc(search(c, w1, "hybrid"), "live-1")
    assert {h["id"] for h in hybrid} == {"live-1#0", "live-1#1"}
    check_slices(hybrid, v2)
    assert c.get("/passages/live-1%232").status_code == 404
    assert c.get("/passages/live-1%230").json()["text"] == got[0]["text"]
    assert len(search(c, "plague")) == TOTAL + 2

    r = c.delete("/documents/live-1", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"id": "live-1", "deleted": True}
    for mode, query in (("dense", "plague"), ("bm25", w2), ("hybrid", w2)):
        assert not of_doc(search(c, query, mode), "live-1"), mode
    assert len(search(c, "plague")) == TOTAL
    r = c.get("/documents/live-1")
    assert r.status_code == 404 and r.json()["error"] == "document not found"
    assert c.get("/passages/live-1%230").status_code == 404
    r = c.delete("/documents/live-1", headers=AUTH)
    assert r.status_code == 404 and r.json()["detail"] == {"id": "live-1"}


def test_delete_unknown_document_is_404_json(writer: TestClient) -> None:
    r = writer.delete("/documents/no-such-doc", headers=AUTH)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"error": "document not found", "detail": {"id": "no-such-doc"}}
    assert live_passages(writer) == 0 and len(search(writer, "war")) == TOTAL


def test_delete_a_built_document_removes_all_its_passages(writer: TestClient) -> None:
    c, target, word = writer, "doc3", UNIQUE["doc3"][0]
    n = PASSAGES[target]
    got = c.get(f"/documents/{target}").json()["passages"]
    assert len(got) == n >= 2
    check_slices(got, DOC_BY_ID[target]["text"])
    assert all(p["metadata"] == DOC_BY_ID[target]["metadata"] for p in got)
    assert len(of_doc(search(c, "war"), target)) == n
    assert of_doc(search(c, word, "bm25"), target) and of_doc(search(c, word, "hybrid"), target)

    r = c.delete(f"/documents/{target}", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"id": target, "deleted": True}
    dense = search(c, "war")
    assert len(dense) == TOTAL - n and not of_doc(dense, target)
    assert search(c, word, "bm25") == []                       # the word was only in this document
    assert not of_doc(search(c, word, "hybrid"), target)
    assert not of_doc(search(c, "war", group_by="doc"), target)
    assert search(c, "war", filter={"year": DOC_BY_ID[target]["metadata"]["year"]}) == []
    assert c.get(f"/documents/{target}").status_code == 404
    assert all(c.get(f"/passages/{target}%23{i}").status_code == 404 for i in range(n))
    assert c.delete(f"/documents/{target}", headers=AUTH).status_code == 404

    # Written again, it is a new document and every mode finds it.
    r = put(c, target, {k: DOC_BY_ID[target][k] for k in ("title", "text", "metadata")})
    assert r.status_code == 200 and (r.json()["passages"], r.json()["created"]) == (n, True)
    assert len(of_doc(search(c, "war"), target)) == n
    assert len(of_doc(search(c, word, "bm25"), target)) >= 1


def test_unchunked_index_documents_filters_and_deletes(built: dict[str, Path], tmp_path: Path) -> None:
    with serve(_copy(built["plain"], tmp_path / "plain")) as c:
        r = c.get("/documents/p3")
        assert r.status_code == 200
        (p,) = r.json()["passages"]
        assert (p["id"], p["text"], p["metadata"]) == ("p3", PLAIN[3]["text"], PLAIN[3]["metadata"])
        hits = search(c, "war")
        assert len(hits) == len(PLAIN) and all(h["doc_id"] == h["id"] for h in hits)
        # An empty id is no document (the store matched every passage without a document id to it).
        r = c.get("/documents/")
        assert r.status_code == 422 and "passages" not in r.json()

        expected = {q["id"] for q in PLAIN if q["metadata"]["source"] == "news" and q["metadata"]["year"] >= 1995}
        hits = search(c, "war", filter={"source": "news", "year": {"gte": 1995}})
        assert {h["id"] for h in hits} == expected and len(hits) == len(expected)

        word = sorted(set(WORD.findall(PLAIN[4]["text"].lower())))[0]
        assert of_doc(search(c, word, "bm25"), "p4")
        assert c.delete("/documents/p4", headers=AUTH).status_code == 200
        for mode in MODES:
            assert not of_doc(search(c, word, mode), "p4"), mode
        assert c.get("/documents/p4").status_code == 404 and c.get("/passages/p4").status_code == 404

        r = put(c, "p5", {"text": PLAIN[6]["text"], "metadata": {"source": "wiki", "year": 3000}})
        assert r.status_code == 200 and (r.json()["passages"], r.json()["created"]) == (1, False)
        (p,) = c.get("/documents/p5").json()["passages"]
        assert (p["id"], p["text"], p["start"], p["end"]) == ("p5", PLAIN[6]["text"], 0, len(PLAIN[6]["text"]))
        hits = search(c, "war", filter={"year": {"gt": 2100}})
        assert [(h["id"], h["text"]) for h in hits] == [("p5", PLAIN[6]["text"])]
        assert len(search(c, "war")) == len(PLAIN) - 1


# ---------------------------------------------------------------------------------------------- 2. auth


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}],
                         ids=["none", "wrong", "not-bearer"])
def test_writes_without_the_admin_token_are_401(writer: TestClient, headers: dict[str, str]) -> None:
    c = writer
    r = put(c, "intruder", {"text": "some words about the war"}, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "admin token" in r.json()["error"]
    r = c.delete("/documents/doc0", headers=headers)
    assert r.status_code == 401
    assert c.get("/documents/intruder").status_code == 404
    assert len(c.get("/documents/doc0").json()["passages"]) == PASSAGES["doc0"]
    assert live_passages(c) == 0


def test_writes_are_403_when_admin_is_disabled_and_reads_need_no_token(built: dict[str, Path]) -> None:
    with serve(built["chunked"], admin_token=None) as c:
        for headers in ({}, AUTH):
            r = put(c, "doc0", {"text": "replaced"}, headers=headers)
            assert r.status_code == 403 and "DPR_ADMIN_TOKEN" in r.json()["error"]
            r = c.delete("/documents/doc0", headers=headers)
            assert r.status_code == 403 and "DPR_ADMIN_TOKEN" in r.json()["error"]
        r = c.get("/documents/doc0")
        assert r.status_code == 200 and len(r.json()["passages"]) == PASSAGES["doc0"]
        check_slices(r.json()["passages"], DOC_BY_ID["doc0"]["text"])
        assert len(search(c, "war")) == TOTAL


# ---------------------------------------------------------------------------------------------- 3. bad input

BAD_BODIES: list[tuple[str, str, Any, int, str]] = [
    # (id, doc id in the path, body (dict: JSON; bytes: raw), status, what the answer must name)
    ("empty-text", "x", {"text": ""}, 422, "text"),
    ("blank-text", "x", {"text": "  \n\t "}, 422, "text"),
    ("missing-text", "x", {"title": "t"}, 422, "text"),
    ("text-not-string", "x", {"text": 5}, 422, "text"),
    ("unknown-field", "x", {"text": "war", "metdata": {"year": 1}}, 422, "metdata"),
    ("metadata-not-object", "x", {"text": "war", "metadata": ["wiki"]}, 422, "metadata"),
    ("metadata-list", "x", {"text": "war", "metadata": {"tags": ["a", "b"]}}, 422, "tags"),
    ("metadata-object", "x", {"text": "war", "metadata": {"nested": {"a": 1}}}, 422, "nested"),
    ("metadata-null", "x", {"text": "war", "metadata": {"gone": None}}, 422, "gone"),
    ("metadata-key-digit", "x", {"text": "war", "metadata": {"1st": 1}}, 422, "1st"),
    ("metadata-key-space", "x", {"text": "war", "metadata": {"a key": 1}}, 422, "a key"),
    ("metadata-key-empty", "x", {"text": "war", "metadata": {"": 1}}, 422, "metadata"),
    ("year-as-string", "x", {"text": "war", "metadata": {"year": "2020"}}, 422, "year"),
    ("year-as-bool", "x", {"text": "war", "metadata": {"year": True}}, 422, "year"),
    ("source-as-number", "x", {"text": "war", "metadata": {"source": 3}}, 422, "source"),
    ("type-clash-on-built-doc", "doc0", {"text": "war", "metadata": {"lang": False}}, 422, "lang"),
    ("id-with-hash", "a%23b", {"text": "war"}, 422, "#"),
    ("id-blank", "%20", {"text": "war"}, 422, "id"),
    ("id-too-long", "d" * 513, {"text": "war"}, 422, "too long"),
    ("malformed-json", "x", b'{"text": "war",', 400, "malformed JSON"),
    ("not-utf8", "x", b'{"text": "\xff\xfe"}', 400, "UTF-8"),
    ("empty-body", "x", b"", 400, "empty"),
    ("array-body", "x", b'[{"text": "war"}]', 422, "object"),
]


@pytest.mark.parametrize("doc_id,body,status,names", [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES])
def test_bad_document_writes_are_4xx_json_naming_the_problem(refuser: TestClient, doc_id: str, body: Any,
                                                               status: int, names: str) -> None:
    c = refuser
    if isinstance(body, bytes):
        r = c.put(f"/documents/{doc_id}", content=body, headers={**AUTH, "Content-Type": "application/json"})
    else:
        r = put(c, doc_id, body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert names in json.dumps(r.json(), ensure_ascii=False), r.json()
    assert c.get("/documents/x").status_code == 404
    assert len(c.get("/documents/doc0").json()["passages"]) == PASSAGES["doc0"]
    assert live_passages(c) == 0


# ---------------------------------------------------------------------------------------------- 4. filters

FILTERS: list[tuple[str, dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
    ("eq", {"source": "news"}, lambda m: m["source"] == "news"),
    ("in", {"lang": {"in": ["de"]}}, lambda m: m["lang"] == "de"),
    ("range", {"year": {"gte": 2004, "lt": 2010}}, lambda m: 2004 <= m["year"] < 2010),
    ("and", {"source": "wiki", "year": {"lt": 2009}, "lang": {"in": ["en", "de"]}},
     lambda m: m["source"] == "wiki" and m["year"] < 2009),
    ("in-numbers", {"year": {"in": [2001, 2013, 1999]}}, lambda m: m["year"] in (2001, 2013)),
    ("ne-nin", {"source": {"ne": "news"}, "year": {"nin": [2001, 2002]}},
     lambda m: m["source"] != "news" and m["year"] not in (2001, 2002)),
    ("float-bounds", {"year": {"gt": 2000.5, "lte": 2003}}, lambda m: 2000.5 < m["year"] <= 2003),
    ("string-range", {"lang": {"gte": "e"}, "source": {"lt": "o"}}, lambda m: m["lang"] == "en" and m["source"] == "news"),
    ("nothing", {"year": {"gt": 2100}}, lambda m: False),
]


@pytest.mark.parametrize("flt,pred", [f[1:] for f in FILTERS], ids=[f[0] for f in FILTERS])
def test_filters_return_exactly_the_matching_passages(reader: TestClient, flt: dict[str, Any],
                                                      pred: Callable[[dict[str, Any]], bool]) -> None:
    c = reader
    expected = {d["id"] for d in DOCS if pred(d["metadata"])}
    hits = search(c, "the history of the war", filter=flt)
    assert {h["doc_id"] for h in hits} == expected
    assert len(hits) == sum(PASSAGES[d] for d in expected)
    assert all(pred(h["metadata"]) and h["metadata"] == DOC_BY_ID[h["doc_id"]]["metadata"] for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    # BM25 over words that only some documents have, matching and not: only matching documents come back.
    words = [UNIQUE[d["id"]][0] for d in DOCS]
    query = " ".join(words)
    assert {h["doc_id"] for h in search(c, query, "bm25")} == set(DOC_BY_ID)
    assert {h["doc_id"] for h in search(c, query, "bm25", filter=flt)} == expected
    hybrid = search(c, query, "hybrid", filter=flt)
    assert {h["doc_id"] for h in hybrid} == expected and all(pred(h["metadata"]) for h in hybrid)

    r = c.post("/search/batch", json={"queries": ["war", query], "k": MAX_K, "mode": "dense", "filter": flt})
    assert r.status_code == 200, r.text
    for answer in r.json():
        assert {h["doc_id"] for h in answer["results"]} == expected
        assert len(answer["results"]) == len(hits)
    r = c.post("/search/batch", json={"queries": [query], "k": MAX_K, "mode": "bm25", "filter": flt})
    assert {h["doc_id"] for h in r.json()[0]["results"]} == expected
    grouped = search(c, "war", filter=flt, group_by="doc")
    assert sorted(h["doc_id"] for h in grouped) == sorted(expected)


def test_filter_with_small_k_takes_the_best_matching_passages(reader: TestClient) -> None:
    flt = {"source": "wiki", "year": {"gte": 2005}}
    everything = search(reader, "the history of the war")
    best = [h["id"] for h in everything if h["metadata"]["source"] == "wiki" and h["metadata"]["year"] >= 2005][:4]
    assert [h["id"] for h in search(reader, "the history of the war", k=4, filter=flt)] == best


BAD_FILTERS: list[tuple[str, Any, str, str]] = [
    # (id, filter, detail.loc, what the message names)
    ("unknown-field", {"colour": "red"}, "filter.colour", "colour"),
    ("unknown-field-with-good", {"year": 2003, "colour": "red"}, "filter.colour", "colour"),
    ("number-as-string", {"year": "2005"}, "filter.year", "year"),
    ("string-as-number", {"source": 3}, "filter.source", "source"),
    ("bool-for-number", {"year": {"gte": True}}, "filter.year.gte", "year"),
    ("wrong-type-in-list", {"lang": {"in": ["en", 3]}}, "filter.lang.in", "lang"),
    ("unknown-operator", {"year": {"between": [2001, 2005]}}, "filter.year.between", "between"),
    ("in-not-a-list", {"year": {"in": 2005}}, "filter.year.in", "in"),
    ("in-empty", {"year": {"in": []}}, "filter.year.in", "in"),
    ("no-operators", {"lang": {}}, "filter.lang", "lang"),
    ("bare-list", {"lang": ["en", "de"]}, "filter.lang", "lang"),
    ("not-an-object-list", [{"source": "wiki"}], "filter", "filter"),
    ("not-an-object-string", "source=wiki", "filter", "filter"),
    ("not-an-object-number", 5, "filter", "filter"),
]


@pytest.mark.parametrize("flt,loc,names", [f[1:] for f in BAD_FILTERS], ids=[f[0] for f in BAD_FILTERS])
def test_bad_filters_are_422_naming_them(reader: TestClient, flt: Any, loc: str, names: str) -> None:
    for path, body in (("/search", {"query": "war", "mode": "dense"}), ("/search", {"query": "war", "mode": "bm25"}),
                       ("/search/batch", {"queries": ["war", "peace"]})):
        r = reader.post(path, json={**body, "filter": flt})
        assert r.status_code == 422, (path, r.text)
        assert error_loc(r.json()) == loc, (path, r.json())
        assert names in r.json()["error"], (path, r.json())


def test_filter_on_a_field_only_a_live_document_has(writer: TestClient) -> None:
    c = writer
    r = c.post("/search", json={"query": "war", "filter": {"topic": "history"}})
    assert r.status_code == 422 and error_loc(r.json()) == "filter.topic" and "topic" in r.json()["error"]
    word = UNIQUE["doc9"][0]
    text_t = _with_word(word, "doc5", 50)
    assert put(c, "live-t", {"text": text_t, "metadata": {"topic": "history", "year": 2030}}).status_code == 200
    assert put(c, "live-u", {"text": _with_word(word, "doc6", 20), "metadata": {"topic": "science"}}).status_code == 200
    n_t = _passage_count(text_t)

    hits = search(c, "war", filter={"topic": "history"})
    assert {h["doc_id"] for h in hits} == {"live-t"} and len(hits) == n_t
    check_slices(hits, text_t)
    assert {h["doc_id"] for h in search(c, "war", filter={"topic": {"in": ["history", "science"]}})} == {"live-t", "live-u"}
    assert {h["doc_id"] for h in search(c, "war", filter={"topic": {"ne": "history"}})} == set(DOC_BY_ID) | {"live-u"}
    assert {h["doc_id"] for h in search(c, "war", filter={"year": {"gte": 2015}})} == {"live-t"}
    assert {h["doc_id"] for h in search(c, word, "bm25")} == {"doc9", "live-t", "live-u"}
    assert {h["doc_id"] for h in search(c, word, "bm25", filter={"topic": "science"})} == {"live-u"}
    assert {h["doc_id"] for h in search(c, word, "hybrid", filter={"topic": "history"})} == {"live-t"}
    r = c.post("/search/batch", json={"queries": ["war", word], "k": MAX_K, "filter": {"topic": "science"}})
    assert r.status_code == 200 and all({h["doc_id"] for h in a["results"]} == {"live-u"} for a in r.json())
    grouped = search(c, "war", filter={"topic": {"in": ["history", "science"]}}, group_by="doc")
    assert sorted(h["doc_id"] for h in grouped) == ["live-t", "live-u"]
    # The field now has a type: a document giving it another one is refused, naming it.
    r = put(c, "live-v", {"text": "war", "metadata": {"topic": 5}})
    assert r.status_code == 422 and "topic" in r.json()["error"]
    r = c.post("/search", json={"query": "war", "filter": {"topic": 5}})
    assert r.status_code == 422 and error_loc(r.json()) == "filter.topic"

    assert c.delete("/documents/live-t", headers=AUTH).status_code == 200
    assert search(c, "war", filter={"year": {"gte": 2015}}) == []


# ---------------------------------------------------------------------------------------------- 5. group_by


def _check_grouped(hits: list[dict[str, Any]], k: int) -> None:
    docs = [h["doc_id"] for h in hits]
    assert len(docs) == len(set(docs)) == min(k, len(DOCS)), docs
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for h in hits:
        assert {"doc_id", "start", "end", "metadata"} <= set(h), h
        assert h["metadata"] == DOC_BY_ID[h["doc_id"]]["metadata"]
        assert DOC_BY_ID[h["doc_id"]]["text"][h["start"]:h["end"]] == h["text"]


def _first_per_doc(c: TestClient, query: str, mode: str, k: int) -> list[tuple[str, float]]:
    """(document, score) of the best passage of each of the first ``k`` documents of an ungrouped search
    as deep as ``group_by`` looks: 4k passages, 4 times deeper while fewer than k documents are in them
    (hybrid scores depend on the depth fused, so the comparison is at the same depth)."""
    depth = min(TOTAL, 4 * k)
    while True:
        seen: dict[str, float] = {}
        for h in search(c, query, mode, k=depth):
            seen.setdefault(h["doc_id"], h["score"])
        if len(seen) >= k or depth >= TOTAL:
            return list(seen.items())[:k]
        depth = min(TOTAL, 4 * depth)


def _same_ranking(grouped: list[dict[str, Any]], expected: list[tuple[str, float]]) -> None:
    assert [h["doc_id"] for h in grouped] == [d for d, _ in expected]
    assert [h["score"] for h in grouped] == pytest.approx([s for _, s in expected])


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
@pytest.mark.parametrize("k", [1, 5, 15, 40])
def test_group_by_doc_returns_the_best_passage_of_the_top_k_documents(reader: TestClient, mode: str, k: int) -> None:
    query = "the history of the war and the people who lived there"
    grouped = search(reader, query, mode, k=k, group_by="doc")
    _check_grouped(grouped, k)
    _same_ranking(grouped, _first_per_doc(reader, query, mode, k))
    if mode == "dense":                                  # dense scores do not depend on the depth
        best = {}
        for h in search(reader, query):
            best.setdefault(h["doc_id"], h["id"])
        assert [h["id"] for h in grouped] == [best[h["doc_id"]] for h in grouped]


def test_group_by_doc_in_bm25_and_batch(reader: TestClient) -> None:
    query = " ".join(UNIQUE[d][0] for d in ("doc1", "doc4", "doc8", "doc11", "doc13"))
    grouped = search(reader, query, "bm25", k=3, group_by="doc")
    docs = [h["doc_id"] for h in grouped]
    assert len(docs) == len(set(docs)) == 3
    _same_ranking(grouped, _first_per_doc(reader, query, "bm25", 3))
    # Only five documents have a query word: asking for more gives those five.
    assert sorted(h["doc_id"] for h in search(reader, query, "bm25", k=10, group_by="doc")) == \
        ["doc1", "doc11", "doc13", "doc4", "doc8"]
    r = reader.post("/search/batch", json={"queries": [query, "war"], "k": 6, "mode": "dense", "group_by": "doc"})
    assert r.status_code == 200
    for answer in r.json():
        _check_grouped(answer["results"], 6)
    r = reader.post("/search", json={"query": "war", "group_by": "passage"})
    assert r.status_code == 422 and error_loc(r.json()) == "group_by"


def test_group_by_doc_counts_live_documents_and_skips_deleted_ones(writer: TestClient) -> None:
    c = writer
    text = _with_word(UNIQUE["doc2"][0], "doc10", 80)
    assert put(c, "live-g", {"text": text, "metadata": {"source": "wiki", "year": 2001, "lang": "en"}}).status_code == 200
    assert c.delete("/documents/doc0", headers=AUTH).status_code == 200
    grouped = search(c, "war", k=MAX_K, group_by="doc")
    assert sorted(h["doc_id"] for h in grouped) == sorted((set(DOC_BY_ID) - {"doc0"}) | {"live-g"})
    grouped = search(c, "war", k=3, filter={"year": 2001}, group_by="doc")
    assert sorted(h["doc_id"] for h in grouped) == ["doc1", "live-g"]


# ---------------------------------------------------------------------------------------------- 6. kill -9


def _http(url: str, method: str = "GET", body: dict[str, Any] | None = None, token: str | None = None,
          ) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _start_both(dirs: list[Path], tmp_path: Path, phase: str) -> list[Any]:
    from reliability.serve_proc import start_server

    env = {"DPR_ADMIN_TOKEN": TOKEN, "DPR_MAX_K": str(MAX_K), "DPR_TORCH_THREADS": "1"}
    with ThreadPoolExecutor(len(dirs)) as pool:
        futures = [pool.submit(start_server, d, tmp_path / f"{d.name}-{phase}.log", env=env, wait_s=240) for d in dirs]
        served, errors = [], []
        for f in futures:
            try:
                served.append(f.result())
            except RuntimeError as e:
                errors.append(e)
    if errors:
        for s in served:
            s.stop()
        raise errors[0]
    return served


def _kill9(served: Any) -> None:
    os.kill(served.proc.pid, signal.SIGKILL)
    assert served.proc.wait(30) == -signal.SIGKILL


def _dense_ids(url: str, doc_id: str) -> tuple[int, set[str]]:
    status, body = _http(url + "/search", "POST", {"query": "war", "k": MAX_K, "mode": "dense"})
    assert status == 200, body
    return len(body["results"]), {h["id"] for h in body["results"] if h["doc_id"] == doc_id}


def test_acknowledged_writes_survive_kill_9_of_dpr_serve(built: dict[str, Path], tmp_path: Path) -> None:
    put_dir = _copy(built["chunked"], tmp_path / "put-index")
    del_dir = _copy(built["chunked"], tmp_path / "delete-index")
    word = UNIQUE["doc8"][0]
    text = _with_word(word, "doc12", 70)
    meta = {"source": "wiki", "year": 2024, "lang": "en"}
    a, b = _start_both([put_dir, del_dir], tmp_path, "first")
    try:
        status, body = _http(a.url + "/documents/durable", "PUT", {"text": text, "metadata": meta}, TOKEN)
        assert status == 200 and body["created"], body
        _kill9(a)                                          # right after the 200: nothing else ran
        n_durable = body["passages"]

        status, body = _http(b.url + "/documents/short-lived", "PUT", {"text": text, "metadata": meta}, TOKEN)
        assert status == 200, body
        assert _dense_ids(b.url, "short-lived")[1]
        assert _http(b.url + "/documents/short-lived", "DELETE", token=TOKEN)[0] == 200
        status, body = _http(b.url + "/documents/doc5", "DELETE", token=TOKEN)
        assert (status, body) == (200, {"id": "doc5", "deleted": True})
        _kill9(b)                                          # right after the delete's 200
    finally:
        a.stop()
        b.stop()

    a, b = _start_both([put_dir, del_dir], tmp_path, "restarted")
    try:
        status, body = _http(a.url + "/documents/durable")
        assert status == 200, body
        assert [p["id"] for p in body["passages"]] == [f"durable#{i}" for i in range(n_durable)]
        check_slices(body["passages"], text)
        assert all(p["metadata"] == meta for p in body["passages"])
        count, ids = _dense_ids(a.url, "durable")
        assert count == TOTAL + n_durable and ids == {p["id"] for p in body["passages"]}
        status, body = _http(a.url + "/search", "POST", {"query": word, "k": MAX_K, "mode": "bm25"})
        assert status == 200 and {h["doc_id"] for h in body["results"]} == {"doc8", "durable"}
        status, body = _http(a.url + "/search", "POST", {"query": "war", "k": MAX_K, "mode": "dense",
                                                         "filter": {"year": 2024}})
        assert status == 200 and {h["doc_id"] for h in body["results"]} == {"durable"}

        assert _http(b.url + "/documents/doc5")[0] == 404
        assert _http(b.url + "/documents/short-lived")[0] == 404
        count, ids = _dense_ids(b.url, "doc5")
        assert count == TOTAL - PASSAGES["doc5"] and not ids
        for mode in ("bm25", "hybrid"):
            status, body = _http(b.url + "/search", "POST", {"query": UNIQUE["doc5"][0], "k": MAX_K, "mode": mode})
            assert status == 200 and not {h["doc_id"] for h in body["results"]} & {"doc5", "short-lived"}, mode
    finally:
        a.stop()
        b.stop()


def test_compaction_while_serving_swaps_in_a_build_with_every_write(built: dict[str, Path], tmp_path: Path) -> None:
    """`dpr index compact DIR --reload-url`: the server swaps in the compacted build, which holds the
    writes made before it, and a write made after the compaction still lands in the new build's log."""
    import subprocess
    import sys

    index_dir = _copy(built["chunked"], tmp_path / "compact-index")
    (served,) = _start_both([index_dir], tmp_path, "compact")
    try:
        text = _with_word(UNIQUE["doc8"][0], "doc12", 70)
        assert _http(served.url + "/documents/before", "PUT", {"text": text}, TOKEN)[0] == 200
        assert _http(served.url + "/documents/doc5", "DELETE", token=TOKEN)[0] == 200
        build_before = _http(served.url + "/readyz")[1]["index"]["build"]
        done = subprocess.run([sys.executable, "-m", "driver.main", "index", "compact", str(index_dir),
                               "--reload-url", served.url, "--no-progress"], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "DPR_ADMIN_TOKEN": TOKEN})
        assert done.returncode == 0, done.stderr[-2000:]
        assert "now serving build" in done.stdout
        ready = _http(served.url + "/readyz")[1]["index"]
        assert ready["build"] != build_before
        assert ready["live_passages"] == 0 and ready["deleted_passages"] == 0      # all folded into the build
        assert _http(served.url + "/documents/before")[0] == 200
        assert _http(served.url + "/documents/doc5")[0] == 404
        assert _http(served.url + "/documents/after", "PUT", {"text": text}, TOKEN)[0] == 200
        count, ids = _dense_ids(served.url, "after")
        assert ids and count == TOTAL - PASSAGES["doc5"] + 2 * len(ids)
    finally:
        served.stop()


def test_int8_queries_still_embed_live_documents_at_the_builds_precision(built: dict[str, Path], tmp_path: Path,
                                                                          tiny_model_dir: Path) -> None:
    """Queries on int8 (DPR_QUANTIZE) over an fp32 build: a live document gets the fp32 vectors a rebuild
    would give it, not the int8 ones, so compaction still equals a fresh build."""
    import numpy as np

    from retriever.encoder import load_encoder

    index_dir = _copy(built["chunked"], tmp_path / "int8-index")
    text = _with_word(UNIQUE["doc8"][0], "doc12", 70)
    with serve(index_dir, quantize="int8") as c:
        engine = c.app.state.holder.current
        assert engine.encoder.quantization == "int8"
        assert c.put("/documents/q8", json={"title": "T", "text": text}, headers=AUTH).status_code == 200
        assert engine.passage_encoder() is not engine.encoder and engine.passage_encoder().quantization == "none"
        view = engine.live.segment.view()
        slots, vectors = view.alive()
        passages = [view.passages[s] for s in slots]
    fp32 = load_encoder(tiny_model_dir).encode_passages(passages)
    np.testing.assert_allclose(vectors, fp32, atol=1e-5)


# ---------------------------------------------------------------------------------------------- 7. concurrency


@pytest.fixture()
def slow_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    """Applying a write takes a few milliseconds (a big document, a loaded machine): its metadata
    columns and its BM25 weights are slow to compute. A reader that can see a document half-replaced
    then does, instead of once in thousands of tries."""
    from indexer.filters import MetadataColumns
    from retriever.bm25 import BM25Index

    append, term_weights = MetadataColumns.append, BM25Index.term_weights

    def slow_append(self: MetadataColumns, metadatas: Any) -> None:
        time.sleep(0.002)
        append(self, metadatas)

    def slow_term_weights(self: BM25Index, passages: Any, avg_length: float) -> list[dict[int, float]]:
        time.sleep(0.004)
        return term_weights(self, passages, avg_length)

    monkeypatch.setattr(MetadataColumns, "append", slow_append)
    monkeypatch.setattr(BM25Index, "term_weights", slow_term_weights)


@pytest.fixture()
def busy(built: dict[str, Path], tmp_path: Path) -> Iterator[TestClient]:
    """A private copy of the chunked index served with more workers than this machine's cores, so that
    a writer and several readers all run at once."""
    with serve(_copy(built["chunked"], tmp_path / "chunked"), search_workers=6) as c:
        yield c


def _marks(passages: list[dict[str, Any]]) -> set[str]:
    return {m for p in passages for m in MARK.findall(p["text"])}


def _hammer(c: TestClient, read: Callable[[], list[dict[str, Any]] | None], versions: int = 24,
            readers: int = 2) -> tuple[list[str], list[Any]]:
    """One thread PUTs ``versions`` versions of X while ``readers`` threads call ``read`` (X's passages,
    or None for a non-200); returns the versions observed and every bad observation."""
    marks = [chr(ord("A") + i) for i in range(versions)]
    assert put(c, "X", {"text": _version_text(marks[0])}).status_code == 200
    done = threading.Event()
    seen: list[str] = []
    bad: list[Any] = []

    def write() -> None:
        try:
            for m in marks[1:]:
                r = put(c, "X", {"text": _version_text(m)})
                if r.status_code != 200:
                    bad.append(("PUT", r.status_code, r.text[:200]))
        finally:
            done.set()

    def watch() -> None:
        while not done.is_set():
            passages = read()
            if passages is None:
                bad.append("not found")
                continue
            found = _marks(passages)
            if len(passages) != 3 or len(found) != 1:
                bad.append((len(passages), sorted(found)))
            else:
                seen.append(found.pop())

    threads = [threading.Thread(target=write)] + [threading.Thread(target=watch) for _ in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    return seen, bad


def test_searches_during_replacements_see_one_whole_version(busy: TestClient, slow_apply: None) -> None:
    def read() -> list[dict[str, Any]] | None:
        r = busy.post("/search", json={"query": "vermark history", "k": MAX_K, "mode": "dense"})
        return of_doc(r.json()["results"], "X") if r.status_code == 200 else None

    seen, bad = _hammer(busy, read)
    assert not bad, bad[:10]
    assert len(set(seen)) >= 3, seen                      # the reads did span several versions
    assert _marks(busy.get("/documents/X").json()["passages"]) == {"vermarkX"}


def test_get_document_during_replacements_sees_one_whole_version(busy: TestClient, slow_apply: None) -> None:
    def read() -> list[dict[str, Any]] | None:
        r = busy.get("/documents/X")
        return r.json()["passages"] if r.status_code == 200 else None

    seen, bad = _hammer(busy, read)
    assert not bad, f"{len(bad)} bad reads of {len(bad) + len(seen)}, e.g. {bad[:5]}"
    assert len(set(seen)) >= 3, seen


def test_passage_lookups_during_replacements_find_the_passage(busy: TestClient, slow_apply: None) -> None:
    def read() -> list[dict[str, Any]] | None:
        r = busy.get("/passages/X%231")                    # X#1 is in every version
        # Three copies: _hammer wants a document's passages; one passage must hold one version's marker.
        return [r.json()] * 3 if r.status_code == 200 else None

    seen, bad = _hammer(busy, read)
    assert not bad, f"{len(bad)} bad reads of {len(bad) + len(seen)}, e.g. {bad[:5]}"
    assert len(set(seen)) >= 3, seen


def test_two_concurrent_writers_of_a_document_leave_one_whole_version(busy: TestClient, slow_apply: None) -> None:
    c = busy
    created: list[list[bool]] = []
    for round_ in range(6):
        barrier = threading.Barrier(2, timeout=30)
        answers: dict[str, Any] = {}
        pair = (f"P{chr(65 + round_)}", f"Q{chr(65 + round_)}")

        def write(mark: str) -> None:
            barrier.wait()
            answers[mark] = put(c, "X", {"text": _version_text(mark)})

        threads = [threading.Thread(target=write, args=(m,)) for m in pair]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(answers[m].status_code == 200 for m in pair), {m: a.text for m, a in answers.items()}
        created.append([answers[m].json()["created"] for m in pair])
        got = c.get("/documents/X").json()["passages"]
        assert len(got) == 3 and len(_marks(got)) == 1, got
        (mark,) = _marks(got)
        assert mark in {f"vermark{m}" for m in pair}
        hits = of_doc(search(c, "vermark"), "X")
        assert sorted((h["id"], h["text"]) for h in hits) == [(p["id"], p["text"]) for p in got]
        assert len(search(c, "war")) == TOTAL + 3

    # A fresh server replaying the log ends on the same version as the one that served the writes.
    final = c.get("/documents/X").json()["passages"]
    with serve(Path(c.get("/readyz").json()["index"]["index_dir"])) as again:
        assert again.get("/documents/X").json()["passages"] == final
        assert len(search(again, "war")) == TOTAL + 3
    # Exactly one of the first two writes of the new document created it.
    assert sorted(created[0]) == [False, True], created
    assert all(pair == [False, False] for pair in created[1:]), created


def test_concurrent_writes_giving_a_new_field_two_types_refuse_one(busy: TestClient, slow_apply: None) -> None:
    c = busy
    index_dir = Path(c.get("/readyz").json()["index"]["index_dir"])
    for round_ in range(6):
        field = f"kind{round_}"
        barrier = threading.Barrier(2, timeout=30)
        answers: dict[str, Any] = {}

        def write(doc_id: str, value: Any) -> None:
            barrier.wait()
            answers[doc_id] = put(c, doc_id, {"text": f"the war {doc_id}", "metadata": {field: value}})

        threads = [threading.Thread(target=write, args=(f"s{round_}", "text")),
                   threading.Thread(target=write, args=(f"n{round_}", 7))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        codes = sorted(a.status_code for a in answers.values())
        assert codes == [200, 422], {d: (a.status_code, a.text[:300]) for d, a in answers.items()}
        (winner,) = [d for d, a in answers.items() if a.status_code == 200]
        (loser,) = [d for d, a in answers.items() if a.status_code == 422]
        assert field in answers[loser].json()["error"]
        assert c.get(f"/documents/{loser}").status_code == 404
        value = "text" if winner.startswith("s") else 7
        assert {h["doc_id"] for h in search(c, "war", filter={field: value})} == {winner}
    with serve(index_dir) as again:
        assert again.get("/readyz").status_code == 200
        assert len(search(again, "war")) == TOTAL + 6
