"""Search modes through the API: dense, bm25 and hybrid; validation; dense-only indexes; defaults."""
from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

QUESTION_INDEX = 3


def _app(index_dir: Path, **settings):
    from server.app import create_app
    from server.settings import Settings

    return create_app(Settings(index_dir=index_dir, torch_threads=1, **settings))


def _ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"]]


@pytest.fixture(scope="module")
def question(kb_files) -> tuple[str, str]:
    """A training question and the id of its gold passage (in index 'a')."""
    from common.data import load_examples

    example = load_examples(kb_files["a"])[QUESTION_INDEX]
    return example.question, example.positives[0].pid


def test_each_mode_answers_and_says_which_it_used(client, question) -> None:
    query, gold = question
    for mode in ("dense", "bm25", "hybrid"):
        r = client.post("/search", json={"query": query, "k": 5, "mode": mode})
        assert r.status_code == 200 and r.json()["mode"] == mode
        hits = r.json()["results"]
        assert 1 <= len(hits) <= 5 and [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
        assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    # BM25 finds the gold passage of a question copied from the data (the tiny encoder is random).
    assert gold in _ids(client.post("/search", json={"query": query, "k": 5, "mode": "bm25"}))


def test_hybrid_weight_moves_between_dense_and_bm25(index_a: Path, question) -> None:
    query = question[0]
    with TestClient(_app(index_a, hybrid_alpha=1.0)) as dense_heavy, \
            TestClient(_app(index_a, hybrid_alpha=0.0)) as bm25_heavy:
        dense = _ids(dense_heavy.post("/search", json={"query": query, "k": 5, "mode": "dense"}))
        bm25 = _ids(dense_heavy.post("/search", json={"query": query, "k": 5, "mode": "bm25"}))
        assert _ids(dense_heavy.post("/search", json={"query": query, "k": 5, "mode": "hybrid"})) == dense
        assert _ids(bm25_heavy.post("/search", json={"query": query, "k": 5, "mode": "hybrid"}))[0] == bm25[0]
    with TestClient(_app(index_a, hybrid_method="rrf")) as rrf:
        hits = rrf.post("/search", json={"query": query, "k": 5, "mode": "hybrid"}).json()["results"]
        assert hits[0]["score"] <= 2 / 61 + 1e-9 and hits[0]["id"] in set(dense) | set(bm25)


def test_batch_search_takes_a_mode(client, question) -> None:
    query = question[0]
    r = client.post("/search/batch", json={"queries": [query, "river"], "k": 3, "mode": "bm25"})
    assert r.status_code == 200 and [item["mode"] for item in r.json()] == ["bm25", "bm25"]
    single = client.post("/search", json={"query": query, "k": 3, "mode": "bm25"})
    assert [h["id"] for h in r.json()[0]["results"]] == _ids(single)


@pytest.mark.parametrize("mode", ["sparse", "HYBRID", "", 1, None])
def test_unknown_mode_is_422(client, mode) -> None:
    body = {"query": "river", "mode": mode}
    r = client.post("/search", json=body)
    if mode is None:                                  # null means "the server's default"
        assert r.status_code == 200
        return
    assert r.status_code == 422 and "mode" in r.json()["error"]
    assert client.post("/search/batch", json={"queries": ["river"], "mode": mode}).status_code == 422


def test_default_mode_comes_from_settings(index_a: Path) -> None:
    for default in ("dense", "bm25", "hybrid"):
        with TestClient(_app(index_a, default_mode=default)) as c:
            assert c.post("/search", json={"query": "river"}).json()["mode"] == default


def test_index_without_bm25_serves_dense_and_refuses_the_rest(index_a: Path, index_without_bm25) -> None:
    old = index_without_bm25(index_a)
    with TestClient(_app(old, default_mode="hybrid")) as c:
        r = c.post("/search", json={"query": "river"})
        assert r.status_code == 200 and r.json()["mode"] == "dense"   # the default falls back
        for mode in ("bm25", "hybrid"):
            r = c.post("/search", json={"query": "river", "mode": mode})
            assert r.status_code == 409 and "needs a BM25 index" in r.json()["error"]
        assert c.get("/readyz").json()["index"]["bm25"] is False


def test_invalid_hybrid_settings_are_refused(index_a: Path) -> None:
    from pydantic import ValidationError

    from server.settings import Settings

    for bad in ({"hybrid_alpha": 1.5}, {"hybrid_method": "max"}, {"default_mode": "sparse"}):
        with pytest.raises(ValidationError):
            Settings(index_dir=index_a, **bad)
