"""``POST /admin/reload`` and ``POST /admin/rollback``: swap in another build of the index.

Reload loads the build an index directory now serves (and its model if it changed); rollback makes
the build before the current one current (``dpr index rollback``) and loads it. The load runs on a
worker thread while the other routes keep serving the old engine, and checks everything before the
swap (every file's SHA-256, the store, the model, a test search in every mode); the swap is one
reference assignment. A failed load changes nothing and is a 4xx whose body names the problem
relative to the index, never a server path beyond the one the request gave. Disabled unless
``DPR_ADMIN_TOKEN`` is set.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from indexer import IndexLoadError, ManifestMismatch
from indexer.builds import current_build, rollback, switch_current
from server.auth import bearer_token, key_matches
from server.deps import HolderDep, MetricsDep, SettingsDep, json_response
from server.engine import Engine, EngineHolder, EngineLoadError, load_engine
from server.errors import APIError
from server.metrics import Metrics
from server.schemas import ErrorResponse, ReloadRequest, read_json
from server.settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/admin")


async def require_admin(request: Request, settings: SettingsDep) -> None:
    if settings.admin_token is None or not settings.admin_token.get_secret_value():
        raise APIError(403, "admin API disabled: no DPR_ADMIN_TOKEN configured")
    expected = settings.admin_token.get_secret_value().encode()
    # compare_digest even for a missing header: the time taken must not tell how close a guess was.
    if not key_matches(bearer_token(request), [expected]):
        raise APIError(401, "missing or wrong admin token", "send 'Authorization: Bearer <DPR_ADMIN_TOKEN>'",
                       headers={"WWW-Authenticate": "Bearer"})


def _public(message: str, roots: list[Path]) -> str:
    """``message`` with the index's own paths made relative (``manifest.json: ...``)."""
    for root in sorted({str(r) for r in roots if str(r) not in ("", ".")}, key=len, reverse=True):
        message = message.replace(root + "/", "").replace(root, "<index>")
    return message


def _load(index_dir: str, model_dir: str | None, current: Engine | None, settings: Settings) -> Engine:
    """Load and check the engine for ``index_dir``; every failure is an :class:`APIError` (4xx)."""
    try:
        build = current_build(index_dir)
    except (IndexLoadError, OSError):
        # One answer for a missing path, a non-index and a broken pointer: which one it is would
        # tell a caller what exists on the server.
        raise APIError(422, "reload failed: not an index directory",
                       f"{index_dir}: not an index directory (or its current build is missing)") from None
    roots = [build, Path(index_dir), Path(index_dir).resolve()]
    try:
        return load_engine(index_dir, model_dir, reuse=current, **settings.engine_options())
    except ManifestMismatch as e:
        raise APIError(409, "reload refused: the model does not match the index", _public(str(e), roots)) from None
    except EngineLoadError as e:
        logger.warning("reload of %s failed: %s", index_dir, e)
        raise APIError(422, "reload failed: cannot load the index's model", _public(e.public, roots)) from None
    except (IndexLoadError, OSError, ValueError) as e:
        logger.warning("reload of %s failed: %s", index_dir, e)
        raise APIError(422, "reload failed: the index is damaged or not a valid build",
                       _public(str(e), roots)) from None
    except Exception as e:  # noqa: BLE001 - a crafted build that trips a library: still the build's fault
        logger.exception("reload of %s failed", index_dir)
        raise APIError(422, "reload failed: the index could not be loaded",
                       f"{type(e).__name__} while reading the build (see the server log)") from None


def _swap(holder: EngineHolder, metrics: Metrics, engine: Engine, previous: dict[str, Any] | None,
          status: str) -> dict[str, Any]:
    holder.swap(engine)
    metrics.index_size.set(len(engine))
    logger.info("%s: now serving %s, build %s (%d passages)", status, engine.index_dir, engine.index.build,
                len(engine))
    return {"status": status, "previous": previous, "current": engine.summary()}


def reload_engine(holder: EngineHolder, settings: Settings, metrics: Metrics, body: ReloadRequest) -> dict[str, Any]:
    """Load, check and swap in a new engine; raises :class:`APIError` and leaves the old one serving."""
    if not holder.reload_lock.acquire(blocking=False):
        raise APIError(409, "a reload is already in progress")
    try:
        current = holder.current
        index_dir = body.index_dir or (str(current.index_dir) if current else settings.index_dir)
        if index_dir is None:
            raise APIError(422, "no index_dir given and none is being served")
        engine = _load(str(index_dir), body.model_dir or settings.model_dir, current, settings)
        return _swap(holder, metrics, engine, current.summary() if current else None, "reloaded")
    except APIError:
        metrics.reloads.labels("failed").inc()
        raise
    finally:
        holder.reload_lock.release()


def rollback_engine(holder: EngineHolder, settings: Settings, metrics: Metrics) -> dict[str, Any]:
    """Make the served index's previous build current and serve it; on any failure the pointer is put
    back and the current engine keeps serving."""
    if not holder.reload_lock.acquire(blocking=False):
        raise APIError(409, "a reload is already in progress")
    try:
        current = holder.current
        if current is None:
            raise APIError(503, "not ready: no index is loaded")
        index_dir = current.index_dir
        try:
            target = rollback(index_dir)
        except ValueError as e:
            raise APIError(409, "nothing to roll back to", _public(str(e), [index_dir, index_dir.resolve()])) from None
        except OSError as e:
            raise APIError(409, "cannot switch the index's current build", e.strerror) from None
        try:
            engine = _load(str(index_dir), settings.model_dir, current, settings)
        except APIError:
            switch_current(index_dir, current.index.build)
            raise
        logger.info("%s: rolled back from build %s to %s", index_dir, current.index.build, target.name)
        return _swap(holder, metrics, engine, current.summary(), "rolled back")
    except APIError:
        metrics.reloads.labels("failed").inc()
        raise
    finally:
        holder.reload_lock.release()


# The body is parsed by read_json (optional), so it is declared for the docs and the fuzzer by hand.
_RELOAD_BODY = {"requestBody": {"required": False, "content": {
    "application/json": {"schema": ReloadRequest.model_json_schema()}}}}


@router.post("/reload", dependencies=[Depends(require_admin)], openapi_extra=_RELOAD_BODY,
             responses={code: {"model": ErrorResponse} for code in (401, 403, 409, 422)})
async def reload(request: Request, holder: HolderDep, settings: SettingsDep, metrics: MetricsDep) -> Response:
    """Body (optional): ``{"index_dir": ..., "model_dir": ...}``; default: the served dir, rebuilt."""
    body = await read_json(request, ReloadRequest, allow_empty=True)
    result = await anyio.to_thread.run_sync(reload_engine, holder, settings, metrics, body)
    metrics.reloads.labels("ok").inc()
    return json_response(result)


@router.post("/rollback", dependencies=[Depends(require_admin)],
             responses={code: {"model": ErrorResponse} for code in (401, 403, 409, 422, 503)})
async def rollback_route(holder: HolderDep, settings: SettingsDep, metrics: MetricsDep) -> Response:
    """Serve the build before the current one (the served directory's ``current`` is switched back)."""
    result = await anyio.to_thread.run_sync(rollback_engine, holder, settings, metrics)
    metrics.reloads.labels("ok").inc()
    return json_response(result)
