"""Turn an image reference from a request (URL, data URI or raw base64) into bytes, safely.

URLs are fetched with an SSRF guard: every hop's hostname is resolved off the event
loop, every resolved address must be public, and the connection is then made to the
checked address (Host header and TLS SNI keep the original hostname), so a DNS answer
that changes between check and connect (rebinding) cannot reach a private address.
Redirects are followed by hand so that each hop is checked the same way, and bodies
are streamed so that an oversized or endless response is cut off at the byte limit.
Bodies are read raw and any content coding is refused: the byte limit then bounds what
is held in memory, which it would not if a few hundred bytes of stacked gzip could
inflate to gigabytes inside the client before the limit is checked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import unquote

import httpx

from siglip_serve.config import Settings, default
from siglip_serve.errors import ImageFetchError, InvalidImageError

USER_AGENT = "siglip-serve"

_ALLOWED_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Cloud metadata names; their addresses are link-local and refused anyway, but a
# name-level check does not depend on what the resolver answers.
_BLOCKED_HOSTNAMES = frozenset({"metadata.google.internal"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Base64 never contains ':', so anything that starts with a scheme is a URL, whatever the scheme,
# except a Windows drive letter (C:\\cat.jpg, C:/cat.jpg), which is a path.
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_DRIVE_RE = re.compile(r"^[A-Za-z]:[\\/]")
# A file path sent where image data belongs (issue #16): a name with an extension, or a path that starts
# like one. Only text that is not base64 anyway is taken for a path (see `_looks_like_path`).
_PATH_START_RE = re.compile(r"^(~|\.{1,2}[\\/]|[\\/]|[A-Za-z]:[\\/])")
_EXTENSION_RE = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,4}$")
_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=")
_MAX_PATH_CHARS = 4096  # Linux's PATH_MAX
UPLOAD_HINT = ("the server cannot read files on your machine: upload the file as multipart/form-data "
               "(curl -F image=@cat.jpg) or send its bytes base64-encoded")
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
_MAX_SHOWN_CHARS = 100

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for fetching and decoding one image reference."""

    allow_private: bool = default("allow_private_urls")
    timeout_s: float = default("fetch_timeout_s")  # whole fetch: resolution, connect, redirects and body
    max_bytes: int = default("max_image_bytes")  # also the limit for decoded base64 / data URIs
    max_redirects: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        return cls(allow_private=settings.allow_private_urls, timeout_s=settings.fetch_timeout_s,
                   max_bytes=settings.max_image_bytes)


class _FetchFailed(Exception):
    """A reason a URL cannot be fetched; `read_image_reference` adds the URL to the message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- inline images -------------------------------------------------------------------------------


def is_url(reference: str) -> bool:
    """True when the reference has a URL scheme other than ``data:`` (supported or not).

    Such references go through `read_image_reference`, which refuses schemes other
    than http(s) with an `ImageFetchError`; everything else is inline image data.
    """
    text = reference.strip()
    match = _SCHEME_RE.match(text)
    return match is not None and match.group(1).lower() != "data" and not _DRIVE_RE.match(text)


def decode_inline_image(reference: str, *, max_bytes: int) -> bytes:
    """Decode a ``data:[<mediatype>][;base64],<data>`` URI or raw base64 to bytes.

    Raw base64 may use the standard or URL-safe alphabet, contain whitespace and lack
    padding. Raises `InvalidImageError` when the data is empty, malformed or too large.
    """
    text = reference.strip()
    if not text:
        raise InvalidImageError("empty image reference")
    if text[:5].lower() == "data:":
        return _decode_base64(_data_uri_payload(text), max_bytes=max_bytes)
    if _looks_like_path(text):
        raise InvalidImageError(f"{_shorten(text)!r} looks like a file path, not image data: {UPLOAD_HINT}")
    return _decode_base64(text, max_bytes=max_bytes)


def _looks_like_path(text: str) -> bool:
    """A short text with a character base64 never has (``.``, ``\\``, ``~``, ``:``) that starts like a
    path (/, ./, ../, ~, C:\\) or ends with a file extension: cat.jpg, ./cat.jpg, /home/me/cat.jpg, C:\\x.png.

    Text made only of base64 characters is decoded as base64 whatever it looks like (/9j/ starts every
    JPEG's base64), so /home/me/cat, with no extension, still reads as (invalid) image data.
    """
    if len(text) > _MAX_PATH_CHARS or all(c in _BASE64_CHARS or c.isspace() for c in text):
        return False
    return bool(_PATH_START_RE.match(text) or _EXTENSION_RE.search(text))


def _data_uri_payload(uri: str) -> str:
    header, comma, data = uri[5:].partition(",")
    if not comma:
        raise InvalidImageError("malformed data URI: expected data:[<mediatype>][;base64],<data>")
    if header.split(";")[-1].strip().lower() != "base64":
        raise InvalidImageError("data URI must be base64-encoded: data:<mediatype>;base64,<data>")
    # '%' is not in either base64 alphabet, so unquoting cannot corrupt valid data.
    return unquote(data) if "%" in data else data


def _decode_base64(payload: str, *, max_bytes: int) -> bytes:
    compact = "".join(payload.split()).rstrip("=")
    if not compact:
        raise InvalidImageError("empty image data")
    # Without padding, len * 3 // 4 is the exact decoded size: refuse before decoding.
    if len(compact) * 3 // 4 > max_bytes:
        raise InvalidImageError(f"image data is larger than the limit of {max_bytes} bytes")
    if len(compact) % 4 == 1:
        raise InvalidImageError("invalid base64 image data")
    padded = compact.translate(_URLSAFE_TO_STANDARD) + "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError("invalid base64 image data") from None


# --- address checks ------------------------------------------------------------------------------


def is_public_address(address: str | IPAddress) -> bool:
    """True when an address is globally routable: not loopback, private, link-local, multicast,
    reserved or unspecified, including IPv6 forms that embed such an IPv4 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0]) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        embedded = [ip.sixtofour, *(ip.teredo or ())]
        if any(v4 is not None and not is_public_address(v4) for v4 in embedded):
            return False
    refused = (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
    )
    return ip.is_global and not refused


