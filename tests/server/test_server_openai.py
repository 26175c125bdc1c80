"""POST /v1/embeddings and GET /v1/models, driven by the real `openai` client (pointed at the app):
the vectors are the encoder's, both encodings work, and bad requests get the usual 4xx bodies."""
from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings


@pytest.fixture(scope="module")
def app_client(index_a):
    with TestClient(create_app(Settings(index_dir=index_a, torch_threads=1, max_batch=8))) as c:
        yield c


@pytest.fixture(scope="module")
def openai_client(app_client):
    openai = pytest.importorskip("openai", reason="pip install '.[test]' (openai)")
    return openai.OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=app_client)


def test_embeddings_through_the_openai_client_equal_the_encoder(openai_client, app_client) -> None:
    engine = app_client.app.state.holder.current
    texts = ["who sang the song", "where is the river"]
    got = openai_client.embeddings.create(input=texts, model="anything")              # base64 on the wire
    assert [d.index for d in got.data] == [0, 1] and got.model == "model"
    np.testing.assert_allclose(np.array([d.embedding for d in got.data]), engine.encode(texts), atol=1e-6)
    assert got.usage.prompt_tokens == got.usage.total_tokens > len(texts)
    floats = openai_client.embeddings.create(input=texts[0], model="x", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, engine.encode(texts[:1])[0], atol=1e-6)
    passage = openai_client.embeddings.create(input="the river flows to the sea", model="x",
                                              extra_body={"input_type": "passage"})
    expected, _ = engine.embed(["the river flows to the sea"], "passage")
    np.testing.assert_allclose(passage.data[0].embedding, expected[0], atol=1e-6)
    models = openai_client.models.list().data
    assert [m.id for m in models] == ["model"] and models[0].dimensions == 32


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"input": []}, 422, "input is empty"),
    ({"input": ["ok", "  "]}, 422, "input[1] is empty"),
    ({"input": ["q"] * 9}, 422, "too many inputs"),
    ({"input": "x" * 1500}, 422, "input[0] is too long"),
    ({"input": "x", "dimensions": 16}, 422, "dimensions 16 is not supported"),
    ({"input": "x", "encoding_format": "int8"}, 422, "encoding_format"),
    ({"input": "x", "input_type": "document"}, 422, "input_type"),
    ({"input": [1, 2, 3]}, 422, "input"),
])
def test_bad_embedding_requests_are_4xx_json(app_client, body: dict, status: int, message: str) -> None:
    r = app_client.post("/v1/embeddings", json=body)
    assert r.status_code == status and message in r.json()["error"], r.text
    assert set(r.json()) == {"error", "detail"}


def test_embeddings_are_micro_batched_with_concurrent_requests(app_client) -> None:
    import asyncio

    engine = app_client.app.state.holder.current
    batcher = app_client.app.state.batcher

    async def three():
        return await asyncio.gather(*(batcher.embed(engine, [f"question {i}", f"other {i}"], "query")
                                      for i in range(3)))

    before = batcher.batches
    results = app_client.portal.call(three)
    for i, ((vectors, tokens), timings) in enumerate(results):
        np.testing.assert_allclose(vectors, engine.encode([f"question {i}", f"other {i}"]), atol=1e-6)
        assert len(tokens) == 2 and timings["batch"] >= 1
    assert batcher.batches - before <= 3


def test_langchains_openai_embeddings_class_works_against_the_server(app_client) -> None:
    """LangChain's OpenAIEmbeddings (langchain-openai), pointed at the app. Its default token-length
    check downloads a tiktoken vocabulary, so it is turned off: the server truncates itself."""
    langchain_openai = pytest.importorskip("langchain_openai", reason="pip install '.[test]' (langchain-openai)")
    engine = app_client.app.state.holder.current
    embeddings = langchain_openai.OpenAIEmbeddings(model="dpr", base_url="http://testserver/v1", api_key="unused",
                                                   http_client=app_client, check_embedding_ctx_length=False)
    np.testing.assert_allclose(embeddings.embed_query("who sang the song"), engine.encode(["who sang the song"])[0],
                               atol=1e-6)
    docs = embeddings.embed_documents(["who sang the song", "where is the river"])
    assert len(docs) == 2 and len(docs[0]) == engine.index.dim
