"""Tests for `siglip_serve.preprocess.fetch`: inline data, the SSRF guard, redirects and limits.

A real HTTP server on 127.0.0.1 serves the fetch tests; nothing here contacts any other
address. Refusals are checked with a client whose transport fails the test if it is used.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import importlib.util
import io
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from siglip_serve.errors import ImageFetchError, InvalidImageError
from siglip_serve.preprocess import fetch
from siglip_serve.preprocess.fetch import (
    FetchPolicy,
    decode_inline_image,
    is_public_address,
    is_url,
    read_image_reference,
)

LOCAL = FetchPolicy(allow_private=True, timeout_s=0.5, max_bytes=100_000, max_redirects=3)
GUARDED = FetchPolicy(allow_private=False, timeout_s=0.5, max_bytes=100_000, max_redirects=3)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 30, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()
BOMB_INFLATED_BYTES = 64 * 1024 * 1024


@functools.cache
def _stacked_gzip_bomb() -> bytes:
    """gzip(gzip(64 MiB of zeros)): a few hundred bytes that a client undoing both codings would
    inflate to 64 MiB, the inner layer all at once from one received chunk."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    zeros = b"\0" * (1024 * 1024)
    inner = b"".join(compressor.compress(zeros) for _ in range(BOMB_INFLATED_BYTES // len(zeros)))
    inner += compressor.flush()
    return gzip.compress(inner, compresslevel=9)


def _coded_body(coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(PNG)
    if coding == "deflate":  # RFC 9110 §8.4.1.2: a zlib stream
        return zlib.compress(PNG)
    if coding == "br":
        import brotli

        return brotli.compress(PNG)
    if coding == "gzip, gzip":
        return _stacked_gzip_bomb()
    return PNG  # identity, or a coding nobody implements: the bytes are never decoded anyway


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        route = {
            "/image.png": self._image,
            "/endless": self._endless,
            "/declared-huge": self._declared_huge,
            "/slow": self._slow,
            "/to-file": lambda: self._redirect("file:///etc/passwd"),
        }.get(self.path)
        if route is not None:
            route()
        elif self.path.startswith("/coded/"):
            self._coded(self.path.removeprefix("/coded/").replace("+", " "))
        elif self.path.startswith("/hops/"):
            remaining = int(self.path.removeprefix("/hops/"))
            self._redirect(f"/hops/{remaining - 1}" if remaining else "/image.png")
        else:
            self.send_error(404)

    def _image(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def _coded(self, coding: str) -> None:
        body = _coded_body(coding)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Encoding", coding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _endless(self) -> None:
        self.send_response(200)
        self.end_headers()
        chunk = b"\0" * 16_384
        try:
            for _ in range(10_000):  # ~160 MB, far past any limit used here
                self.wfile.write(chunk)
        except OSError:  # the client hung up, as it should
            return

    def _declared_huge(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10**9))
        self.end_headers()
        self.wfile.write(b"\0" * 1024)

    def _slow(self) -> None:
        time.sleep(2)
        self._image()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - overrides the base signature
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _fetch(reference: str, policy: FetchPolicy = LOCAL, client: httpx.AsyncClient | None = None) -> bytes:
    return asyncio.run(read_image_reference(reference, policy=policy, client=client))


def _fetch_error(reference: str, policy: FetchPolicy = GUARDED) -> str:
    with pytest.raises(ImageFetchError) as info:
        _fetch(reference, policy)
    return str(info.value)


def _refused_without_request(reference: str) -> str:
    """The error for `reference` under the guard, asserting that no request was ever sent."""
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=PNG)

    async def go() -> str:
        async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as client:
            with pytest.raises(ImageFetchError) as info:
                await read_image_reference(reference, policy=GUARDED, client=client)
        return str(info.value)

    message = asyncio.run(go())
    assert sent == []
    return message


# --- fetching from the local server --------------------------------------------------------------


def test_fetch_ok_when_private_addresses_are_allowed(server: str) -> None:
    assert _fetch(f"{server}/image.png") == PNG


def test_fetch_reuses_a_given_client(server: str) -> None:
    async def go() -> bytes:
        async with httpx.AsyncClient(follow_redirects=True) as client:
            return await read_image_reference(f"{server}/hops/1", policy=LOCAL, client=client)

    assert asyncio.run(go()) == PNG


def test_loopback_server_refused_by_default(server: str) -> None:
    url = f"{server}/image.png"
    message = _fetch_error(url)
    assert url in message
    assert "non-public address 127.0.0.1" in message


def test_localhost_name_refused_by_default(server: str) -> None:
    url = server.replace("127.0.0.1", "localhost") + "/image.png"
    assert "non-public address" in _fetch_error(url)


def test_redirects_within_the_limit_are_followed(server: str) -> None:
    assert _fetch(f"{server}/hops/2") == PNG


def test_too_many_redirects(server: str) -> None:
    message = _fetch_error(f"{server}/hops/5", LOCAL)
    assert f"{server}/hops/5" in message
    assert "more than 3 redirects" in message


def test_redirect_to_other_scheme_refused(server: str) -> None:
    message = _fetch_error(f"{server}/to-file", LOCAL)
    assert "(redirected to 'file:" in message
    assert "unsupported URL scheme 'file'" in message


def test_every_redirect_hop_is_checked(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the server's address is public for the first hop only.
    verdicts = iter([True])
    monkeypatch.setattr(fetch, "is_public_address", lambda address: next(verdicts, False))
    message = _fetch_error(f"{server}/hops/0", GUARDED)
    assert f"redirected to '{server}/image.png'" in message
    assert "non-public address 127.0.0.1" in message


def test_endless_body_aborted_at_the_limit(server: str) -> None:
    message = _fetch_error(f"{server}/endless", LOCAL)
    assert f"{server}/endless" in message
    assert "limit of 100000 bytes" in message


def test_declared_content_length_over_the_limit(server: str) -> None:
    message = _fetch_error(f"{server}/declared-huge", LOCAL)
    assert f"response of {10**9} bytes is larger than the limit of 100000 bytes" in message


def test_timeout(server: str) -> None:
    started = time.monotonic()
    message = _fetch_error(f"{server}/slow", LOCAL)
    assert time.monotonic() - started < 1.5
    assert f"{server}/slow" in message
    assert "timed out after 0.5s" in message


class _CountingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, counter: _CountingTransport) -> None:
        self._inner = inner
        self._counter = counter

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._counter.received += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CountingTransport(httpx.AsyncBaseTransport):
    """A real loopback transport that counts the raw body bytes the client pulled off the wire."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.received = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_CountingStream(response.stream, self), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _coded_fetch_error(url: str) -> tuple[str, int, int]:
    """The error for `url`, the raw body bytes the client received and the peak of Python
    allocations (zlib's output buffers included) during the fetch."""
    transport = _CountingTransport()
    policy = FetchPolicy(allow_private=True, timeout_s=60, max_bytes=LOCAL.max_bytes)  # no timing at stake

    async def go() -> str:
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(ImageFetchError) as info:
                await read_image_reference(url, policy=policy, client=client)
        return str(info.value)

    tracemalloc.start()
    try:
        message = asyncio.run(go())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return message, transport.received, peak


_BROTLI = pytest.mark.skipif(importlib.util.find_spec("brotli") is None, reason="brotli is not installed")


@pytest.mark.parametrize(
    "coding", ["gzip", "deflate", pytest.param("br", marks=_BROTLI), "gzip, gzip", "x-custom", "GZIP"]
)
def test_compressed_response_refused_unread(server: str, coding: str) -> None:
    body = _coded_body(coding)  # made (and cached) before the request, not while the client waits
    url = f"{server}/coded/{coding.replace(' ', '+')}"
    message, received, peak = _coded_fetch_error(url)
    assert url in message
    assert f"Content-Encoding {coding.lower()!r}" in message
    assert received <= len(body)  # refused from the headers; the body is at most a few KB
    assert peak < 8 * 1024 * 1024, peak  # nothing inflated (the bomb would be 64 MiB)


def test_stacked_gzip_bomb_is_tiny_and_would_inflate() -> None:
    """The premise of the bomb case: a few hundred bytes on the wire, 64 MiB once both codings are undone."""
    body = _stacked_gzip_bomb()
    assert len(body) < 2048
    assert len(gzip.decompress(gzip.decompress(body))) == BOMB_INFLATED_BYTES


@pytest.mark.parametrize("coding", ["identity", "Identity"])
def test_identity_content_encoding_accepted(server: str, coding: str) -> None:
    assert _fetch(f"{server}/coded/{coding}", FetchPolicy(allow_private=True, timeout_s=60, max_bytes=100_000)) == PNG


def test_http_error_status(server: str) -> None:
    message = _fetch_error(f"{server}/missing.png", LOCAL)
    assert f"{server}/missing.png" in message
    assert "HTTP status 404" in message


def test_connection_refused_names_the_url() -> None:
    with socket.socket() as probe:  # a loopback port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/x.png"
    assert url in _fetch_error(url, LOCAL)


# --- refusals before connecting ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://10.0.0.1/",
        "http://192.168.1.1:8080/a.png",
        "http://0x7f000001/",
        "http://2130706433/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
    ],
)
def test_private_and_special_addresses_refused_before_connecting(url: str) -> None:
    message = _refused_without_request(url)
    assert url in message
    assert "non-public address" in message


@pytest.mark.parametrize(
    "url", ["http://metadata.google.internal/computeMetadata/v1/", "http://METADATA.google.internal./"]
)
def test_metadata_hostname_refused(url: str) -> None:
    assert "is not allowed" in _refused_without_request(url)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://example.com/"])
def test_other_schemes_refused(url: str) -> None:
    message = _refused_without_request(url)
    assert url in message
    assert "unsupported URL scheme" in message


def test_name_resolving_to_any_private_address_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.1.2.3"]

    monkeypatch.setattr(fetch, "_resolve", resolve)
    assert "non-public address 10.1.2.3" in _refused_without_request("https://images.example/a.png")


def test_connects_to_the_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.215.14"]

    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=PNG)

    async def go() -> bytes:
        async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as client:
            return await read_image_reference("https://images.example:8443/a.png", policy=GUARDED, client=client)

    monkeypatch.setattr(fetch, "_resolve", resolve)
    assert asyncio.run(go()) == PNG
    (request,) = sent
    assert str(request.url) == "https://93.184.215.14:8443/a.png"
    assert request.headers["Host"] == "images.example:8443"
    assert request.headers["User-Agent"] == "siglip-serve"
    assert request.extensions["sni_hostname"] == "images.example"


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.0.1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("239.255.255.250", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("ff02::1", False),
        ("ff0e::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("::ffff:8.8.8.8", True),
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2002:a00:1::", False),  # 6to4 of 10.0.0.1
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("2001:db8::1", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(address) is public


# --- inline data ---------------------------------------------------------------------------------


def test_is_url() -> None:
    assert is_url("https://example.com/a.png")
    assert is_url("  HTTP://example.com/a.png")
    assert is_url("file:///etc/passwd")
    assert not is_url("data:image/png;base64,AAAA")
    assert not is_url(base64.b64encode(PNG).decode())


def test_data_uri() -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert decode_inline_image(uri, max_bytes=100_000) == PNG
    assert _fetch(uri) == PNG


def test_raw_base64_with_and_without_padding_and_newlines() -> None:
    data = PNG + b"x" * ((1 - len(PNG)) % 3)  # len % 3 == 1 needs two padding characters
    encoded = base64.b64encode(data).decode()
    assert encoded.endswith("==")
    assert decode_inline_image(encoded, max_bytes=100_000) == data
    assert decode_inline_image(encoded.rstrip("="), max_bytes=100_000) == data
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + "\n"
    assert decode_inline_image(wrapped, max_bytes=100_000) == data
    assert _fetch(wrapped) == data


def test_urlsafe_base64() -> None:
    data = bytes(range(256))
    assert decode_inline_image(base64.urlsafe_b64encode(data).decode(), max_bytes=1000) == data


@pytest.mark.parametrize("text", ["not base64!", "QUJD=QUJD", "A", "QUJDé"])
def test_invalid_base64(text: str) -> None:
    with pytest.raises(InvalidImageError, match="invalid base64 image data"):
        decode_inline_image(text, max_bytes=1000)


def test_invalid_base64_message_does_not_echo_the_payload() -> None:
    payload = "!" * 10_000
    with pytest.raises(InvalidImageError) as info:
        _fetch(payload)
    assert payload[:50] not in str(info.value)


@pytest.mark.parametrize("uri", ["data:text/plain,hello", "data:image/png;charset=utf-8,abc", "data:image/png;base64"])
def test_non_base64_or_malformed_data_uri(uri: str) -> None:
    with pytest.raises(InvalidImageError, match="data URI"):
        decode_inline_image(uri, max_bytes=1000)


@pytest.mark.parametrize("text", ["", "   \n", "data:image/png;base64,"])
def test_empty(text: str) -> None:
    with pytest.raises(InvalidImageError, match="empty"):
        decode_inline_image(text, max_bytes=1000)
    with pytest.raises(InvalidImageError, match="empty"):
        _fetch(text)


def test_inline_data_over_the_limit() -> None:
    encoded = base64.b64encode(b"\0" * 1001).decode()
    with pytest.raises(InvalidImageError, match="limit of 1000 bytes"):
        decode_inline_image(encoded, max_bytes=1000)
    assert len(decode_inline_image(base64.b64encode(b"\0" * 1000).decode(), max_bytes=1000)) == 1000
