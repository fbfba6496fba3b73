"""Bearer API keys (OpenAI's `Authorization: Bearer KEY`), checked in constant time, before the body.

An ASGI gate rather than a route dependency: FastAPI reads and parses the body before it runs a
route's dependencies, so a bad body without a key would be answered 400 instead of 401, and an
unauthenticated client could make the server read and parse a body at all.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from siglip_serve.api.errors import domain_error_response
from siglip_serve.errors import AuthenticationError

ALWAYS_OPEN = frozenset({"/health"})  # load balancers probe it without credentials
DOCS_AND_METRICS = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def check_api_key(authorization: str, keys: Sequence[str]) -> None:
    """Raise AuthenticationError unless `authorization` is 'Bearer <one of keys>'."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
    # Compare with every key, never stopping early, so timing says nothing about which one matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token.encode(), key.encode())
    if not matched:
        raise AuthenticationError("invalid API key")


class ApiKeyGate:
    """401 before anything else for requests without a valid key, when keys are configured."""

    def __init__(self, app: ASGIApp, *, keys: Sequence[str], protect_docs_and_metrics: bool) -> None:
        self.app = app
        self.keys = list(keys)
        self.open_paths = ALWAYS_OPEN if protect_docs_and_metrics else ALWAYS_OPEN | DOCS_AND_METRICS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            check_api_key(headers.get(b"authorization", b"").decode("latin-1"), self.keys)
        except AuthenticationError as exc:
            await domain_error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)
