"""Request and response shapes, and reading a JSON body into them with precise 4xx errors.

Requests are strict (``"5"`` is not an int, unknown fields are refused). The body is parsed here
rather than by FastAPI so that non-UTF-8 bytes, malformed JSON and a wrong top-level type each get
their own message, whatever Content-Type the client sent.
"""
from __future__ import annotations

from typing import Any, Literal, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ConfigDict, ValidationError

from common.choices import SearchMode
from indexer.filters import FilterError
from server.errors import APIError, validation_detail
from server.settings import Settings

M = TypeVar("M", bound=BaseModel)
Mode = SearchMode


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class SearchRequest(_Strict):
    query: str
    k: int = 10
    # None: the server's default mode (DPR_DEFAULT_MODE).
    mode: Mode | None = None
    # Metadata conditions, ANDed: {"source": "wiki", "year": {"gte": 2010}, "lang": {"in": ["en", "de"]}}.
    filter: dict[str, Any] | None = None
    # "doc": the best passage of each of the top k documents.
    group_by: Literal["doc"] | None = None


class BatchSearchRequest(_Strict):
    queries: list[str]
    k: int = 10
    mode: Mode | None = None
    filter: dict[str, Any] | None = None
    group_by: Literal["doc"] | None = None


class DocumentRequest(_Strict):
    title: str = ""
    text: str
    metadata: dict[str, Any] | None = None


class ReloadRequest(_Strict):
    index_dir: str | None = None
    model_dir: str | None = None


class Hit(BaseModel):
    id: str
    title: str
    text: str
    score: float
    rank: int
    doc_id: str
    # Passages cut from documents: character offsets into the document's text.
    start: int | None = None
    end: int | None = None
    metadata: dict[str, Any] | None = None


class SearchResponse(BaseModel):
    query: str
    k: int
    mode: Mode
    results: list[Hit]
    took_ms: float


class ErrorResponse(BaseModel):
    error: str
    detail: Any = None


async def read_json(request: Request, model: type[M], *, allow_empty: bool = False) -> M:
    """The request body validated as ``model``; every failure is an :class:`APIError` (4xx)."""
    raw = await request.body()      # BodyTooLarge (413) comes out of here, raised by BodyLimitMiddleware
    if not raw.strip():
        if allow_empty:
            return model()
        raise APIError(400, "empty request body", "expected a JSON object")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, "request body is not valid UTF-8", {"position": e.start, "reason": e.reason}) from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise APIError(400, "malformed JSON", {"msg": e.msg, "line": e.lineno, "column": e.colno}) from None
    if not isinstance(data, dict):
        raise APIError(422, "expected a JSON object", {"got": type(data).__name__})
    try:
        return model.model_validate(data)
    except ValidationError as e:
        detail = validation_detail(e.errors())
        first = detail[0] if detail else {"loc": "", "msg": ""}
        raise APIError(422, f"invalid request: {first['loc'] or 'body'}: {first['msg']}", detail) from None


def resolve_mode(mode: str | None, has_bm25: bool, settings: Settings) -> str:
    """The mode a request runs in; asking for BM25 or hybrid on a dense-only index is a 409."""
    if mode is None:
        return settings.default_mode if has_bm25 else "dense"
    if mode != "dense" and not has_bm25:
        raise APIError(409, f"mode {mode!r} needs a BM25 index, and the loaded index has none "
                            "(built before BM25 was added): rebuild it with `dpr index`, or use mode 'dense'",
                       {"loc": "mode", "value": mode})
    return mode


def check_k(k: int, settings: Settings) -> None:
    if not 1 <= k <= settings.max_k:
        raise APIError(422, f"k must be between 1 and {settings.max_k}", {"loc": "k", "value": k})


def check_query(query: str, settings: Settings, loc: str = "query") -> str:
    """The query with surrounding whitespace removed; refuses empty and over-long queries."""
    if len(query) > settings.max_query_chars:
        raise APIError(422, f"{loc} is too long ({len(query)} characters, limit {settings.max_query_chars})",
                       {"loc": loc, "length": len(query), "max_query_chars": settings.max_query_chars})
    stripped = query.strip()
    if not stripped:
        raise APIError(422, f"{loc} is empty", {"loc": loc})
    return stripped


def check_batch(queries: list[str], settings: Settings) -> list[str]:
    if not queries:
        raise APIError(422, "queries is empty", {"loc": "queries"})
    if len(queries) > settings.max_batch:
        raise APIError(422, f"too many queries ({len(queries)}, limit {settings.max_batch})",
                       {"loc": "queries", "count": len(queries), "max_batch": settings.max_batch})
    return [check_query(q, settings, f"queries[{i}]") for i, q in enumerate(queries)]


def parse_search_filter(spec: dict[str, Any] | None, engine: Any) -> Any:
    """The request's ``filter`` parsed against the loaded knowledge base's metadata fields (422 otherwise)."""
    if spec is None:
        return None
    try:
        return engine.live.parse_filter(spec)
    except FilterError as e:
        raise APIError(422, str(e), {"loc": e.loc, "fields": sorted(engine.live.schema)[:50]}) from None
