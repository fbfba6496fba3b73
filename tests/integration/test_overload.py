"""Overload (429 with Retry-After), deadlines (504) and graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live import (
    HTTP_TIMEOUT_S,
    LiveServer,
    assert_close,
    assert_error,
    b64,
    embeddings_of,
    gauge,
    live_server,
    png,
)

GUARD_S = 30.0  # hang guard only


# --- 429 -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overload_server(siglip1_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # A batch waits 2 s for more items, and at most 2 items may wait: the third waiting item is refused.
    args = ["--max-queue-size", "2", "--max-wait-ms", "2000", "--max-batch-size", "64"]
    with live_server({"tiny": siglip1_dir}, args, tmp_path_factory.mktemp("logs") / "overload.log") as server:
        yield server


async def burst(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT_S,
                                 limits=httpx.Limits(max_connections=len(bodies))) as client:
        return list(await asyncio.gather(*(client.post("/v1/embeddings", json=b) for b in bodies)))


def test_burst_gets_some_429_with_retry_after_and_the_server_recovers(overload_server, lib_tiny):
    images = [png(seed=200 + i) for i in range(8)]
    bodies = [{"model": "tiny", "modality": "image", "input": [b64(image)]} for image in images]
    responses = asyncio.run(asyncio.wait_for(burst(overload_server.url, bodies), GUARD_S))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert 429 in statuses, statuses
    assert 200 in statuses, statuses
    for image, response in zip(images, responses, strict=True):
        if response.status_code == 429:
            error = assert_error(response, 429)
            assert error["type"] == "rate_limit_error"
            assert int(response.headers["Retry-After"]) >= 0
        else:
            assert_close(embeddings_of(response), lib_tiny.embed_images([image]).numpy())
    # Still serving afterwards.
    response = httpx.post(f"{overload_server.url}/v1/embeddings", timeout=HTTP_TIMEOUT_S,
                          json={"model": "tiny", "input": ["after the burst"]})
    assert_close(embeddings_of(response), lib_tiny.embed_texts(["after the burst"]).numpy())
    assert httpx.get(f"{overload_server.url}/health").status_code == 200


# --- 504 -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deadline_server(siglip1_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # A lone item waits 3 s for a batch, past the 0.5 s deadline; a full batch (4 items) runs at once.
    args = ["--request-timeout-s", "0.5", "--max-wait-ms", "3000", "--max-batch-size", "4",
            "--label-cache-size", "0"]
    with live_server({"tiny": siglip1_dir}, args, tmp_path_factory.mktemp("logs") / "deadline.log") as server:
        yield server


def test_request_past_its_deadline_gets_504(deadline_server, lib_tiny):
    with httpx.Client(base_url=deadline_server.url, timeout=HTTP_TIMEOUT_S) as client:
        error = assert_error(client.post("/v1/embeddings", json={"model": "tiny", "input": ["a lone cat"]}), 504)
        assert error["type"] == "timeout_error"
        error = assert_error(client.post("/v1/classify", json={"model": "tiny", "input": [b64(png(seed=220))],
                                                               "labels": ["a", "b", "c", "d"]}), 504)
        # A full batch does not wait: served within the deadline right after the 504s.
        texts = ["one cat", "two cats", "three dogs", "four trees"]
        response = client.post("/v1/embeddings", json={"model": "tiny", "input": texts})
        assert_close(embeddings_of(response), lib_tiny.embed_texts(texts).numpy())
        assert client.get("/health").status_code == 200


def test_timeouts_and_cancellations_log_no_asyncio_errors(deadline_server):
    """A 504 is an expected outcome: it must not log "Future exception was never retrieved" at ERROR."""
    with httpx.Client(base_url=deadline_server.url, timeout=HTTP_TIMEOUT_S) as client:
        for text in ("late one", "late two"):
            assert_error(client.post("/v1/embeddings", json={"model": "tiny", "input": [text]}), 504)
        # Image refused while its labels wait in the text queue: the labels' wait is cancelled.
        assert_error(client.post("/v1/classify", json={"model": "tiny", "input": ["@@"], "labels": ["a"]}), 400)
        texts = ["one cat", "two cats", "three dogs", "four trees"]
        assert client.post("/v1/embeddings", json={"model": "tiny", "input": texts}).status_code == 200
    log = deadline_server.log()
    assert "never retrieved" not in log, log
    assert "Traceback" not in log, log


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
        while not gauge(server.url, "siglip_queue_depth", batcher="tiny/text"):
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
