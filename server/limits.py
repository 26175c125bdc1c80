"""Request-body size limit, enforced before and while the body is read (ASGI middleware)."""
from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import BodyTooLarge, error_response


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
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await error_response(400, "invalid Content-Length header", value.decode("latin-1"))(
                        scope, receive, send)
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
