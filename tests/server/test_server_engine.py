"""The engine's query cache and the holder's lifetime rules, without HTTP."""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from server.engine import EngineHolder, NotReady, QueryCache, load_engine


@pytest.fixture()
def engine(index_a: Path):
    engine = load_engine(index_a, cache_size=2)
    yield engine
    engine.close()


def test_cache_is_lru_and_bounded() -> None:
    cache = QueryCache(2)
    for key in "abc":
        cache.put(key, np.full(3, ord(key), dtype=np.float32))
    assert cache.get("a") is None and len(cache) == 2
    assert cache.get("b") is not None          # touch b: c is now the oldest
    cache.put("d", np.zeros(3, dtype=np.float32))
    assert cache.get("c") is None and cache.get("b") is not None
    off = QueryCache(0)
    off.put("a", np.zeros(3, dtype=np.float32))
    assert off.get("a") is None


def test_cached_and_batched_encodings_equal_fresh_ones(engine) -> None:
    fresh = engine.encoder.encode_queries(["who sang it", "where is the river"])
    batch = engine.encode(["who sang it", "where is the river", "who sang it"])   # a duplicate in the batch
    np.testing.assert_allclose(batch[:2], fresh, atol=1e-5)
    np.testing.assert_array_equal(batch[2], batch[0])
    again = engine.encode(["who sang it"])                                         # from the cache
    np.testing.assert_array_equal(again[0], batch[0])
    assert len(engine.cache) == 2


def test_holder_closes_a_retired_engine_after_its_last_user(index_a: Path) -> None:
    holder = EngineHolder()
    with pytest.raises(NotReady):
        holder.acquire()
    first = load_engine(index_a)
    holder.swap(first)
    a, b = holder.acquire(), holder.acquire()
    second = load_engine(index_a, reuse=first)
    assert second.encoder is first.encoder                   # same model: weights not loaded again
    assert holder.swap(second) is first and holder.current is second
    holder.release(a)
    assert not first.closed                                  # b still uses it
    holder.release(b)
    assert first.closed and not second.closed
    holder.swap(None)                                        # nobody holds second: closed at once
    assert second.closed


def test_invalid_content_length_is_400() -> None:
    from server.limits import BodyLimitMiddleware

    async def app(scope, receive, send) -> None:  # noqa: ANN001
        raise AssertionError("must not be reached")

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/search", "headers": [(b"content-length", b"abc")]}
    asyncio.run(BodyLimitMiddleware(app, 1024)(scope, receive, send))
    assert sent[0]["status"] == 400
    assert b"invalid Content-Length" in sent[1]["body"]
