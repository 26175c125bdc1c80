"""Micro-batching: concurrent searches share one encode, give the same answers, and fail one by one."""
from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from server.batcher import BatcherClosed, MicroBatcher
from server.engine import load_engine
from server.settings import Settings
from server.timing import parse_server_timing, server_timing

DEMO_DATA = Path(__file__).resolve().parents[2] / "data" / "nq_oracle"


def _questions(n: int) -> list[str]:
    return [r["question"] for r in json.loads((DEMO_DATA / "nq-oracle-val.json").read_text())[:n]]


def _ids(hits: list[dict]) -> list[str]:
    return [h["id"] for h in hits]


@pytest.fixture(scope="module")
def engine_a(index_a: Path):
    engine = load_engine(index_a, cache_size=0)
    yield engine
    engine.close()


async def _gather(batcher: MicroBatcher, calls: list[tuple], return_exceptions: bool = False) -> list:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.search(*c) for c in calls), return_exceptions=return_exceptions)
    finally:
        await batcher.stop()


def test_concurrent_queries_run_as_one_batch_with_unbatched_answers(engine_a) -> None:
    queries = _questions(8)
    batcher = MicroBatcher(Settings(microbatch_max_size=8, microbatch_max_wait_ms=200), workers=1)
    out = asyncio.run(_gather(batcher, [(engine_a, q, 5, "dense") for q in queries]))
    assert batcher.batches == 1 and batcher.mean_batch_size == 8
    for q, (hits, timings) in zip(queries, out, strict=True):
        (alone,) = engine_a.search([q], 5, mode="dense")
        assert _ids(hits) == _ids(alone)
        assert [h["score"] for h in hits] == pytest.approx([h["score"] for h in alone], abs=1e-5)
        assert timings["batch"] == 8 and timings["encode_ms"] > 0 and timings["queue_ms"] >= 0


def test_max_size_splits_batches(engine_a) -> None:
    batcher = MicroBatcher(Settings(microbatch_max_size=3, microbatch_max_wait_ms=0), workers=1)
    out = asyncio.run(_gather(batcher, [(engine_a, q, 2, "dense") for q in _questions(7)]))
    assert len(out) == 7 and batcher.batches == 3
    assert max(t["batch"] for _, t in out) == 3


def test_mixed_modes_and_k_in_one_batch(engine_a) -> None:
    q = _questions(3)
    calls = [(engine_a, q[0], 3, "dense"), (engine_a, q[1], 4, "bm25"), (engine_a, q[2], 5, "hybrid"),
             (engine_a, q[0], 6, "dense")]
    batcher = MicroBatcher(Settings(microbatch_max_size=8), workers=1)
    out = asyncio.run(_gather(batcher, calls))
    for (_, query, k, mode), (hits, _) in zip(calls, out, strict=True):
        (alone,) = engine_a.search([query], k, mode=mode)
        assert len(hits) == k and _ids(hits) == _ids(alone), mode


def test_a_failing_request_does_not_fail_its_batch(engine_a, monkeypatch: pytest.MonkeyPatch) -> None:
    real_search = engine_a.search

    def search(queries, *args, **kwargs):
        if any("poison" in q for q in queries):
            raise RuntimeError("poisoned query")
        return real_search(queries, *args, **kwargs)

    monkeypatch.setattr(engine_a, "search", search)
    queries = _questions(3)
    calls = [(engine_a, queries[0], 3, "dense"), (engine_a, "poison pill", 3, "dense"),
             (engine_a, queries[1], 3, "dense"), (engine_a, queries[2], 3, "bm25")]
    batcher = MicroBatcher(Settings(microbatch_max_size=8), workers=1)
    out = asyncio.run(_gather(batcher, calls, return_exceptions=True))
    assert isinstance(out[1], RuntimeError) and "poisoned" in str(out[1])
    for i in (0, 2, 3):
        hits, timings = out[i]
        assert len(hits) == 3
    assert batcher.batches == 1


