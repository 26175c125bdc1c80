"""``POST /v1/embeddings`` and ``GET /v1/models`` in the OpenAI format, so OpenAI-compatible clients
(the ``openai`` library, LangChain's and LlamaIndex's OpenAI embedding classes) can use the encoder.

Which tower embeds is ``input_type``: ``"query"`` (the default; what ``/search`` encodes queries with)
or ``"passage"`` (the passage tower, with an empty title: the index's passages were encoded as
``title [SEP] text``, so for the indexed vectors themselves use ``SentenceTransformer`` on the saved
model with ``[title, text]`` pairs). ``model`` is accepted and ignored: the loaded model answers.
``dimensions`` other than the model's own is refused (no truncated vectors). Limits, micro-batching,
the API key and the rate limit are those of ``/search``; errors are the same JSON bodies.
"""
from __future__ import annotations

import base64
import time
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import Field
from starlette.responses import Response

from server.auth import require_client
from server.deps import EngineDep, MetricsDep, SettingsDep, json_response
from server.errors import APIError
from server.schemas import ErrorResponse, _Strict, read_json

router = APIRouter(prefix="/v1")


class EmbeddingsRequest(_Strict):
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    input_type: Literal["query", "passage"] = "query"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


async def _embeddings_body(request: Request) -> EmbeddingsRequest:
    return await read_json(request, EmbeddingsRequest)


def model_id(model_dir: str) -> str:
    """The model's name for clients: its alias, or its directory's name (never a server path)."""
    return model_dir.rstrip("/").rsplit("/", 1)[-1] or model_dir


def _check(body: EmbeddingsRequest, dim: int, settings) -> list[str]:  # noqa: ANN001 - Settings
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts:
        raise APIError(422, "input is empty", {"loc": "input"})
    if len(texts) > settings.max_batch:
        raise APIError(422, f"too many inputs ({len(texts)}, limit {settings.max_batch})",
                       {"loc": "input", "count": len(texts), "max_batch": settings.max_batch})
    for i, text in enumerate(texts):
        if not text.strip():
            raise APIError(422, f"input[{i}] is empty", {"loc": f"input[{i}]"})
        if body.input_type == "query" and len(text) > settings.max_query_chars:
            raise APIError(422, f"input[{i}] is too long ({len(text)} characters, limit {settings.max_query_chars})",
                           {"loc": f"input[{i}]", "length": len(text), "max_query_chars": settings.max_query_chars})
    if body.dimensions is not None and body.dimensions != dim:
        raise APIError(422, f"dimensions {body.dimensions} is not supported: this model's vectors have {dim}",
                       {"loc": "dimensions", "supported": [dim]})
    return texts


def _encode(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(float).tolist()


_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 413, 422, 429, 503)}
_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": EmbeddingsRequest.model_json_schema()}}}}


@router.post("/embeddings", responses=_ERRORS, openapi_extra=_BODY, dependencies=[Depends(require_client)])
async def embeddings(request: Request, body: Annotated[EmbeddingsRequest, Depends(_embeddings_body)],
                     engine: EngineDep, settings: SettingsDep, metrics: MetricsDep) -> Response:
    start = time.perf_counter()
    texts = _check(body, engine.index.dim, settings)
    batcher = request.app.state.batcher
    if batcher is not None:
        (vectors, tokens), _ = await batcher.embed(engine, texts, body.input_type)
    else:
        vectors, tokens = await request.app.state.gate.run(lambda: engine.embed(texts, body.input_type))
    metrics.queries.inc(len(texts))
    data = [{"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
            for i, v in enumerate(vectors)]
    response = json_response({"object": "list", "data": data, "model": model_id(engine.model_dir),
                              "usage": {"prompt_tokens": int(sum(tokens)), "total_tokens": int(sum(tokens))}})
    response.headers["Server-Timing"] = f"total;dur={1000 * (time.perf_counter() - start):.3f}"
    return response


@router.get("/models", dependencies=[Depends(require_client)])
async def models(engine: EngineDep) -> Response:
    return json_response({"object": "list", "data": [{
        "id": model_id(engine.model_dir), "object": "model", "created": int(engine.loaded_at), "owned_by": "dpr-service",
        "dimensions": engine.index.dim}]})
