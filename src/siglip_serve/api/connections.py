"""Per-request protocol limits as pure ASGI middleware: request-target and header-line sizes, body read time.

- A request target (path and query) longer than `max_url_bytes` gets 414 URI Too Long (RFC 9110 §15.5.15).
- A header line (``name: value``) longer than `max_header_bytes` gets 431 Request Header Fields Too Large
  (RFC 6585 §5).
- A body not fully received within `body_timeout_s` of the app's first read gets 408 Request Timeout
  (RFC 9110 §15.5.9) with ``Connection: close``, and the app is told the client is gone (``http.disconnect``).

All three answer OpenAI's error body. The limits on the connection itself (the time to send a request head,
heads too large to buffer) are the server's job: see `siglip_serve.http_protocol`. This module imports
neither uvicorn nor torch, so the HTTP layer stays server-agnostic.
"""

from __future__ import annotations

import asyncio

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from siglip_serve.api.errors import error_response

_DISCONNECT: Message = {"type": "http.disconnect"}


class ConnectionGuard:
    """Wraps the app: refuses oversized request targets and header lines, bounds the body read time."""

    def __init__(self, app: ASGIApp, *, body_timeout_s: float, max_header_bytes: int, max_url_bytes: int) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s
        self.max_header_bytes = max_header_bytes
        self.max_url_bytes = max_url_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan passes through
            await self.app(scope, receive, send)
            return
        refusal = self.size_refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        request = _BodyDeadline(scope, receive, send, self.body_timeout_s)
        await self.app(scope, request.receive, request.send)

    def size_refusal(self, scope: Scope) -> Response | None:
        """414 or 431 with OpenAI's body when the request's target or one of its header lines is too long."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        query: bytes = scope.get("query_string", b"")
        target = len(raw_path) + (1 + len(query) if query else 0)
        if target > self.max_url_bytes:
            return error_response(414, f"the request target (path and query) is {target} bytes; the limit is "
                                  f"{self.max_url_bytes}", type_="invalid_request_error", code="url_too_long")
        for name, value in scope["headers"]:
            line = len(name) + 2 + len(value)  # "name: value", as sent
            if line > self.max_header_bytes:
                shown = name[:64].decode("latin-1")
                return error_response(431, f"header line {shown!r} is {line} bytes; the limit is "
                                      f"{self.max_header_bytes}", type_="invalid_request_error",
                                      code="header_too_large")
        return None


class _BodyDeadline:
    """One request's `receive` and `send`, with a deadline on reading the body.

    The deadline starts at the app's first `receive` (not at the request head), so that time the app spends
    before it reads (authentication, say) is not charged to the client; it covers the whole body, so a client
    trickling a byte at a time is cut off as surely as one that stops. Reads after the body is complete
    (the app waiting for a disconnect) are not limited.
    """

    def __init__(self, scope: Scope, receive: Receive, send: Send, timeout_s: float) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.timeout_s = timeout_s
        self.deadline: float | None = None
        self.body_complete = False
        self.timed_out = False
        self.response_started = False

    async def receive(self) -> Message:
        if self.timed_out:
            return _DISCONNECT
        if self.body_complete:
            return await self._receive()
        if self.deadline is None:
            self.deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            async with asyncio.timeout_at(self.deadline):
                message = await self._receive()
        except TimeoutError:
            await self._time_out()
            return _DISCONNECT
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_complete = True
        return message

    async def send(self, message: Message) -> None:
        if self.timed_out:
            return  # the 408 has been sent; whatever the app answers to the "disconnect" goes nowhere
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)

    async def _time_out(self) -> None:
        self.timed_out = True
        if self.response_started:
            return  # the app answered before reading the whole body; too late for a 408
        response = error_response(408, f"the request body was not received within {self.timeout_s:g} s",
                                  type_="invalid_request_error", code="request_timeout")
        # RFC 9110 §15.5.9: a server sending 408 SHOULD send "close"; uvicorn then closes the connection
        # once the response is written, rather than waiting for the rest of a body that may never come.
        response.headers["Connection"] = "close"
        await response(self.scope, self._receive, self._send)
