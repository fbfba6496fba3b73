"""The FastAPI application: routes, error mapping, body limit, request metrics, engine lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from siglip_serve.accounts.manage import pricing_of
from siglip_serve.api.admin import router as admin_router
from siglip_serve.api.collections import router as collections_router
from siglip_serve.api.connections import ConnectionGuard
from siglip_serve.api.docs import install_docs
from siglip_serve.api.errors import (
    ADMIN,
    ANY_ROUTE,
    COLLECTIONS,
    FEATURES,
    INFERENCE,
    KEYED,
    WITH_BODY,
    domain_error_response,
    error_responses,
    install_error_handlers,
)
from siglip_serve.api.features import router as features_router
from siglip_serve.api.playground import router as playground_router
from siglip_serve.api.routes import router
from siglip_serve.api.security import ApiKeyGate
from siglip_serve.config import Settings
from siglip_serve.errors import RequestTooLargeError

if TYPE_CHECKING:  # the HTTP layer never imports torch: the composition root (server.py) builds the engine
    from siglip_serve.accounts.service import Accounts
    from siglip_serve.engine.engine import Engine
    from siglip_serve.metrics import Metrics
    from siglip_serve.storage.collections import CollectionStore


def create_app(settings: Settings, engine: Engine | Callable[[], Engine], *,
               collections: CollectionStore | None = None, accounts: Accounts | None = None) -> FastAPI:
    """The app over `engine`, or over the engine a factory builds (in a thread) when the app starts;
    `collections` serves /v1/collections (without it those routes answer 503); `accounts` checks stored keys,
    limits and quotas and meters usage (without it only --api-key is checked, and nothing is metered)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.engine is None:
            app.state.engine = await asyncio.to_thread(engine)
        await app.state.engine.start()
        if accounts is not None:
            accounts.start(app.state.engine.metrics.registry)
        try:
            yield
        finally:
            await app.state.engine.stop(drain=True)
            if accounts is not None:  # after the drain: the last requests are metered, then written
                await asyncio.to_thread(accounts.stop)

    # docs_url/redoc_url None: FastAPI's pages load their scripts from a CDN; api.docs serves them offline.
    app = FastAPI(title="siglip-serve", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  summary="OpenAI-compatible zero-shot image classification and embeddings for SigLIP models")
    app.state.settings = settings
    app.state.engine = None if callable(engine) else engine
    app.state.collections = collections
    app.state.accounts = accounts
    app.state.pricing = accounts.pricing if accounts is not None else pricing_of(settings)
    install_error_handlers(app)
    app.include_router(router)
    # The errors each router's routes can answer, for the OpenAPI document (routes.py declares its own per route).
    app.include_router(collections_router,
                       responses=error_responses(*ANY_ROUTE, *KEYED, *WITH_BODY, *INFERENCE, *COLLECTIONS))
    app.include_router(features_router, responses=error_responses(*ANY_ROUTE, *KEYED, *WITH_BODY, *INFERENCE,
                                                                  *FEATURES))
    app.include_router(admin_router, responses=error_responses(*ANY_ROUTE, *KEYED, *WITH_BODY, *ADMIN))
    app.include_router(playground_router)
    install_docs(app)
    # Outermost last: metrics see every answer, keys are checked before the body is read.
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(ApiKeyGate, keys=settings.api_key, protect_docs_and_metrics=settings.protect_docs_and_metrics,
                       accounts=accounts)
    app.add_middleware(ConnectionGuard, body_timeout_s=settings.body_timeout_s,
                       max_header_bytes=settings.max_header_bytes, max_url_bytes=settings.max_url_bytes)
    app.add_middleware(RequestMetrics, app_ref=app)
    return app


class BodyLimit:
    """413 for bodies over `max_bytes`, by Content-Length or while reading a chunked body.

    The body is read here and replayed to the app, because FastAPI would turn an error
    raised while it reads the body into a generic 400.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = RequestTooLargeError(f"request body is over the limit of {self.max_bytes} bytes")
        await domain_error_response(error)(scope, receive, send)


class RequestMetrics:
    """Counts requests and errors by route template and status."""

    def __init__(self, app: ASGIApp, app_ref: FastAPI) -> None:
        self.app = app
        self.app_ref = app_ref

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # No response started: the client went away (or its body timed out, answered by ConnectionGuard
        # outside this view); nginx's 499, not a server error.
        status = {"code": 499}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self._record(scope, status["code"])

    def _record(self, scope: Scope, code: int) -> None:
        engine = self.app_ref.state.engine
        if engine is None:
            return
        metrics: Metrics = engine.metrics
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, str(code)).inc()
        if code >= 400:
            metrics.errors.labels(path, str(code), _error_type(code)).inc()


def _error_type(code: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 408: "request_timeout",
            409: "conflict", 413: "too_large", 414: "url_too_long", 422: "invalid", 429: "overloaded",
            431: "header_too_large", 499: "client_closed", 503: "unavailable", 504: "timeout"}.get(code, "other")