async def _resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, without blocking the event loop.

    Literal and legacy numeric forms (``0x7f000001``, ``2130706433``) come back normalised.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _FetchFailed(f"cannot resolve host {host!r}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _checked_addresses(url: httpx.URL) -> list[str]:
    """The addresses to connect to for `url`, all of them public, or `_FetchFailed`."""
    host = url.raw_host.decode("ascii")
    if host.lower().rstrip(".") in _BLOCKED_HOSTNAMES:
        raise _FetchFailed(f"host {host!r} is not allowed")
    addresses = await _resolve(host, url.port or _DEFAULT_PORTS[url.scheme])
    if not addresses:
        raise _FetchFailed(f"cannot resolve host {host!r}")
    refused = [a for a in addresses if not is_public_address(a)]
    if refused:
        raise _FetchFailed(
            f"host {host!r} resolves to non-public address {refused[0]} "
            "(refused before connecting; see --allow-private-urls)"
        )
    return addresses


def _parse_url(reference: str) -> httpx.URL:
    try:
        url = httpx.URL(reference)
    except (httpx.InvalidURL, UnicodeError) as exc:  # httpx raises UnicodeEncodeError on lone surrogates
        raise _FetchFailed(f"invalid URL: {exc}") from None
    if url.scheme not in _ALLOWED_SCHEMES:
        raise _FetchFailed(f"unsupported URL scheme {url.scheme!r}: only http and https are allowed")
    if not url.raw_host:
        raise _FetchFailed("URL has no host")
    return url


# --- fetching ------------------------------------------------------------------------------------


async def read_image_reference(
    reference: str, *, policy: FetchPolicy, client: httpx.AsyncClient | None = None
) -> bytes:
    """An http(s) URL, a data: URI (data:image/png;base64,....), or raw base64 -> bytes.

    Raises `ImageFetchError` (naming the URL) for anything wrong with a URL and
    `InvalidImageError` for bad inline data. `client`, when given, is reused (it need
    not disable redirects: each request here does); otherwise one is made for the call.
    """
    text = reference.strip()
    if not is_url(text):
        return decode_inline_image(text, max_bytes=policy.max_bytes)
    hops: list[str] = []
    try:
        async with asyncio.timeout(policy.timeout_s):
            if client is not None:
                return await _fetch(client, text, policy, hops)
            async with make_client(policy) as own_client:
                return await _fetch(own_client, text, policy, hops)
    except _FetchFailed as exc:
        reason = exc.reason
        if len(hops) == 1 and text[:5].lower() == "file:":  # the user's own file URL, not a redirect to one
            reason = f"{reason}; {UPLOAD_HINT}"
    except (TimeoutError, httpx.TimeoutException):
        reason = f"timed out after {policy.timeout_s:g}s"
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        reason = str(exc) or type(exc).__name__
    raise ImageFetchError(_fetch_message(text, hops, reason))


def make_client(policy: FetchPolicy) -> httpx.AsyncClient:
    """A client suited to `read_image_reference`, e.g. for a server to share between requests.

    It ignores proxy environment variables so that what is checked is what is connected to.
    """
    return httpx.AsyncClient(
        follow_redirects=False,
        timeout=policy.timeout_s,
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
    )


def _fetch_message(reference: str, hops: list[str], reason: str) -> str:
    message = f"cannot fetch {_shorten(reference)!r}"
    if len(hops) > 1:
        message += f" (redirected to {_shorten(hops[-1])!r})"
    return f"{message}: {reason}"


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN_CHARS else text[:_MAX_SHOWN_CHARS] + "..."


async def _fetch(client: httpx.AsyncClient, reference: str, policy: FetchPolicy, hops: list[str]) -> bytes:
    """Follow up to `policy.max_redirects` redirects, checking every hop; `hops` records them."""
    location = reference
    for _ in range(policy.max_redirects + 1):
        hops.append(location)
        url = _parse_url(location)
        addresses: list[str | None] = [None] if policy.allow_private else [*await _checked_addresses(url)]
        result = await _get_any(client, url, addresses, policy)
        if isinstance(result, bytes):
            return result
        location = result
    raise _FetchFailed(f"more than {policy.max_redirects} redirects")


async def _get_any(
    client: httpx.AsyncClient, url: httpx.URL, addresses: list[str | None], policy: FetchPolicy
) -> bytes | str:
    """GET `url` from the first address that accepts a connection (as a browser would)."""
    for address in addresses[:-1]:
        try:
            return await _get(client, url, address, policy)
        except httpx.ConnectError:
            continue
    return await _get(client, url, addresses[-1], policy)


async def _get(client: httpx.AsyncClient, url: httpx.URL, address: str | None, policy: FetchPolicy) -> bytes | str:
    """One GET: the body, or the next hop's URL for a redirect.

    With an `address`, connect to it instead of resolving the hostname again: the Host
    header and TLS SNI (which also drives certificate verification) keep the hostname.
    A pooled keep-alive connection to the same address may serve another hostname's
    request without a new TLS handshake; the URL's owner chose that address, so this
    only matters for someone already on the network path.
    """
    headers = {"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}
    extensions: dict[str, str] = {}
    target = url
    if address is not None:
        target = url.copy_with(host=address)
        headers["Host"] = url.netloc.decode("ascii")
        if url.scheme == "https":
            extensions["sni_hostname"] = url.raw_host.decode("ascii")
    async with client.stream(
        "GET", target, headers=headers, extensions=extensions, timeout=policy.timeout_s, follow_redirects=False
    ) as response:
        if response.status_code in _REDIRECT_STATUSES:
            return _redirect_location(url, response)
        if not response.is_success:
            raise _FetchFailed(f"HTTP status {response.status_code}")
        _check_identity_coding(response)
        return await _read_limited(response, policy.max_bytes)


def _redirect_location(url: httpx.URL, response: httpx.Response) -> str:
    location = response.headers.get("Location")
    if not location:
        raise _FetchFailed(f"HTTP status {response.status_code} without a Location header")
    try:
        return str(url.join(location))
    except httpx.InvalidURL as exc:
        raise _FetchFailed(f"invalid redirect Location: {exc}") from None


def _check_identity_coding(response: httpx.Response) -> None:
    """Refuse a body with a content coding, which we asked the server not to use.

    We send ``Accept-Encoding: identity``, but a server may ignore it. httpx would undo
    gzip, deflate, br and zstd (stacked too) as the body is iterated, a whole received
    chunk at a time, so a tiny body could inflate to gigabytes before our byte limit saw
    it. Image formats are compressed already; a coding gains nothing, so none is accepted.
    Content-Encoding is a list of codings in the order applied, repeatable as separate
    header lines, with case-insensitive values, and "identity" means no coding
    (RFC 9110 §8.4 and §12.5.3).
    """
    codings = [value.strip().lower() for value in response.headers.get_list("Content-Encoding", split_commas=True)]
    applied = [coding for coding in codings if coding and coding != "identity"]
    if applied:
        raise _FetchFailed(
            f"response has Content-Encoding {', '.join(applied)!r}; only uncompressed (identity) responses are "
            "accepted for images"
        )


async def _read_limited(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _FetchFailed(f"response of {int(declared)} bytes is larger than the limit of {max_bytes} bytes")
    body = bytearray()
    async for chunk in _raw_chunks(response):
        body += chunk
        if len(body) > max_bytes:
            raise _FetchFailed(f"response is larger than the limit of {max_bytes} bytes")
    return bytes(body)


async def _raw_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as received, never decoded by httpx, so its length is what it costs in memory."""
    if response.is_stream_consumed:
        # A transport that hands over a response already read (httpx.MockTransport does) leaves
        # nothing to stream; its content is in memory already and, the coding being identity, raw.
        yield response.content
        return
    async for chunk in response.aiter_raw():
        yield chunk
