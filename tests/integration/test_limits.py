"""Limits checked before any work, and keys before the body: in-process over the fake backend.

Each request here is small and would make the server do or hold far more than it should
without its limit (issue #13); the fake backend counts what reached it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import fakes
import httpx
from fakes import FakeBackend
from live import assert_error

from siglip_serve.api.app import create_app
from siglip_serve.config import Settings
from siglip_serve.engine.engine import Engine

GUARD_S = 30.0


def run_app(test: Callable[[httpx.AsyncClient, FakeBackend], Awaitable[Any]], **settings: Any) -> Any:
    backend = FakeBackend()
    app = create_app(Settings(model=["fake"], **settings), Engine({"fake": backend}))

    async def main() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=GUARD_S) as c:
                return await test(c, backend)

    return asyncio.run(asyncio.wait_for(main(), GUARD_S))


def test_templates_times_labels_is_bounded_before_any_encoding():
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        image = [fakes.image(1)]
        many = await client.post("/v1/classify", json={"input": image, "labels": ["c1"],
                                                        "hypothesis_template": ["{}"] * 4})
        error = assert_error(many, 400)
        assert error["param"] == "hypothesis_template" and "limit of 3" in error["message"]
        product = await client.post("/v1/classify", json={"input": image, "labels": [f"c{k} x" for k in range(5)],
                                                           "hypothesis_template": ["{}", "a {}"]})
        error = assert_error(product, 400)
        assert "2 templates x 5 labels = 10 prompts" in error["message"] and "limit of 8" in error["message"]
        assert backend.tokenized == [] and backend.prepared == []
        ok = await client.post("/v1/classify", json={"input": image, "labels": ["c1", "c2", "c3", "c4"],
                                                      "hypothesis_template": ["{}", "a {}"]})
        assert ok.status_code == 200 and len(backend.tokenized) == 8

    run_app(test, max_templates=3, max_prompts=8)


def test_a_text_over_the_character_limit_is_named_and_never_encoded():
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        long = "c1 " + "x" * 100
        cases = [
            ("/v1/classify", {"input": [fakes.image(1)], "labels": ["c1", long]}, "labels[1]"),
            ("/v1/classify", {"input": [fakes.image(1)], "labels": ["c1"], "hypothesis_template": long + "{}"},
             "hypothesis_template"),
            ("/v1/embeddings", {"input": ["c1", long]}, "input[1]"),
            ("/v1/rerank", {"query": "c1", "documents": ["c2", "c3", long]}, "documents[2]"),
            ("/v1/rerank", {"query": long, "documents": ["c2"]}, "query"),
        ]
        for route, body, param in cases:
            error = assert_error(await client.post(route, json=body), 400)
            assert error["param"] == param, (route, error)
            assert error["code"] == "TextTooLongError" and "over the limit of 64" in error["message"]
        assert backend.tokenized == [] and backend.prepared == []

    run_app(test, max_text_chars=64)


def test_error_messages_echo_user_input_only_in_short():
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        name = "m" * 200_000
        response = await client.post("/v1/embeddings", json={"model": name, "input": ["c1"]})
        error = assert_error(response, 404)
        assert len(response.content) < 1_000 and "200002 characters" in error["message"]
        template = "no placeholder " * 10
        error = assert_error(await client.post("/v1/classify", json={
            "input": [fakes.image(1)], "labels": ["c1"], "hypothesis_template": template}), 400)
        assert template not in error["message"] and "must contain exactly one" in error["message"]

    run_app(test)


def test_with_keys_the_key_is_checked_before_the_body():
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        broken = {"content": b"{not json", "headers": {"Content-Type": "application/json"}}
        error = assert_error(await client.post("/v1/embeddings", **broken), 401)
        assert error["type"] == "authentication_error"
        wrong = {"Content-Type": "application/json", "Authorization": "Bearer wrong"}
        error = assert_error(await client.post("/v1/embeddings", content=b"{not json", headers=wrong), 401)
        assert error["message"] == "invalid API key"
        keyed = {"Content-Type": "application/json", "Authorization": "Bearer k2"}
        assert assert_error(await client.post("/v1/embeddings", content=b"{not json", headers=keyed), 400)
        # Unknown routes are not a way to probe without a key either.
        assert_error(await client.get("/v1/nothing-here"), 401)
        # Health, docs and metrics stay open by default.
        for path in ("/health", "/metrics", "/openapi.json", "/docs"):
            assert (await client.get(path)).status_code == 200, path

    run_app(test, api_key=["k1", "k2"])


def test_docs_and_metrics_can_be_put_behind_the_key():
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        for path in ("/metrics", "/openapi.json", "/docs", "/redoc"):
            assert_error(await client.get(path), 401)
            response = await client.get(path, headers={"Authorization": "Bearer k1"})
            assert response.status_code == 200, path
        assert (await client.get("/health")).status_code == 200

    run_app(test, api_key=["k1"], protect_docs_and_metrics=True)


def test_the_body_limit_answers_with_the_domain_error():
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        response = await client.post("/v1/embeddings", json={"input": ["c1 " * 100]})
        error = assert_error(response, 413)
        assert error["code"] == "RequestTooLargeError" and "limit of 256 bytes" in error["message"]

    run_app(test, max_request_bytes=256)
