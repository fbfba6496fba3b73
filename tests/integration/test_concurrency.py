"""64 concurrent mixed requests give the numbers of the same requests sent one at a time, and the
server batched items of different requests together (its /metrics say so)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from live import HTTP_TIMEOUT_S, LiveServer, assert_close, b64, batch_histogram, live_server, png

N_REQUESTS = 64
LABELS = ["cat", "dog", "red car", "tree", "sunset"]
TEXTS = ["a cat", "two dogs on the beach", "a red car near the river", "a tree at night", "bright city street"]


@pytest.fixture(scope="module")
def batching_server(siglip1_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # No label cache: every text of every request goes through the text tower's batcher.
    args = ["--max-wait-ms", "50", "--max-batch-size", "16", "--label-cache-bytes", "0"]
    with live_server({"tiny": siglip1_dir}, args, tmp_path_factory.mktemp("logs") / "batching.log") as server:
        yield server


def mixed_requests() -> list[tuple[str, dict]]:
    """Every request carries at most one image, so an image batch over 1 mixes requests."""
    images = [b64(png(seed=100 + i, width=20 + i % 7, height=16 + i % 5)) for i in range(8)]
    requests = []
    for i in range(N_REQUESTS):
        image = images[i % len(images)]
        kind = i % 4
        if kind == 0:
            requests.append(("/v1/classify", {"input": [image], "labels": LABELS[: 2 + i % 4],
                                              "normalization": "softmax" if i % 8 == 0 else "sigmoid"}))
        elif kind == 1:
            requests.append(("/v1/embeddings", {"input": [TEXTS[i % 5], TEXTS[(i + 2) % 5]]}))
        elif kind == 2:
            requests.append(("/v1/embeddings", {"input": [image], "modality": "image"}))
        else:
            requests.append(("/v1/rerank", {"query": TEXTS[i % 5],
                                            "documents": [TEXTS[(i + 1) % 5], {"image": image}, TEXTS[(i + 3) % 5]]}))
    return requests


def numbers(path: str, body: dict) -> dict:
    """The numbers of an answer, keyed so that concurrent and sequential answers can be compared."""
    if path == "/v1/embeddings":
        return {"embeddings": np.asarray([d["embedding"] for d in body["data"]])}
    if path == "/v1/classify":
        return {"labels": [[p["label"] for p in d["predictions"]] for d in body["data"]],
                "scores": np.asarray([[p["score"] for p in d["predictions"]] for d in body["data"]])}
    return {"labels": [r["index"] for r in body["results"]],
            "scores": np.asarray([r["relevance_score"] for r in body["results"]])}


async def send_all(url: str, requests: list[tuple[str, dict]], *, concurrent: bool) -> list[dict]:
    limits = httpx.Limits(max_connections=N_REQUESTS, max_keepalive_connections=N_REQUESTS)
    async with httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT_S, limits=limits) as client:
        async def one(path: str, body: dict) -> dict:
            response = await client.post(path, json=body)
            assert response.status_code == 200, response.text
            return numbers(path, response.json())

        if concurrent:
            return list(await asyncio.gather(*(one(path, body) for path, body in requests)))
        return [await one(path, body) for path, body in requests]


def test_concurrent_mixed_requests_equal_sequential_and_are_batched(batching_server, lib_tiny):
    requests = mixed_requests()
    sequential = asyncio.run(send_all(batching_server.url, requests, concurrent=False))
    before = batch_histogram(batching_server.url)
    concurrent = asyncio.run(send_all(batching_server.url, requests, concurrent=True))
    after = batch_histogram(batching_server.url)

    for (path, _), alone, together in zip(requests, sequential, concurrent, strict=True):
        assert alone.keys() == together.keys()
        if "labels" in alone:
            assert together["labels"] == alone["labels"], path
        for key in ("embeddings", "scores"):
            if key in alone:
                assert_close(together[key], alone[key])

    # The sequential answers are the library's (so the concurrent ones are too).
    for (path, body), alone in zip(requests[:8], sequential[:8], strict=True):
        if path == "/v1/embeddings" and body.get("modality") != "image":
            assert_close(alone["embeddings"], lib_tiny.embed_texts(body["input"]).numpy())

    image = {key: after["tiny/image"][key] - before.get("tiny/image", {}).get(key, 0.0)
             for key in ("count", "sum", "le1")}
    assert image["count"] > 0
    assert image["sum"] > image["count"], f"no image batch mixed requests: {image}"
    assert image["le1"] < image["count"], f"every image batch had one item: {image}"
    assert image["sum"] == sum(1 for path, body in requests
                               if path != "/v1/embeddings" or body.get("modality") == "image")


# --- requests within the limits are never refused as overload ------------------------------------------


def test_requests_at_the_default_limits_are_not_refused_as_overload(batching_server):
    """This server has the default --max-documents (1024), --max-labels (2048) and --max-queue-size (1024).

    A rerank at --max-documents is 1025 texts with its query; a classify within --max-labels can be
    more texts than the queue holds. Refused with 429 (and Retry-After), they are refused for ever:
    an idle server must serve them (or give a 4xx other than 429 that names the limit).
    """
    documents = [f"document number {i}" for i in range(1024)]
    with httpx.Client(base_url=batching_server.url, timeout=HTTP_TIMEOUT_S) as client:
        rerank = client.post("/v1/rerank", json={"query": "a query", "documents": documents, "top_n": 3})
        labels = [f"label {i}" for i in range(1100)]
        classify = client.post("/v1/classify", json={"input": [b64(png(seed=150))], "labels": labels,
                                                     "top_k": 3})
    assert rerank.status_code == 200, rerank.text
    assert classify.status_code == 200, classify.text
