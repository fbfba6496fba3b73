"""Overload (429 with Retry-After, at once), deadlines (504) and graceful shutdown on SIGTERM.

Overload and deadlines run in-process over the fake backend with its model thread held by the
test, so the outcome is decided by what the test allows, never by how fast the machine is.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import fakes
import httpx
import pytest
from fakes import FakeBackend
from live import HTTP_TIMEOUT_S, LiveServer, assert_close, assert_error, embeddings_of, gauge

from siglip_serve.api.app import create_app
from siglip_serve.config import Settings
from siglip_serve.engine.engine import Engine, EngineConfig

GUARD_S = 30.0  # hang guard only


# --- in-process, over the fake backend: the model thread is held, so nothing depends on timing ---------


def run_fake_app(test: Callable[[httpx.AsyncClient, FakeBackend], Awaitable[Any]], *,
                 config: EngineConfig | None = None, **settings: Any) -> Any:
    backend = FakeBackend()
    engine = Engine({"fake": backend}, config or EngineConfig())
    app = create_app(Settings(model=["fake"], **settings), engine)

    async def main() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=GUARD_S) as c:
                return await test(c, backend)

    return asyncio.run(asyncio.wait_for(main(), GUARD_S))


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    until = time.monotonic() + GUARD_S  # hang guard only
    while not condition():
        assert time.monotonic() < until, what
        await asyncio.sleep(0.005)


def test_overload_is_refused_at_once_with_retry_after_and_the_admitted_requests_succeed():
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        backend.gate.clear()
        admitted = [asyncio.ensure_future(client.post("/v1/embeddings", json={"modality": "image",
                                                                                "input": [fakes.image(k)]}))
                    for k in (1, 2)]
        await wait_until(backend.entered.is_set, "no request reached the model")
        # Capacity 2 is taken: refused whole, at once, while the model is still held.
        refused = await client.post("/v1/classify", json={"input": [fakes.image(3)], "labels": ["c3"]})
        error = assert_error(refused, 429)
        assert error["type"] == "rate_limit_error" and "capacity" in error["message"]
        assert int(refused.headers["Retry-After"]) >= 1
        assert not any(task.done() for task in admitted)
        backend.gate.set()
        for k, task in zip((1, 2), admitted, strict=True):
            assert embeddings_of(await task).tolist() == [fakes.unit(k).tolist()]
        again = await client.post("/v1/classify", json={"input": [fakes.image(3)], "labels": ["c3"]})
        assert again.status_code == 200 and again.json()["data"][0]["score"] == pytest.approx(fakes.MATCH)

    run_fake_app(test, config=EngineConfig(max_queue_size=2))


def test_request_past_its_deadline_gets_504_and_the_next_is_served(caplog):
    """A 504 is an expected outcome: it must not log "Future exception was never retrieved" or a traceback."""

    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        backend.gate.clear()
        for body in ({"input": ["c1"]}, {"input": ["c2", "c3"]}):
            error = assert_error(await client.post("/v1/embeddings", json=body), 504)
            assert error["type"] == "timeout_error"
        classify = await client.post("/v1/classify", json={"input": [fakes.image(1)], "labels": ["c1", "c2"]})
        assert_error(classify, 504)
        # An image refused while its labels wait in the text queue: the labels' wait is cancelled.
        bad = await client.post("/v1/classify", json={"input": ["@@"], "labels": ["c4"]})
        assert_error(bad, 400)
        backend.gate.set()

    caplog.set_level(logging.WARNING)
    run_fake_app(test, request_timeout_s=0.2)
    gc.collect()  # "exception was never retrieved" is logged when an unretrieved future is collected
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or "never retrieved" in r.getMessage()]
    assert not problems, [r.getMessage() for r in problems]


def test_a_served_request_after_504s_gets_its_answer():
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        backend.gate.clear()
        assert_error(await client.post("/v1/embeddings", json={"input": ["c1"]}), 504)
        backend.gate.set()
        await wait_until(lambda: backend.text_batches != [], "the held batch never ran")
        response = await client.post("/v1/embeddings", json={"input": ["c5", "c6"]})
        assert embeddings_of(response).tolist() == [fakes.unit(5).tolist(), fakes.unit(6).tolist()]

    run_fake_app(test, request_timeout_s=0.2)


# --- graceful shutdown -----------------------------------------------------------------------------


def test_sigterm_finishes_the_request_in_flight_and_exits_0(siglip1_dir, tmp_path, lib_tiny):
    server = LiveServer({"tiny": siglip1_dir}, ["--max-wait-ms", "3000"], tmp_path / "shutdown.log")
    try:
        server.wait_healthy()
        result: dict[str, httpx.Response | BaseException] = {}

        def request() -> None:
            try:
                result["response"] = httpx.post(f"{server.url}/v1/embeddings", timeout=HTTP_TIMEOUT_S,
                                                json={"model": "tiny", "input": ["in flight"]})
            except BaseException as exc:  # reported below
                result["response"] = exc

        thread = threading.Thread(target=request)
        thread.start()
        until = time.monotonic() + GUARD_S
        while not gauge(server.url, "siglip_queue_depth", model="tiny", tower="text"):
            assert time.monotonic() < until, "the request never reached the text queue"
            time.sleep(0.02)
        server.terminate()  # the item now waits up to 3 s for a batch
        # It stops accepting: new connections are refused (soon after the signal).
        until = time.monotonic() + GUARD_S
        while True:
            try:
                httpx.get(f"{server.url}/health", timeout=1)
            except httpx.ConnectError:
                break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < until, "still accepting connections after SIGTERM"
            time.sleep(0.02)
        thread.join(GUARD_S)
        assert not thread.is_alive(), "the in-flight request hung"
        response = result["response"]
        assert isinstance(response, httpx.Response), f"in-flight request failed: {response!r}\n{server.log()}"
        assert_close(embeddings_of(response), lib_tiny.embed_texts(["in flight"]).numpy())
        code = server.stop()
        assert code == 0, f"exit code {code} after SIGTERM, expected 0:\n{server.log()}"
    finally:
        server.kill()
