"""Search, batch, passage lookup, health, readiness, metrics and the page, on a tiny real index."""
from __future__ import annotations

import json
from pathlib import Path

DEMO_DATA = Path(__file__).resolve().parents[2] / "data" / "nq_oracle"


def _questions(n: int) -> list[str]:
    return [r["question"] for r in json.loads((DEMO_DATA / "nq-oracle-train.json").read_text())[:n]]


def test_search_returns_ranked_results_that_resolve(client) -> None:
    query = _questions(1)[0]
    r = client.post("/search", json={"query": query, "k": 5})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["query"] == query and body["k"] == 5 and body["took_ms"] > 0
    hits = body["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len({h["id"] for h in hits}) == 5
    for h in hits:
        p = client.get(f"/passages/{h['id']}")
        assert p.status_code == 200
        # a passage that is its own document (no --chunk): doc_id is its id
        assert p.json() == {"id": h["id"], "title": h["title"], "text": h["text"], "doc_id": h["id"]}
        assert h["doc_id"] == h["id"]


def test_default_k_and_k_capped_by_index_size(client) -> None:
    assert len(client.post("/search", json={"query": "who wrote it"}).json()["results"]) == 10
    n = client.get("/readyz").json()["index"]["count"]
    hits = client.post("/search", json={"query": "who wrote it", "k": 50}).json()["results"]
    assert len(hits) == min(50, n)


def test_search_finds_exact_passage_text(client) -> None:
    # Even a random model maps identical text to the identical vector: the passage is its own top hit.
    record = json.loads((DEMO_DATA / "nq-oracle-train.json").read_text())[3]
    gold = record["gold_context"]
    top = client.post("/search", json={"query": gold["text"][:150], "k": 3}).json()["results"]
    assert gold["text"] in [h["text"] for h in top]


def test_batch_matches_single_searches(client) -> None:
    queries = _questions(3)
    r = client.post("/search/batch", json={"queries": queries, "k": 4})
    assert r.status_code == 200
    batch = r.json()
    assert [b["query"] for b in batch] == queries
    for q, b in zip(queries, batch, strict=True):
        single = client.post("/search", json={"query": q, "k": 4}).json()
        assert [h["id"] for h in b["results"]] == [h["id"] for h in single["results"]]
        assert [h["rank"] for h in b["results"]] == [1, 2, 3, 4]


def test_unknown_passage_is_404_json(client) -> None:
    r = client.get("/passages/no-such-id")
    assert r.status_code == 404
    assert r.json() == {"error": "passage not found", "detail": {"id": "no-such-id"}}


def test_health_and_readiness(client, index_a: Path, tiny_model_dir: Path, kb_files) -> None:
    from common.data import load_corpus

    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    index = r.json()["index"]
    assert index["count"] == len(load_corpus(kb_files["a"])) and index["index_dir"] == str(index_a)
    assert index["model_dir"] == str(tiny_model_dir.resolve())
    assert len(index["weights_sha256"]) == 12


def test_readyz_is_503_without_engine(index_a: Path) -> None:
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    app = create_app(Settings(index_dir=index_a))
    client = TestClient(app)            # no `with`: the lifespan never runs, nothing is loaded
    r = client.get("/readyz")
    assert r.status_code == 503 and "not ready" in r.json()["error"]
    r = client.post("/search", json={"query": "x"})
    assert r.status_code == 503 and r.json()["error"].startswith("not ready")


def test_metrics_counts_requests_by_route_and_status(client, kb_files) -> None:
    from common.data import load_corpus

    client.post("/search", json={"query": "metrics probe", "k": 2})
    client.get("/passages/definitely-missing")
    text = client.get("/metrics").text
    assert 'dpr_http_requests_total{method="POST",route="/search",status="200"}' in text
    assert 'dpr_http_requests_total{method="GET",route="/passages/{pid:path}",status="404"}' in text
    assert 'dpr_http_request_duration_seconds_bucket{le="0.01",route="/search"}' in text
    assert f"dpr_index_passages {float(len(load_corpus(kb_files['a'])))}" in text
    assert "dpr_queries_total" in text


def test_page_is_served(client) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    for needle in ('id="q"', 'id="k"', 'id="mode"', 'value="hybrid"', 'fetch("search"', "textContent", 'id="error"'):
        assert needle in html


def test_openapi_documents_the_bodies(client) -> None:
    spec = client.get("/openapi.json").json()
    schema = spec["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"query", "k", "mode", "filter", "group_by"}
    put = spec["paths"]["/documents/{doc_id}"]["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(put["properties"]) == {"title", "text", "metadata"}


def test_onnx_runtime_server_answers_like_the_torch_one(client, index_a: Path) -> None:
    """DPR_RUNTIME=onnx through the real lifespan: same ranking as the torch-served app, micro-batched."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    settings = Settings(index_dir=index_a, runtime="onnx", quantize="none", torch_threads=1)
    queries = _questions(6)
    with TestClient(create_app(settings)) as onnx_client:
        assert onnx_client.app.state.holder.current.encoder.runtime == "onnx"
        with ThreadPoolExecutor(4) as pool:  # concurrent requests share micro-batches
            got = list(pool.map(lambda q: onnx_client.post("/search", json={"query": q, "k": 5, "mode": "dense"}),
                                queries))
    for query, r in zip(queries, got, strict=True):
        assert r.status_code == 200
        want = client.post("/search", json={"query": query, "k": 5, "mode": "dense"}).json()["results"]
        assert [h["id"] for h in r.json()["results"]] == [h["id"] for h in want]


def test_default_settings_serve_int8_onnx_queries_over_the_fp32_build(client, index_a: Path, monkeypatch,
                                                                       caplog) -> None:
    """Without DPR_RUNTIME/DPR_QUANTIZE a server encodes queries on ONNX Runtime int8 (the suite's
    conftest pins torch fp32 for speed, so this clears it), logs the pairing at INFO, not as a warning,
    and ranks like the fp32 torch server."""
    import logging

    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    monkeypatch.delenv("DPR_RUNTIME", raising=False)
    monkeypatch.delenv("DPR_QUANTIZE", raising=False)
    defaults = Settings()
    assert (defaults.runtime, defaults.quantize) == ("onnx", "int8")
    with caplog.at_level(logging.INFO, logger="server.engine"), \
            TestClient(create_app(Settings(index_dir=index_a))) as int8_client:
        encoder = int8_client.app.state.holder.current.encoder
        assert (encoder.runtime, encoder.quantization) == ("onnx", "int8")
        overlap = []
        for query in _questions(6):
            got = int8_client.post("/search", json={"query": query, "k": 5, "mode": "dense"})
            assert got.status_code == 200
            want = client.post("/search", json={"query": query, "k": 5, "mode": "dense"}).json()["results"]
            overlap.append(len({h["id"] for h in got.json()["results"]} & {h["id"] for h in want}))
    mismatch = [r for r in caplog.records if "quantize='int8'" in r.getMessage()]
    assert mismatch and all(r.levelno == logging.INFO for r in mismatch)
    # int8 rounding may swap near-ties on the random tiny model; the top 5 stay mostly the same.
    assert sum(overlap) >= 0.8 * 5 * len(overlap), overlap
