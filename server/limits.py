"""Request framing and body size, checked before and while the body is read (ASGI middleware)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import BodyTooLarge, Overloaded, error_response

T = TypeVar("T")

_CLOSE = {"Connection": "close"}


def framing_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a request's body framing is ambiguous (the request-smuggling patterns), or None.

    Two servers in a chain that disagree on where a body ends let a client hide a second request
    inside the first; RFC 9112 says to refuse and close. httptools refuses most of these itself;
    this check also covers uvicorn's h11 protocol and other servers.
    """
    lengths = [v for n, v in headers if n == b"content-length"]
    encodings = [v for n, v in headers if n == b"transfer-encoding"]
    if lengths and encodings:
        return "both Content-Length and Transfer-Encoding"
    if len(set(lengths)) > 1:
        return "several different Content-Length headers"
    if encodings and b",".join(encodings).strip().lower() != b"chunked":
        return "a Transfer-Encoding other than chunked"
    return None


class BodyLimitMiddleware:
    """Answers 413 when Content-Length exceeds ``max_bytes``; a body that turns out longer than its
    header (or has none: chunked) raises :class:`BodyTooLarge` from ``receive`` once it passes the limit,
    so no more than ``max_bytes`` plus one chunk is ever held in memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = framing_problem(scope["headers"])
        if problem is not None:
            # Connection: close, so nothing after this request on the connection is ever parsed.
            await error_response(400, f"ambiguous request framing: {problem}", None, _CLOSE)(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await error_response(400, "invalid Content-Length header", value.decode("latin-1")[:100],
                                         _CLOSE)(scope, receive, send)
                    return
                if length > self.max_bytes:
                    exc = BodyTooLarge(self.max_bytes)
                    await error_response(exc.status, exc.error, {**exc.detail, "content_length": length})(
                        scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


class AdmissionGate:
    """Bounds the searches that run outside the micro-batcher (``/search/batch``, or every search when
    micro-batching is off): ``workers`` run at once, at most ``max_queue`` wait, one more is refused
    with :class:`server.errors.Overloaded`. Used from the event loop only, so a plain counter is safe."""

    def __init__(self, limiter: Any, max_queue: int) -> None:
        self.limiter = limiter
        self.max_queue = max_queue
        self.admitted = 0

    async def run(self, fn: Callable[[], T]) -> T:
        if self.admitted >= self.max_queue + int(self.limiter.total_tokens):
            raise Overloaded(self.max_queue)
        self.admitted += 1
        try:
            # A capacity limiter, not the 40-thread default pool: more concurrent encodes than cores
            # only thrash torch's thread pools and make every request slower.
            return await anyio.to_thread.run_sync(fn, limiter=self.limiter)
        finally:
            self.admitted -= 1
