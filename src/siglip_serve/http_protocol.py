"""uvicorn's h11 protocol with the connection limits uvicorn lacks (uvicorn 0.54).

uvicorn arms its keep-alive timer only after a response, and any byte received cancels it, so a client that
connects and says nothing, or sends its request head a byte at a time, holds a connection forever. h11
refuses a head larger than its buffer limit, but uvicorn answers that, and any malformed request, with a
bare 400 and closes at once. This subclass adds:

- a head timer: the request head must be complete within `header_timeout_s` of the connection opening or
  of the previous response; past it the connection is closed, after a 408 (RFC 9110 §15.5.9) when part of
  a head had arrived;
- OpenAI's error body on protocol errors: 414 (RFC 9110 §15.5.15) when the request line alone overflows
  h11's buffer, 431 (RFC 6585 §5) for any other oversized head (h11's own `error_status_hint`), 400 else;
- a lingering close after those answers (RFC 9112 §9.6): write side shut, input drained and discarded for
  up to `linger_s`, so that the kernel does not reset the connection, and lose the answer, because
  unread input was left when the socket closed;
- uvicorn's `limit_concurrency` check, answered with OpenAI's body and Retry-After instead of plain text.

The exact per-line limits (414/431 for heads h11 could buffer) and the body read time are checked by the
ASGI middleware `siglip_serve.api.connections.ConnectionGuard`. This module is server-side: the
`siglip_serve.api` package must not import it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import h11
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from siglip_serve.api.errors import error_response

LINGER_S = 5.0  # nginx's lingering_timeout: how long to drain a client's input after an error answer
HEAD_SLACK_BYTES = 4096
H11_DEFAULT_HEAD_BYTES = 16 * 1024  # h11's DEFAULT_MAX_INCOMPLETE_EVENT_SIZE


def max_head_bytes(max_header_bytes: int, max_url_bytes: int) -> int:
    """The most bytes of one incomplete request head h11 buffers per connection (its
    `max_incomplete_event_size`): the request line plus four maximal header lines, and slack for the rest.

    A head larger than this is refused (431, or 414 when its request line is the culprit) before it is
    complete; a smaller one reaches the ASGI middleware, which applies the exact per-line limits.
    """
    return max(H11_DEFAULT_HEAD_BYTES, max_url_bytes + 4 * max_header_bytes + HEAD_SLACK_BYTES)


@dataclass(frozen=True)
class ProtocolLimits:
    header_timeout_s: float
    max_url_bytes: int
    linger_s: float = LINGER_S


class _RecordingConnection(h11.Connection):
    """An h11 connection that remembers its last RemoteProtocolError: uvicorn hands only a message string
    to `send_400_response`, and the status h11 suggests (`error_status_hint`) is on the exception."""

    error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error = exc
            raise


class GuardedH11Protocol(H11Protocol):
    """See the module docstring. Build a configured subclass with `guarded_h11_protocol`."""

    limits: ClassVar[ProtocolLimits] = ProtocolLimits(header_timeout_s=10.0, max_url_bytes=8192)

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_head_bytes = config.h11_max_incomplete_event_size or H11_DEFAULT_HEAD_BYTES
        self.conn = _RecordingConnection(h11.SERVER, self.max_head_bytes)
        self.head_timer: asyncio.TimerHandle | None = None
        self.linger_timer: asyncio.TimerHandle | None = None
        self.lingering = False
        # uvicorn's own check (in handle_events) answers plain text; ours, run as the app, answers OpenAI's body.
        self.max_concurrency, self.limit_concurrency = self.limit_concurrency, None
        self.inner_app, self.app = self.app, self._admit

    # --- connection events ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # drained and discarded: nothing more is parsed on this connection
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # uvicorn starts a new cycle for each complete request head
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        # Armed before uvicorn parses a pipelined head (in super()), which then cancels it. Also covers a
        # client still sending the body of a request already answered: it gets the same time, then is cut off.
        if not self.transport.is_closing():
            self._arm_head_timer()
        super().on_response_complete()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._cancel_head_timer()  # the connection is handed to the websocket protocol and its own timers
        super().handle_websocket_upgrade(event)

    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn when h11 refuses the request; answers 414, 431 or 400 with OpenAI's body."""
        error = self.conn.error
        if error is not None and error.error_status_hint == 431:
            head = self.conn.trailing_data[0].lstrip(b"\r\n")  # RFC 9112 §2.2: leading empty lines are ignored
            end = head.find(b"\r\n")
            request_line = len(head) if end < 0 else end
            if request_line > self.limits.max_url_bytes:
                self._refuse(414, f"the request line is over {self.limits.max_url_bytes} bytes", "url_too_long")
            else:
                self._refuse(431, f"the request head is over {self.max_head_bytes} bytes",
                             "header_too_large")
        else:
            self._refuse(400, f"invalid HTTP request: {error or msg}", "invalid_http_request")

    def shutdown(self) -> None:
        if self.lingering:
            self.transport.close()
            return
        super().shutdown()

    # --- the head timer ----------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self.head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or self.lingering:
            return
        partial_head = self.conn.their_state is h11.IDLE and self.conn.trailing_data[0].strip()
        if partial_head:
            self._refuse(408, f"the request head was not received within {self.limits.header_timeout_s:g} s",
                         "request_timeout")
        else:
            # Nothing sent since the last response (or the rest of a body already answered): close quietly,
            # as uvicorn's keep-alive timeout does; a 408 here could be taken for the answer to a request
            # the client is sending right now.
            self.transport.close()

    # --- answers -----------------------------------------------------------------------------------

    def _refuse(self, status: int, message: str, code: str) -> None:
        response = error_response(status, message, type_="invalid_request_error", code=code)
        headers = [*response.raw_headers, (b"connection", b"close")]
        try:
            output = b"".join([
                self.conn.send(h11.Response(status_code=status, headers=headers,
                                            reason=HTTPStatus(status).phrase.encode())) or b"",
                self.conn.send(h11.Data(data=response.body)) or b"",
                self.conn.send(h11.EndOfMessage()) or b"",
            ])
        except h11.LocalProtocolError:  # a response is already under way: nothing more can be said
            self.transport.close()
            return
        self.transport.write(output)
        self._linger()

    def _linger(self) -> None:
        """RFC 9112 §9.6: close in stages. Closing a socket with unread input makes the kernel send a reset,
        which can destroy the answer before the client has read it; so shut the write side (a FIN after the
        answer), read and discard until the client closes (uvicorn's `eof_received` then closes the
        transport) or `linger_s` passes. Nothing is buffered meanwhile."""
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        self.lingering = True
        if self.cycle is not None and not self.cycle.response_complete:
            # A request in progress (h11 refused its body): its app now reads a disconnect and its answer
            # goes nowhere, as uvicorn arranges in connection_lost.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if not self.transport.can_write_eof():  # TLS: no half-close
            self.transport.close()
            return
        self.flow.resume_reading()
        self.transport.write_eof()
        self.linger_timer = self.loop.call_later(self.limits.linger_s, self.transport.close)

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        """uvicorn's limit_concurrency check, with OpenAI's body. This connection and this request's task
        are counted already, hence `>`: `max_concurrency` connections are served, one more gets 503."""
        if self.max_concurrency is not None and (len(self.connections) > self.max_concurrency
                                                 or len(self.tasks) > self.max_concurrency):
            await _service_unavailable(self.max_concurrency)(scope, receive, send)
            return
        await self.inner_app(scope, receive, send)


def _service_unavailable(limit: int) -> Response:
    response = error_response(503, f"the server is at its limit of {limit} concurrent connections; retry later",
                              type_="service_unavailable_error", code="too_many_connections")
    response.headers["Connection"] = "close"  # as uvicorn does: free a connection slot
    return response


def guarded_h11_protocol(*, header_timeout_s: float, max_url_bytes: int,
                         linger_s: float = LINGER_S) -> type[GuardedH11Protocol]:
    """The protocol class to pass as `uvicorn.Config(http=...)`; uvicorn instantiates it per connection
    with (config, server_state, app_state), so the limits travel as a class attribute."""
    limits = ProtocolLimits(header_timeout_s=header_timeout_s, max_url_bytes=max_url_bytes, linger_s=linger_s)
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})
