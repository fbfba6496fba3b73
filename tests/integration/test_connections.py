"""Connection and protocol limits on a live server, over raw sockets (issue #13).

Slow or silent clients are cut off (header, body and keep-alive timeouts), oversized heads get 414/431 with
OpenAI's error body, connections past the limit get 503, and the server keeps answering /health after each.

Timing: nothing is asserted to happen *before* some time. Each test waits for the server to act, with a
generous socket timeout (WAIT_S), so a loaded machine only makes the tests slower.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from live import LiveServer, live_server

WAIT_S = 30.0  # the longest any test waits for the server to act
TIMEOUT_S = 1  # header, body and keep-alive timeouts of the fast server
FAST_MAX_CONNECTIONS = 8
PATIENT_MAX_CONNECTIONS = 4
MAX_HEADER_BYTES = 4096
MAX_URL_BYTES = 2048


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict:
        """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
        assert self.headers.get("content-type") == "application/json", self
        body = json.loads(self.body)
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"], error
        return error


# --- servers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fast_server(siglip1_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One-second header, body and keep-alive timeouts."""
    args = ["--header-timeout-s", str(TIMEOUT_S), "--body-timeout-s", str(TIMEOUT_S),
            "--keep-alive-timeout-s", str(TIMEOUT_S), "--max-connections", str(FAST_MAX_CONNECTIONS)]
    log = tmp_path_factory.mktemp("logs") / "connections-fast.log"
    with live_server({"tiny": siglip1_dir}, args, log) as server:
        yield server
        assert_no_tracebacks(server)