def test_each_request_keeps_the_engine_it_acquired(index_a: Path, index_b: Path, kb_ids) -> None:
    # During a hot swap one batch can hold requests for the old and the new engine: never mixed.
    a, b = load_engine(index_a, cache_size=0), load_engine(index_b, cache_size=0)
    try:
        q = _questions(4)
        calls = [(a, q[0], 5, "dense"), (b, q[1], 5, "dense"), (a, q[2], 5, "dense"), (b, q[3], 5, "dense")]
        out = asyncio.run(_gather(MicroBatcher(Settings(), workers=1), calls))
        for (engine, *_), (hits, _) in zip(calls, out, strict=True):
            assert set(_ids(hits)) <= kb_ids["a" if engine is a else "b"]
    finally:
        a.close()
        b.close()


def test_batched_queries_fill_the_query_cache(index_a: Path) -> None:
    engine = load_engine(index_a, cache_size=16)
    try:
        queries = _questions(5)
        asyncio.run(_gather(MicroBatcher(Settings(), workers=1), [(engine, q, 3, "dense") for q in queries]))
        assert len(engine.cache) == 5 and all(engine.cache.get(q) is not None for q in queries)
    finally:
        engine.close()


def test_search_after_stop_is_refused(engine_a) -> None:
    async def go() -> None:
        batcher = MicroBatcher(Settings(), workers=1)
        batcher.start()
        await batcher.stop()
        await batcher.search(engine_a, "anything", 3, "dense")

    with pytest.raises(BatcherClosed):
        asyncio.run(go())


def test_server_timing_round_trip() -> None:
    timings = {"queue_ms": 0.5, "encode_ms": 3.25, "search_ms": 0.125, "fetch_ms": 0.75, "total_ms": 5.0, "batch": 4.0}
    header = server_timing(timings)
    assert header.startswith("queue;dur=0.500, encode;dur=3.250")
    assert parse_server_timing(header) == timings


@pytest.mark.parametrize("microbatch", [True, False])
def test_app_concurrent_searches_match_and_report_timing(index_a: Path, microbatch: bool) -> None:
    from fastapi.testclient import TestClient

    from server.app import create_app

    settings = Settings(index_dir=index_a, microbatch=microbatch, microbatch_max_wait_ms=20, torch_threads=1,
                        default_mode="dense")
    queries = _questions(12)
    with TestClient(create_app(settings)) as client:
        assert (client.app.state.batcher is not None) == microbatch
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda q: client.post("/search", json={"query": q, "k": 4}), queries))
        sequential = [client.post("/search", json={"query": q, "k": 4}) for q in queries]
        batcher = client.app.state.batcher
        if microbatch:
            assert batcher.batches >= 1 and batcher.batched_queries == 2 * len(queries)
    for r, s in zip(responses, sequential, strict=True):
        assert r.status_code == 200 and s.status_code == 200
        assert _ids(r.json()["results"]) == _ids(s.json()["results"])
        timing = parse_server_timing(r.headers["Server-Timing"])
        assert {"encode_ms", "search_ms", "fetch_ms", "total_ms"} <= set(timing)
        assert 0 < timing["encode_ms"] <= timing["total_ms"]
        assert ("queue_ms" in timing) == microbatch


def test_app_validation_errors_stay_per_request(index_a: Path) -> None:
    from fastapi.testclient import TestClient

    from server.app import create_app

    with TestClient(create_app(Settings(index_dir=index_a, max_k=10))) as client:
        bodies = [{"query": "ok one", "k": 3}, {"query": "   ", "k": 3}, {"query": "ok two", "k": 99},
                  {"query": "ok three", "k": 3}]
        with ThreadPoolExecutor(4) as pool:
            codes = [r.status_code for r in pool.map(lambda b: client.post("/search", json=b), bodies)]
    assert codes == [200, 422, 422, 200]
