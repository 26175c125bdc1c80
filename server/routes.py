"""Public routes: search, batch search, passage lookup, health, readiness, metrics and the page."""
from __future__ import annotations

import time
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from starlette.responses import Response

from server.auth import require_client
from server.deps import EngineDep, HolderDep, MetricsDep, SettingsDep, json_response
from server.engine import Engine
from server.errors import APIError
from server.schemas import (
    BatchSearchRequest,
    ErrorResponse,
    SearchRequest,
    SearchResponse,
    check_batch,
    check_k,
    check_query,
    parse_search_filter,
    read_json,
    resolve_mode,
)
from server.settings import Settings
from server.timing import server_timing

router = APIRouter()

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 409, 413, 422, 429, 503)}


# The body is read by a dependency listed before EngineDep: a client that stalls mid-body holds no
# engine, so a retired index is never kept in memory by a slow (or hostile) upload.
async def _search_body(request: Request) -> SearchRequest:
    return await read_json(request, SearchRequest)


async def _batch_body(request: Request) -> BatchSearchRequest:
    return await read_json(request, BatchSearchRequest)


SearchBody = Annotated[SearchRequest, Depends(_search_body)]
BatchBody = Annotated[BatchSearchRequest, Depends(_batch_body)]


def _body_doc(model: type) -> dict:
    # The body is parsed by read_json, not by FastAPI, so the schema is declared for the docs by hand.
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def _search(request: Request, engine: Engine, queries: list[str], k: int, mode: str,
                  settings: Settings, timings: dict[str, float] | None = None, flt: Any = None,
                  group_by: str | None = None) -> list[list[dict]]:
    search = partial(engine.search, queries, k, mode=mode, timings=timings, flt=flt, group_by=group_by)
    return await request.app.state.gate.run(search)


@router.post("/search", responses={200: {"model": SearchResponse}, **_ERRORS}, openapi_extra=_body_doc(SearchRequest),
             dependencies=[Depends(require_client)])
async def search(request: Request, body: SearchBody, engine: EngineDep, settings: SettingsDep,
                 metrics: MetricsDep) -> Response:
    start = time.perf_counter()
    check_k(body.k, settings)
    query = check_query(body.query, settings)
    mode = resolve_mode(body.mode, engine.has_bm25, settings)
    flt = parse_search_filter(body.filter, engine)
    batcher = request.app.state.batcher
    # Filtered and grouped searches skip the micro-batcher: its batches share one plain search.
    if batcher is not None and flt is None and body.group_by is None:
        hits, timings = await batcher.search(engine, query, body.k, mode)
    else:
        timings = {}
        (hits,) = await _search(request, engine, [query], body.k, mode, settings, timings, flt, body.group_by)
    metrics.queries.inc()
    took_ms = round((time.perf_counter() - start) * 1000, 3)
    # Server-Timing: where the time went (queue / encode / search / fetch), for `dpr bench speed`.
    response = json_response({"query": body.query, "k": body.k, "mode": mode, "results": hits, "took_ms": took_ms})
    response.headers["Server-Timing"] = server_timing({**timings, "total_ms": took_ms})
    return response


@router.post("/search/batch", responses={200: {"model": list[SearchResponse]}, **_ERRORS},
             openapi_extra=_body_doc(BatchSearchRequest), dependencies=[Depends(require_client)])
async def search_batch(request: Request, body: BatchBody, engine: EngineDep, settings: SettingsDep,
                       metrics: MetricsDep) -> Response:
    """All queries are encoded in one batch; ``took_ms`` is the time for the whole batch."""
    start = time.perf_counter()
    check_k(body.k, settings)
    queries = check_batch(body.queries, settings)
    mode = resolve_mode(body.mode, engine.has_bm25, settings)
    flt = parse_search_filter(body.filter, engine)
    results = await _search(request, engine, queries, body.k, mode, settings, flt=flt, group_by=body.group_by)
    metrics.queries.inc(len(queries))
    took_ms = round((time.perf_counter() - start) * 1000, 3)
    return json_response([{"query": q, "k": body.k, "mode": mode, "results": hits, "took_ms": took_ms}
                          for q, hits in zip(body.queries, results, strict=True)])


@router.get("/passages/{pid:path}", responses={code: {"model": ErrorResponse} for code in (401, 404, 429, 503)},
            dependencies=[Depends(require_client)])
def get_passage(pid: str, engine: EngineDep) -> Response:
    passage = engine.passage(pid)
    if passage is None:
        raise APIError(404, "passage not found", {"id": pid})
    out = {"id": passage.pid, "title": passage.title, "text": passage.text, "doc_id": passage.doc}
    if passage.start is not None:
        out["start"], out["end"] = passage.start, passage.end
    if passage.metadata:
        out["metadata"] = passage.metadata
    return json_response(out)


@router.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(holder: HolderDep) -> Response:
    """Ready when an index is loaded and its files are still the ones it opened (503 otherwise)."""
    engine = holder.current
    if engine is None:
        raise APIError(503, "not ready: no index is loaded")
    problem = engine.health()
    if problem is not None:
        raise APIError(503, "not ready: the loaded index is damaged", {"problem": problem, "index": engine.summary()})
    return json_response({"status": "ready", "index": engine.summary()})


@router.get("/metrics")
async def metrics_route(holder: HolderDep, metrics: MetricsDep) -> Response:
    engine = holder.current
    metrics.index_size.set(len(engine) if engine is not None else 0)
    return Response(metrics.render(), media_type=metrics.content_type)


@router.get("/", include_in_schema=False)
async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(request.app.state.page_html)
