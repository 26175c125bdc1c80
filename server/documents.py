"""``PUT``/``DELETE``/``GET /documents/{id}``: change the knowledge base while serving.

A write needs the admin token (``DPR_ADMIN_TOKEN``), as reload does. ``PUT`` cuts the document as
the index's documents were cut, embeds it and appends it to the live log with ``fsync`` before it
answers 200: an acknowledged write survives a ``kill -9`` and is replayed at start-up
(:mod:`indexer.live_log`). The next search sees it; ``dpr index compact`` folds the writes into a
new build. Reading a document needs only what searching does.
"""
from __future__ import annotations

import logging
import time
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from common.data import DataError
from common.documents import CHUNK_SEPARATOR, MAX_DOC_ID_LENGTH, Document, check_metadata
from indexer.live_index import MetadataConflict
from server.admin import require_admin
from server.auth import require_client
from server.deps import EngineDep, json_response
from server.errors import APIError
from server.schemas import DocumentRequest, ErrorResponse, read_json

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/documents")
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 422, 429, 503)}


def _check_id(doc_id: str) -> str:
    if not doc_id.strip():
        raise APIError(422, "document id is empty", {"loc": "id"})
    if len(doc_id) > MAX_DOC_ID_LENGTH:
        raise APIError(422, f"document id is too long ({len(doc_id)} characters, limit {MAX_DOC_ID_LENGTH})",
                       {"loc": "id"})
    if CHUNK_SEPARATOR in doc_id:
        raise APIError(422, f"document id must not contain {CHUNK_SEPARATOR!r} (it separates a document id from "
                            "its passage number)", {"loc": "id", "value": doc_id})
    return doc_id


def _not_writable(e: OSError) -> APIError:
    logger.error("cannot write the live log: %s", e)
    return APIError(503, "cannot write the live log beside the index (read-only or full disk?)", e.strerror)


async def _document_body(request: Request) -> DocumentRequest:
    return await read_json(request, DocumentRequest)


DocumentBody = Annotated[DocumentRequest, Depends(_document_body)]


@router.put("/{doc_id:path}", dependencies=[Depends(require_admin)], responses=_ERRORS,
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                "schema": DocumentRequest.model_json_schema()}}}})
async def put_document(doc_id: str, request: Request, body: DocumentBody, engine: EngineDep) -> Response:
    """Create or replace a document: ``{"title", "text", "metadata"}``; its old passages are replaced whole."""
    start = time.perf_counter()
    doc_id = _check_id(doc_id)
    if not body.text.strip():
        raise APIError(422, "text is empty", {"loc": "text"})
    try:
        metadata = check_metadata(body.metadata, "metadata")
    except DataError as e:
        raise APIError(422, f"invalid {e}", {"loc": "metadata"}) from None
    doc = Document(doc_id=doc_id, title=body.title, text=body.text, metadata=metadata)
    try:
        # The types are checked again under the log's lock: a concurrent write may have given a
        # new field another type since this request was read (then nothing is written).
        result = await request.app.state.gate.run(partial(engine.upsert, doc))
    except MetadataConflict as e:
        raise APIError(422, f"invalid metadata: {e}", {"loc": "metadata"}) from None
    except OSError as e:
        raise _not_writable(e) from None
    logger.info("upserted document %r (%d passages)", doc_id, result["passages"])
    return json_response({**result, "took_ms": round((time.perf_counter() - start) * 1000, 3)})


@router.delete("/{doc_id:path}", dependencies=[Depends(require_admin)], responses=_ERRORS)
async def delete_document(doc_id: str, request: Request, engine: EngineDep) -> Response:
    """Delete a document: every passage of it is gone from the next search, in every mode."""
    doc_id = _check_id(doc_id)
    try:
        deleted = await request.app.state.gate.run(partial(engine.delete, doc_id))
    except OSError as e:
        raise _not_writable(e) from None
    if not deleted:
        raise APIError(404, "document not found", {"id": doc_id})
    logger.info("deleted document %r", doc_id)
    return json_response({"id": doc_id, "deleted": True})


@router.get("/{doc_id:path}", dependencies=[Depends(require_client)], responses=_ERRORS)
async def get_document(doc_id: str, request: Request, engine: EngineDep) -> Response:
    """A document's passages as searches see them now."""
    if not doc_id.strip():
        # The store matches an empty id to every passage of an index built without chunking.
        raise APIError(422, "document id is empty", {"loc": "id"})
    passages = await request.app.state.gate.run(partial(engine.live.document, doc_id))
    if not passages:
        raise APIError(404, "document not found", {"id": doc_id})
    return json_response({"id": doc_id, "passages": [
        {"id": p.pid, "title": p.title, "text": p.text, "start": p.start, "end": p.end, "metadata": p.metadata}
        for p in passages]})
