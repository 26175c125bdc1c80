"""HTTP/1.1 connections for ``dpr serve``: uvicorn's httptools protocol plus the limits uvicorn lacks.

uvicorn drops an idle keep-alive connection, but a client that connects and sends nothing, half a
request line, or a body slower than a trickle is kept forever, and nothing caps the number of open
connections. This protocol adds:

- a **header timeout**: from the connection's first moment (or the first byte of a later request on a
  kept-alive connection) to the end of the headers;
- a **body timeout**: from the end of the headers to the end of the body, however slowly it drips;
- a **connection cap**: a connection beyond ``max_connections`` is answered 503 and closed at once.

A timeout answers ``408`` (JSON, ``Connection: close``) when no response has started, then closes the
connection; the request's handler, if one is waiting for the body, sees a client disconnect, and
``scope["extensions"]["dpr.read_timeout"]`` tells the metrics it was a 408. httptools (llhttp) also
refuses ambiguous framing such as ``Content-Length`` with ``Transfer-Encoding`` (request smuggling),
which uvicorn's h11 protocol accepts.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

READ_TIMEOUT_KEY = "dpr.read_timeout"


def _response(status: int, reason: str, error: str, detail: Any, retry_after: int | None = None) -> bytes:
    body = orjson.dumps({"error": error, "detail": detail})
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "connection: close"]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header/body timeouts and a connection cap (class attributes,
    set by :func:`guarded_protocol`)."""

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 1024
    # Called with "malformed", "timeout" or "connections" for each request refused before the app saw it.
    on_reject: ClassVar[Callable[[str], None] | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ timers

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._on_timeout, phase)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _rejected(self, reason: str) -> None:
        if self.on_reject is not None:
            self.on_reject(reason)

    def _on_timeout(self, phase: str) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        self._rejected("timeout")
        cycle = self.cycle
        limit = self.header_timeout_s if phase == "headers" else self.body_timeout_s
        timeout = _response(408, "Request Timeout", f"request timeout: {phase} not received within {limit:g} s",
                            {"phase": phase, "timeout_s": limit})
        if phase == "headers" and cycle is not None and not cycle.response_complete:
            # A pipelined request stalls behind one still being answered: let that answer finish first.
            self._arm(limit, "headers")
            return
        if phase == "headers" or cycle is None:
            # No request of this connection is being handled: the partial one never reached the app.
            self.transport.write(timeout)
        elif not cycle.response_complete:
            self.scope.setdefault("extensions", {})[READ_TIMEOUT_KEY] = True
            if not cycle.response_started:
                self.transport.write(timeout)
            # The handler waiting in receive() gets http.disconnect now, not when the loop notices.
            cycle.disconnected = True
            cycle.message_event.set()
        # else: answered early (e.g. 413) while the client still trickles the body: just hang up.
        self.transport.close()

    # ------------------------------------------------------------------ connection and parser callbacks

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._rejected("connections")
            transport.write(_response(503, "Service Unavailable", "too many connections",
                                      {"max_connections": self.max_connections}, retry_after=1))
            transport.close()
            return
        self._arm(self.header_timeout_s, "headers")

    def send_400_response(self, msg: str) -> None:
        """A request httptools cannot parse (or frames ambiguously): answered as JSON, like every error."""
        self._rejected("malformed")
        self.transport.write(_response(400, "Bad Request", "malformed HTTP request", msg))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_timer is None:          # a fresh connection's timer already runs
            self._arm(self.header_timeout_s, "headers")

    def on_headers_complete(self) -> None:
        self._arm(self.body_timeout_s, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def guarded_protocol(header_timeout_s: float, body_timeout_s: float, max_connections: int,
                     on_reject: Callable[[str], None] | None = None) -> type[HttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type("DprHttpProtocol", (GuardedHttpToolsProtocol,), {
        "header_timeout_s": float(header_timeout_s), "body_timeout_s": float(body_timeout_s),
        "max_connections": int(max_connections),
        "on_reject": staticmethod(on_reject) if on_reject is not None else None})