@pytest.fixture(scope="module")
def patient_server(siglip1_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Timeouts far beyond any test, so that held connections stay open; small size and connection limits."""
    args = ["--header-timeout-s", "120", "--body-timeout-s", "120", "--keep-alive-timeout-s", "120",
            "--max-connections", str(PATIENT_MAX_CONNECTIONS), "--max-header-bytes", str(MAX_HEADER_BYTES),
            "--max-url-bytes", str(MAX_URL_BYTES)]
    log = tmp_path_factory.mktemp("logs") / "connections-patient.log"
    with live_server({"tiny": siglip1_dir}, args, log) as server:
        yield server
        assert_no_tracebacks(server)


def assert_no_tracebacks(server: LiveServer) -> None:
    """The app must take a timeout's disconnect in its stride (no send after the 408, no ASGI error)."""
    log = server.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log


# --- raw HTTP/1.1 ----------------------------------------------------------------------------------


def connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    sock.settimeout(WAIT_S)
    return sock


def request_head(method: str = "GET", target: str = "/health", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_reply(sock: socket.socket) -> Reply | None:
    """One response (Content-Length framed); None if the server closed the connection before sending any."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            assert not data, f"connection closed inside a response head: {data!r}"
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed inside a response body: {body!r}"
        body += chunk
    return Reply(int(status_line.split()[1]), headers, body[:length])


def assert_closed(sock: socket.socket) -> None:
    """The server closes its side: recv returns b"" (waits up to WAIT_S)."""
    assert sock.recv(65536) == b""


def exchange(server: LiveServer, raw: bytes) -> Reply:
    """Send `raw` on a fresh connection and read the one reply."""
    with connect(server) as sock:
        sock.sendall(raw)
        reply = read_reply(sock)
    assert reply is not None, "the server closed the connection without answering"
    return reply


def assert_healthy(server: LiveServer) -> None:
    reply = exchange(server, request_head(headers={"Connection": "close"}))
    assert reply.status == 200, reply


def assert_refused(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply
    error = reply.error()
    assert error["type"] == "invalid_request_error" and error["code"] == code, error


# --- header, body and keep-alive timeouts (fast server) --------------------------------------------


def test_silent_connection_is_closed(fast_server: LiveServer) -> None:
    with connect(fast_server) as sock:
        assert_closed(sock)  # no 408: nothing was asked
    assert_healthy(fast_server)


def test_partial_head_gets_408_and_close(fast_server: LiveServer) -> None:
    with connect(fast_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pending: ")
        reply = read_reply(sock)
        assert reply is not None, "expected a 408 before the close"
        assert_refused(reply, 408, "request_timeout")
        assert reply.headers.get("connection") == "close", reply
        assert_closed(sock)
    assert_healthy(fast_server)


def trickle_until_closed(sock: socket.socket, data: bytes) -> bytes:
    """Send `data` a byte every 0.1 s until the server closes; what it answered meanwhile.

    Bounded by WAIT_S: running out of bytes or time fails the test (the server never cut the client off)."""
    sock.settimeout(0.1)
    received = b""
    until = time.monotonic() + WAIT_S
    for byte in data:
        assert time.monotonic() < until, "the server kept a trickling client for the whole test"
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return received + drain(sock)  # the server closed; its answer may still be queued here
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError("the server read the whole trickled request without closing")


def drain(sock: socket.socket) -> bytes:
    """What is left to read on a connection the server has closed (Linux keeps it readable after a reset)."""
    sock.settimeout(WAIT_S)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_trickled_head_is_cut_off(fast_server: LiveServer) -> None:
    """A head sent a byte at a time (each byte would reset uvicorn's keep-alive timer) is cut off."""
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 2000 + b"\r\n\r\n"
    with connect(fast_server) as sock:
        received = trickle_until_closed(sock, head)
    assert received == b"" or received.startswith(b"HTTP/1.1 408 "), received
    assert_healthy(fast_server)


def test_trickled_head_after_a_response_is_cut_off(fast_server: LiveServer) -> None:
    """On a keep-alive connection the head timer starts again at the end of each response."""
    with connect(fast_server) as sock:
        sock.sendall(request_head())
        reply = read_reply(sock)
        assert reply is not None and reply.status == 200, reply
        received = trickle_until_closed(sock, request_head(headers={"X-Slow": "a" * 2000}))
    assert received == b"" or received.startswith(b"HTTP/1.1 408 "), received
    assert_healthy(fast_server)


def test_idle_keep_alive_connection_is_closed(fast_server: LiveServer) -> None:
    with connect(fast_server) as sock:
        sock.sendall(request_head())
        reply = read_reply(sock)
        assert reply is not None and reply.status == 200, reply
        assert_closed(sock)
    assert_healthy(fast_server)


def embeddings_head(content_length: int) -> bytes:
    return request_head("POST", "/v1/embeddings", {"Content-Type": "application/json",
                                                   "Content-Length": str(content_length)})


def test_half_a_body_gets_408_and_close(fast_server: LiveServer) -> None:
    with connect(fast_server) as sock:
        sock.sendall(embeddings_head(1000) + b'{"input": ')  # 10 of the 1000 bytes promised
        reply = read_reply(sock)
        assert reply is not None, "expected a 408 before the close"
        assert_refused(reply, 408, "request_timeout")
        assert reply.headers.get("connection") == "close", reply
        assert_closed(sock)
    assert_healthy(fast_server)


def test_trickled_body_is_cut_off(fast_server: LiveServer) -> None:
    """The body timeout bounds the whole body, not the gap between reads."""
    with connect(fast_server) as sock:
        sock.sendall(embeddings_head(1000))
        received = trickle_until_closed(sock, b'{"input": "' + b"a" * 980 + b'"}')
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b'"code":"request_timeout"' in received, received
    assert_healthy(fast_server)


def test_more_idle_connections_than_the_limit_are_all_closed(fast_server: LiveServer) -> None:
    """Silent connections past max_connections do not pin the server: each is closed by the head timer,
    after which /health answers."""
    with ExitStack() as stack:
        socks = [stack.enter_context(connect(fast_server)) for _ in range(FAST_MAX_CONNECTIONS + 4)]
        for sock in socks:
            assert_closed(sock)
    assert_healthy(fast_server)


def test_complete_request_is_still_served(fast_server: LiveServer) -> None:
    """The limits leave an ordinary keep-alive exchange alone: two requests on one connection."""
    with connect(fast_server) as sock:
        for _ in range(2):
            sock.sendall(request_head())
            reply = read_reply(sock)
            assert reply is not None and reply.status == 200, reply


# --- sizes (patient server) ------------------------------------------------------------------------


def test_100_kb_header_gets_431(patient_server: LiveServer) -> None:
    reply = exchange(patient_server, request_head(headers={"X-Big": "a" * 100_000}))
    assert_refused(reply, 431, "header_too_large")
    assert_healthy(patient_server)


def test_70_kb_path_gets_414(patient_server: LiveServer) -> None:
    reply = exchange(patient_server, request_head(target="/health/" + "a" * 70_000))
    assert_refused(reply, 414, "url_too_long")
    assert_healthy(patient_server)


def test_unfinished_70_kb_request_line_gets_414(patient_server: LiveServer) -> None:
    """A request line that never ends overflows the server's head buffer: 414, not a bare 400."""
    reply = exchange(patient_server, b"GET /health/" + b"a" * 70_000)
    assert_refused(reply, 414, "url_too_long")
    assert_healthy(patient_server)


def test_incomplete_head_beyond_the_buffer_gets_431(patient_server: LiveServer) -> None:
    """Lines each within the limit, but more of an unfinished head than the server buffers: refused at
    once rather than buffered (the head is left unfinished so that this holds however the bytes arrive)."""
    headers = {f"X-Line-{i}": "a" * (MAX_HEADER_BYTES - 100) for i in range(40)}
    unfinished = request_head(headers=headers)[:-2]  # no blank line: the head never ends
    reply = exchange(patient_server, unfinished)
    assert_refused(reply, 431, "header_too_large")
    assert_healthy(patient_server)


def test_header_line_just_over_the_limit_gets_431(patient_server: LiveServer) -> None:
    name = "X-Edge"
    value = "a" * (MAX_HEADER_BYTES - len(name) - 2)  # "X-Edge: aaa..." is exactly the limit
    assert exchange(patient_server, request_head(headers={name: value})).status == 200
    reply = exchange(patient_server, request_head(headers={name: value + "a"}))
    assert_refused(reply, 431, "header_too_large")
    assert_healthy(patient_server)


def test_target_just_over_the_limit_gets_414(patient_server: LiveServer) -> None:
    target = "/health?q=" + "a" * (MAX_URL_BYTES - len("/health?q="))  # exactly the limit
    assert exchange(patient_server, request_head(target=target)).status == 200
    reply = exchange(patient_server, request_head(target=target + "a"))
    assert_refused(reply, 414, "url_too_long")
    assert_healthy(patient_server)


def test_malformed_request_gets_400_with_openai_body(patient_server: LiveServer) -> None:
    reply = exchange(patient_server, b"NOT AN HTTP REQUEST\r\n\r\n")
    assert_refused(reply, 400, "invalid_http_request")
    assert_healthy(patient_server)


# --- concurrent connections (patient server) -------------------------------------------------------


def hold_served_connection(server: LiveServer) -> socket.socket:
    """A keep-alive connection the server has served once, so it is surely counted. Connections of earlier
    tests that the server has not yet seen close may still count and get this one a 503: then try again."""
    until = time.monotonic() + WAIT_S
    while True:
        sock = connect(server)
        sock.sendall(request_head())
        reply = read_reply(sock)
        if reply is not None and reply.status == 200:
            return sock
        sock.close()
        assert time.monotonic() < until, f"no connection served within {WAIT_S:g} s: {reply}"
        time.sleep(0.1)


def test_connection_past_the_limit_gets_503(patient_server: LiveServer) -> None:
    with ExitStack() as stack:
        for _ in range(PATIENT_MAX_CONNECTIONS):
            stack.enter_context(hold_served_connection(patient_server))
        reply = exchange(patient_server, request_head())
        assert reply.status == 503, reply
        error = reply.error()
        assert error["type"] == "service_unavailable_error" and error["code"] == "too_many_connections", error
        assert reply.headers.get("retry-after") == "1", reply
    # The held connections closed: the server serves again once it has seen them go.
    hold_served_connection(patient_server).close()
