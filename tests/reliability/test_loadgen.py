"""The load generator against a real loopback server: counts, failures, stopping by itself."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

from reliability.loadgen import load


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/search")
    async def search(body: dict) -> JSONResponse:
        if body.get("query") == "boom":
            return JSONResponse({"error": "boom"}, status_code=503)
        if body.get("query") == "text":
            return PlainTextResponse("not json")
        return JSONResponse({"results": [{"id": body["query"]}]})

    return app


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


def test_counts_successes_failures_and_samples(server_url: str) -> None:
    bodies = [{"query": "a"}, {"query": "boom"}, {"query": "b"}, {"query": "text"}]
    result = load(server_url, bodies, concurrency=4, requests=40,
                  inspect=lambda payload: payload["results"][0]["id"])
    assert result.sent == 40
    assert result.ok == 20 and result.failed == 20
    assert result.errors == {"HTTP 503": 10, "non-JSON body": 10}
    assert sorted({value for _, value in result.samples}) == ["a", "b"]
    summary = result.summary()
    assert summary["p50_ms"] > 0 and summary["p99_ms"] >= summary["p50_ms"] and summary["qps"] > 0


def test_stops_after_its_duration(server_url: str) -> None:
    result = load(server_url, [{"query": "a"}], concurrency=2, duration_s=0.5)
    assert result.failed == 0 and result.ok == result.sent > 0
    assert 0.5 <= result.duration_s < 5


def test_refuses_ambiguous_limits(server_url: str) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        load(server_url, [{"query": "a"}], concurrency=1)
    with pytest.raises(ValueError, match="concurrency"):
        load(server_url, [{"query": "a"}], concurrency=0, requests=1)
