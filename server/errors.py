"""Every error the API returns is JSON ``{"error": "...", "detail": ...}``; none is a bare 500.

Bad input is the client's fault and gets a 4xx naming what is wrong; an unexpected exception is
logged with its traceback and answered with a 500 whose body says only that. A client that hangs
up mid-request is neither: it is counted as 499 and logged at debug level. Too much load is a 503
with ``Retry-After``; an index whose files were damaged under the server is a 503 as well (and
``/readyz`` says so), since no request can fix it.
"""
from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from indexer.errors import IndexLoadError

CLIENT_CLOSED = 499
RETRY_AFTER_S = 1

logger = logging.getLogger(__name__)


class NotReady(RuntimeError):
    """No engine is loaded (start-up has not finished or failed)."""


class APIError(Exception):
    """An error response: HTTP ``status``, a one-line ``error`` and an optional JSON-able ``detail``."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


class Overloaded(APIError):
    """More searches are waiting than the server admits (``max_queue``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(503, "server overloaded: too many searches waiting, retry shortly",
                         {"max_queue": limit}, headers={"Retry-After": str(RETRY_AFTER_S)})


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large (limit {limit} bytes)", {"max_body_bytes": limit})


def error_response(status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"error": error, "detail": detail}, default=str)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def validation_detail(errors: Any) -> list[dict[str, Any]]:
    """Pydantic errors as ``[{"loc": "body.k", "msg": ...}]``, without echoing the (maybe huge) input."""
    out = []
    for e in errors:
        loc = ".".join(str(part) for part in e.get("loc", ()))
        out.append({"loc": loc, "msg": e.get("msg", ""), "type": e.get("type", "")})
    return out


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc.status, exc.error, exc.detail, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    messages = {404: "not found", 405: "method not allowed"}
    error = messages.get(exc.status_code, str(exc.detail))
    detail = {"path": request.url.path} if exc.status_code == 404 else exc.detail
    return error_response(exc.status_code, error, detail, getattr(exc, "headers", None))


async def _request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid request", validation_detail(exc.errors()))


async def _not_ready(request: Request, exc: Exception) -> Response:
    return error_response(503, "not ready: no index is loaded", str(exc), {"Retry-After": "5"})


async def _client_disconnect(request: Request, exc: Exception) -> Response:
    # Sent into the void (uvicorn drops writes to a closed connection); its status is what the
    # metrics record.
    logger.debug("client went away during %s %s", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED)


async def _damaged_index(request: Request, exc: Exception) -> Response:
    # Opening checked every file; failing now means a file changed under the running server.
    logger.error("index read failed on %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, "the loaded index is damaged (a file changed on disk since it was opened); "
                          "see /readyz and the server log", None, {"Retry-After": "30"})


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal server error", f"{type(exc).__name__}; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(NotReady, _not_ready)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(IndexLoadError, _damaged_index)
    app.add_exception_handler(Exception, _unexpected)
