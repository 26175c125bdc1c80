"""Hand-written bad input the fuzzer rarely produces, against the server's DEFAULT limits: a 10 MB
body, non-UTF-8 bytes, a 100k-character query, unicode edge cases, k of every wrong kind, a batch
of 10,000 queries. Each gets its documented 4xx (or a normal 200) with a JSON error body."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from reliability.fuzz import hand_cases, run_hand_cases
from server.app import create_app
from server.limits import BodyLimitMiddleware
from server.settings import Settings

TEN_MB = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def default_client(index_a: Path, admin_token: str):
    """The app with its default limits (only the admin token set), as an operator would run it."""
    with TestClient(create_app(Settings(index_dir=index_a, admin_token=admin_token, torch_threads=1))) as c:
        yield c


def test_every_hand_case_gets_its_documented_answer(default_client: TestClient) -> None:
    limit = Settings().max_body_bytes
    result = run_hand_cases(default_client, limit)
    assert result.tried == len(list(hand_cases(limit))) >= 30
    assert result.server_errors == 0
    assert result.bad == []


@pytest.mark.parametrize("k", ["5", 2.5, -1, 10**30, True])
def test_k_of_the_wrong_kind_names_k(default_client: TestClient, k) -> None:
    r = default_client.post("/search", json={"query": "who sang", "k": k})
    assert r.status_code == 422
    assert "k" in r.json()["error"]


def test_100k_character_query_is_refused_with_its_length(default_client: TestClient) -> None:
    r = default_client.post("/search/batch", json={"queries": ["q" * 100_000]})
    assert r.status_code == 413          # 100 kB of JSON is over the 64 kB default body limit
    # Under a larger body limit the query-length limit answers, naming the length.
    with TestClient(create_app(Settings(index_dir=default_client.app.state.settings.index_dir,
                                        max_body_bytes=1 << 20))) as c:
        r = c.post("/search", json={"query": "q" * 100_000})
    assert r.status_code == 422
    assert r.json()["detail"]["length"] == 100_000


def test_batch_of_10000_queries_is_refused_without_encoding(index_a: Path) -> None:
    with TestClient(create_app(Settings(index_dir=index_a, max_body_bytes=1 << 20))) as c:
        r = c.post("/search/batch", json={"queries": ["who sang"] * 10_000})
        assert r.status_code == 422
        assert r.json()["detail"]["count"] == 10_000
        assert "dpr_queries_total 0.0" in c.get("/metrics").text


def test_unicode_queries_are_answered(default_client: TestClient) -> None:
    for query in ("谁唱了这首歌", "👩‍👩‍👧 emoji", "e" + "\u0301" * 50, "\ufeffBOM", "a\x00b", "\u202eRTL"):
        r = default_client.post("/search", json={"query": query, "k": 2})
        assert r.status_code == 200, (query, r.text)
        assert r.json()["query"] == query and len(r.json()["results"]) == 2


@pytest.mark.parametrize("index_dir", ["a\x00b", "/", "x" * 5000, "/proc/self/mem", "../../etc"])
def test_reload_to_a_bad_path_is_4xx_and_keeps_serving(default_client: TestClient, admin_token: str,
                                                      index_dir: str) -> None:
    r = default_client.post("/admin/reload", json={"index_dir": index_dir},
                            headers={"Authorization": f"Bearer {admin_token}"})
    assert r.status_code == 422, r.text[:300]
    assert set(r.json()) == {"error", "detail"}
    assert default_client.post("/search", json={"query": "who sang", "k": 1}).status_code == 200


# ---- the body limit at the ASGI level: how much of a 10 MB body is ever read


def _drive(middleware: BodyLimitMiddleware, headers: list[tuple[bytes, bytes]], chunk: int,
           total: int) -> tuple[int, int]:
    """Send a ``total``-byte body in ``chunk``-byte messages; return (status, bytes the app pulled)."""
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        size = min(chunk, total - pulled)
        pulled += size
        return {"type": "http.request", "body": b"x" * size, "more_body": pulled < total}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/search", "headers": headers, "query_string": b""}
    asyncio.run(middleware(scope, receive, send))
    return sent[0]["status"], pulled


def test_10mb_body_with_content_length_is_refused_unread(index_a: Path) -> None:
    app = create_app(Settings(index_dir=index_a))
    status, pulled = _drive(BodyLimitMiddleware(app.router, max_bytes=65536),
                            [(b"content-length", str(TEN_MB).encode())], chunk=65536, total=TEN_MB)
    assert status == 413
    assert pulled == 0


def test_10mb_chunked_body_stops_being_read_at_the_limit() -> None:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from server.errors import install_error_handlers

    async def read_all(request):
        await request.body()
        return JSONResponse({})

    inner = Starlette(routes=[Route("/search", read_all, methods=["POST"])])
    install_error_handlers(inner)
    chunk = 16384
    status, pulled = _drive(BodyLimitMiddleware(inner, max_bytes=65536), [], chunk=chunk, total=TEN_MB)
    assert status == 413
    assert pulled <= 65536 + chunk      # never more than the limit plus the chunk that crossed it
