"""``POST /admin/reload``: load a newer index build (and its model if it changed), then swap.

The load runs on a worker thread while the other routes keep serving the old engine; the swap is
one reference assignment. A failed load changes nothing. Disabled unless ``DPR_ADMIN_TOKEN`` is set.
"""
from __future__ import annotations

import hmac
import logging
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from indexer import IndexLoadError, ManifestMismatch
from server.deps import HolderDep, MetricsDep, SettingsDep, json_response
from server.engine import EngineHolder, EngineLoadError, load_engine
from server.errors import APIError
from server.metrics import Metrics
from server.schemas import ErrorResponse, ReloadRequest, read_json
from server.settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/admin")


async def require_admin(request: Request, settings: SettingsDep) -> None:
    if settings.admin_token is None or not settings.admin_token.get_secret_value():
        raise APIError(403, "admin API disabled: no DPR_ADMIN_TOKEN configured")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = settings.admin_token.get_secret_value().encode()
    # compare_digest even for a missing header: the time taken must not tell how close a guess was.
    if not hmac.compare_digest(given.strip().encode() if scheme.lower() == "bearer" else b"", expected):
        raise APIError(401, "missing or wrong admin token", "send 'Authorization: Bearer <DPR_ADMIN_TOKEN>'",
                       headers={"WWW-Authenticate": "Bearer"})


def reload_engine(holder: EngineHolder, settings: Settings, metrics: Metrics, body: ReloadRequest) -> dict[str, Any]:
    """Load, check and swap in a new engine; raises :class:`APIError` and leaves the old one serving."""
    if not holder.reload_lock.acquire(blocking=False):
        raise APIError(409, "a reload is already in progress")
    try:
        current = holder.current
        index_dir = body.index_dir or (str(current.index_dir) if current else settings.index_dir)
        if index_dir is None:
            raise APIError(422, "no index_dir given and none is being served")
        model_dir = body.model_dir or settings.model_dir
        previous = current.summary() if current else None
        try:
            engine = load_engine(index_dir, model_dir, reuse=current, cache_size=settings.encode_cache_size,
                                 quantize=settings.quantize, runtime=settings.runtime)
        except ManifestMismatch as e:
            raise APIError(409, "reload refused: the model does not match the index", str(e)) from None
        except (IndexLoadError, EngineLoadError, OSError) as e:    # OSError: e.g. a path too long to stat
            raise APIError(422, "reload failed: cannot load the index or its model", str(e)) from None
        except Exception as e:
            logger.exception("reload of %s failed", index_dir)
            raise APIError(500, "reload failed", f"{type(e).__name__}: {e}") from None
        holder.swap(engine)
        metrics.index_size.set(len(engine))
        logger.info("reloaded: now serving %s (%d passages)", engine.index_dir, len(engine))
        return {"status": "reloaded", "previous": previous, "current": engine.summary()}
    except APIError:
        metrics.reloads.labels("failed").inc()
        raise
    finally:
        holder.reload_lock.release()


# The body is parsed by read_json (optional), so it is declared for the docs and the fuzzer by hand.
_RELOAD_BODY = {"requestBody": {"required": False, "content": {
    "application/json": {"schema": ReloadRequest.model_json_schema()}}}}


@router.post("/reload", dependencies=[Depends(require_admin)], openapi_extra=_RELOAD_BODY,
             responses={code: {"model": ErrorResponse} for code in (401, 403, 409, 422, 500)})
async def reload(request: Request, holder: HolderDep, settings: SettingsDep, metrics: MetricsDep) -> Response:
    """Body (optional): ``{"index_dir": ..., "model_dir": ...}``; default: the served dir, rebuilt."""
    body = await read_json(request, ReloadRequest, allow_empty=True)
    result = await anyio.to_thread.run_sync(reload_engine, holder, settings, metrics, body)
    metrics.reloads.labels("ok").inc()
    return json_response(result)
