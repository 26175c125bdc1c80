"""Bad input of every kind gets a 4xx JSON body {"error", "detail"} that says what is wrong; never a 500."""
from __future__ import annotations

import pytest

LONG = "x" * 201           # the client fixture allows 200 characters
BIG = "y" * 5000           # and 4096 body bytes

CASES = [
    # (id, path, kwargs for client.post, status, words the error must contain)
    ("empty query", "/search", {"json": {"query": ""}}, 422, "query is empty"),
    ("blank query", "/search", {"json": {"query": " \t\n "}}, 422, "query is empty"),
    ("k zero", "/search", {"json": {"query": "a", "k": 0}}, 422, "k must be between 1 and 50"),
    ("k negative", "/search", {"json": {"query": "a", "k": -3}}, 422, "k must be between 1 and 50"),
    ("k over max", "/search", {"json": {"query": "a", "k": 51}}, 422, "k must be between 1 and 50"),
    ("query too long", "/search", {"json": {"query": LONG}}, 422, "too long (201 characters, limit 200)"),
    ("query not a string", "/search", {"json": {"query": 123}}, 422, "query"),
    ("query missing", "/search", {"json": {"k": 3}}, 422, "query"),
    ("k as string", "/search", {"json": {"query": "a", "k": "5"}}, 422, "k"),
    ("k as float", "/search", {"json": {"query": "a", "k": 2.5}}, 422, "k"),
    ("k as bool", "/search", {"json": {"query": "a", "k": True}}, 422, "k"),
    ("unknown field", "/search", {"json": {"query": "a", "kk": 3}}, 422, "kk"),
    ("array body", "/search", {"json": ["a"]}, 422, "expected a JSON object"),
    ("malformed JSON", "/search", {"content": b'{"query": "a",', "headers": {"content-type": "application/json"}},
     400, "malformed JSON"),
    ("not UTF-8", "/search", {"content": b'{"query": "caf\xe9"}', "headers": {"content-type": "application/json"}},
     400, "not valid UTF-8"),
    ("empty body", "/search", {"content": b""}, 400, "empty request body"),
    ("body too large", "/search", {"json": {"query": BIG}}, 413, "too large"),
    ("batch too many", "/search/batch", {"json": {"queries": ["a", "b", "c", "d", "e"]}}, 422,
     "too many queries (5, limit 4)"),
    ("batch empty", "/search/batch", {"json": {"queries": []}}, 422, "queries is empty"),
    ("batch blank item", "/search/batch", {"json": {"queries": ["a", "  "]}}, 422, "queries[1] is empty"),
    ("batch long item", "/search/batch", {"json": {"queries": [LONG]}}, 422, "queries[0] is too long"),
    ("batch not a list", "/search/batch", {"json": {"queries": "abc"}}, 422, "queries"),
    ("batch item not str", "/search/batch", {"json": {"queries": ["a", 3]}}, 422, "queries.1"),
    ("batch k over max", "/search/batch", {"json": {"queries": ["a"], "k": 500}}, 422, "k must be between"),
]


@pytest.mark.parametrize("path,kwargs,status,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_4xx_json(client, path: str, kwargs: dict, status: int, words: str) -> None:
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error", "detail"}
    assert words in body["error"] or words in str(body["detail"]), body


def test_body_over_limit_while_reading_is_413(client) -> None:
    # Chunked upload: no Content-Length to check up front, so the limit applies as bytes arrive.
    def chunks():
        yield b'{"query": "'
        for _ in range(10):
            yield b"z" * 1000
        yield b'"}'

    r = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["detail"] == {"max_body_bytes": 4096}


def test_content_length_checked_before_reading(client) -> None:
    r = client.post("/search", content=b"{}" + b" " * 5000)
    assert r.status_code == 413
    assert r.json()["detail"]["content_length"] == 5002


def test_unknown_route_and_wrong_method_are_json(client) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json() == {"error": "not found", "detail": {"path": "/nope"}}
    r = client.get("/search")
    assert r.status_code == 405 and r.json()["error"] == "method not allowed"


def test_bad_input_never_counted_as_500(client) -> None:
    client.post("/search", content=b"\xff\xfe")
    text = client.get("/metrics").text
    assert 'status="500"' not in text
    assert 'dpr_http_requests_total{method="POST",route="/search",status="400"}' in text


def test_unexpected_exception_is_500_json(index_a) -> None:
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.deps import get_engine
    from server.settings import Settings

    class Broken:
        has_bm25 = False

        def search(self, queries, k, **fusion):
            raise ZeroDivisionError("boom")

    app = create_app(Settings(index_dir=index_a))

    async def broken_engine():
        yield Broken()

    app.dependency_overrides[get_engine] = broken_engine
    client = TestClient(app, raise_server_exceptions=False)   # no lifespan: nothing real is loaded
    r = client.post("/search", json={"query": "a"})
    assert r.status_code == 500
    assert r.json() == {"error": "internal server error", "detail": "ZeroDivisionError; see the server log"}
