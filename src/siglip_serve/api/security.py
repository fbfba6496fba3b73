"""Bearer API keys (OpenAI's `Authorization: Bearer KEY`), checked in constant time, before the body;
with a key database (`accounts.Accounts`) also revocation, rate limits, quotas and usage metering.

An ASGI gate rather than a route dependency: FastAPI reads and parses the body before it runs a
route's dependencies, so a bad body without a key would be answered 400 instead of 401, and an
unauthenticated client could make the server read and parse a body at all. Keys, revocation, routes,
request rates and exhausted quotas are all decided here, before the body; what depends on the body (the
model, the number of images) is checked by `admit`, which routes call after parsing and before the engine.
Every answered request is metered when its response starts, and carries its id in ``x-request-id``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from siglip_serve.accounts.service import Accounts, RequestAccount
from siglip_serve.api.errors import domain_error_response
from siglip_serve.api.playground import is_playground_path
from siglip_serve.errors import AuthenticationError, SiglipServeError

if TYPE_CHECKING:  # the engine's Usage only as a type: the HTTP layer never imports torch
    from siglip_serve.accounts.pricing import Pricing
    from siglip_serve.engine.engine import Usage

ALWAYS_OPEN = frozenset({"/health"})  # load balancers probe it without credentials
DOCS_AND_METRICS = frozenset({"/metrics", "/docs", "/redoc", "/openapi.json"})
DOCS_ASSETS = "/docs/assets/"  # the pages' scripts and styles (api.docs): open or protected with the pages
ACCOUNT = "siglip_serve.account"  # the request's RequestAccount in the ASGI scope
REQUEST_ID = b"x-request-id"
MAX_ROUTE_CHARS = 200


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
    """401 before anything else for requests without a valid key, when keys are configured; with `accounts`,
    also 401 for revoked or expired keys, 403 outside a key's routes, 429 over its limits, and metering."""

    def __init__(self, app: ASGIApp, *, keys: Sequence[str], protect_docs_and_metrics: bool,
                 accounts: Accounts | None = None) -> None:
        self.app = app
        self.keys = list(keys)
        self.accounts = accounts
        self.protect_docs_and_metrics = protect_docs_and_metrics

    def is_open(self, path: str) -> bool:
        """Whether `path` is served without a key. The playground is static: a browser cannot send a key when it
        opens a page, so the page is public and its own API calls carry the key the user enters."""
        if path in ALWAYS_OPEN or is_playground_path(path):
            return True
        return not self.protect_docs_and_metrics and (path in DOCS_AND_METRICS or path.startswith(DOCS_ASSETS))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if self.accounts is not None:
            await self._with_accounts(self.accounts, authorization, scope, receive, send)
            return
        if not self.keys:
            await self.app(scope, receive, send)
            return
        try:
            check_api_key(authorization, self.keys)
        except AuthenticationError as exc:
            await domain_error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _with_accounts(self, accounts: Accounts, authorization: str, scope: Scope, receive: Receive,
                             send: Send) -> None:
        started = time.perf_counter()
        try:
            principal = accounts.authenticate(authorization, scope["path"])
        except SiglipServeError as exc:  # no key, a wrong one, or the database is down: not metered
            await domain_error_response(exc)(scope, receive, send)
            return
        account = RequestAccount(principal=principal, started=started)
        scope[ACCOUNT] = account
        finished = False

        async def metered_send(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.start" and not finished:
                finished = True
                request_id = accounts.finish(account, route=_route(scope), status=message["status"])
                message = {**message, "headers": [*message.get("headers", []), (REQUEST_ID, request_id.encode())]}
            await send(message)

        try:
            try:
                accounts.admit_request(principal)
            except SiglipServeError as exc:  # over a rate limit or out of quota: answered and metered
                await domain_error_response(exc)(scope, receive, metered_send)
                return
            await self.app(scope, receive, metered_send)
        finally:
            if not finished:  # no response started: the client went away (nginx's 499)
                accounts.finish(account, route=_route(scope), status=499)


def _route(scope: Scope) -> str:
    """The matched route's template (bounded: /models/{model}), else the path, cut short."""
    route = scope.get("route")
    return getattr(route, "path", None) or scope["path"][:MAX_ROUTE_CHARS]


def account_of(request: Request) -> RequestAccount | None:
    return request.scope.get(ACCOUNT)


def admit(request: Request, model: str, *, images: int) -> None:
    """After the body, before any work: the key may use `model`, and has room for `images` more images."""
    account = account_of(request)
    if account is not None:
        request.app.state.accounts.admit(account, model, images=images)


def charge(request: Request, model: str, used: Usage) -> float:
    """The cost of what the engine used for this request, at the model's price; metered with the request."""
    account = account_of(request)
    if account is not None:
        return request.app.state.accounts.charge(account, model, images=used.images, text_tokens=used.text_tokens)
    pricing: Pricing = request.app.state.pricing
    return pricing.cost(model, images=used.images, text_tokens=used.text_tokens)
