"""Failures inside the engine, in-process (a subprocess cannot be monkeypatched): the app of
`create_app` over an `Engine`, run with its lifespan and called through httpx's ASGI transport.

A model that raises fails its own batch only; a batch loop that dies turns /health to 503 and
makes requests fail fast with 503 instead of hanging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from live import assert_close, assert_error, b64, embeddings_of, image_bytes, png
from PIL import Image

import siglip_serve
from siglip_serve.api.app import create_app
from siglip_serve.config import Settings
from siglip_serve.engine.engine import Engine, EngineConfig

GUARD_S = 30.0  # hang guard only
RED = image_bytes(Image.new("RGB", (24, 24), (255, 0, 0)), "PNG")


def run_app(directory: Path, config: EngineConfig, test: Callable[[httpx.AsyncClient, Engine], Awaitable[Any]],
            prepare: Callable[[Engine], None] = lambda engine: None) -> Any:
    """Build a fresh model, engine and app, start the app's lifespan, run `test`, stop."""
    engine = Engine({"tiny": siglip_serve.load(str(directory), device="cpu", dtype="float32")}, config)
    prepare(engine)
    app = create_app(Settings(model=[f"tiny={directory}"]), engine)

    async def main() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=GUARD_S) as c:
                return await test(c, engine)

    return asyncio.run(asyncio.wait_for(main(), GUARD_S))


def is_red(pixels: np.ndarray) -> bool:
    """An all-red image after SigLIP's normalization: R at +1, G and B at -1."""
    return bool(np.allclose(pixels[0], 1.0, atol=1e-3) and np.allclose(pixels[1:], -1.0, atol=1e-3))


def image_request(data: bytes) -> dict:
    return {"model": "tiny", "modality": "image", "input": [b64(data)]}


def test_a_model_error_fails_only_its_batch(siglip1_dir, lib_tiny):
    clean = [png(seed=300 + i, width=20, height=20) for i in range(5)]
    prepared = [lib_tiny.prepare_image(data) for data in clean]
    batches: list[list[str]] = []

    def poison(engine: Engine) -> None:
        model = engine.models["tiny"].backend
        original = model.encode_image_batch

        def encode(pixels):
            names = []
            for p in pixels:
                found = [i for i, q in enumerate(prepared) if np.array_equal(p, q)]
                names.append("red" if is_red(p) else f"clean{found[0]}" if found else "unknown")
            batches.append(names)
            if "red" in names:
                raise RuntimeError("poisoned input in this batch")
            return original(pixels)

        model.encode_image_batch = encode

    async def test(client: httpx.AsyncClient, engine: Engine) -> None:
        # Batches of 3 that wait up to 2 s to fill: the 6 requests make exactly two batches.
        names = ["red", *(f"clean{i}" for i in range(5))]
        images = [RED, *clean]
        responses = await asyncio.gather(*(client.post("/v1/embeddings", json=image_request(d)) for d in images))
        assert sorted(len(b) for b in batches) == [3, 3], batches
        failed_batch = next(b for b in batches if "red" in b)
        for name, image, response in zip(names, images, responses, strict=True):
            if name in failed_batch:
                error = assert_error(response, 500)
                assert error["type"] == "server_error"
                assert "poisoned" in error["message"] or "model" in error["message"]
            else:
                assert_close(embeddings_of(response), lib_tiny.embed_images([image]).numpy())
        # The engine is unharmed: a full batch of clean images right after.
        response = await client.post("/v1/embeddings", json={"model": "tiny", "modality": "image",
                                                              "input": [b64(d) for d in clean[:3]]})
        assert_close(embeddings_of(response), lib_tiny.embed_images(clean[:3]).numpy())
        assert (await client.get("/health")).status_code == 200
        # A poisoned image alone fails alone; the text tower never noticed.
        texts = ["a cat", "a dog", "a tree"]
        red, words = await asyncio.gather(
            client.post("/v1/embeddings", json={"model": "tiny", "modality": "image", "input": [b64(RED)] * 3}),
            client.post("/v1/embeddings", json={"model": "tiny", "input": texts}),
        )
        assert_error(red, 500)
        assert_close(embeddings_of(words), lib_tiny.embed_texts(texts).numpy())

    run_app(siglip1_dir, EngineConfig(max_batch_size=3, max_wait_ms=2000), test, prepare=poison)


def test_a_dead_batch_loop_makes_health_503_and_requests_fail_fast(siglip1_dir):
    def break_loop(engine: Engine) -> None:
        def pop_live(size: int):
            raise RuntimeError("bug in the batch loop")

        engine.models["tiny"].images._pop_live = pop_live

    async def test(client: httpx.AsyncClient, engine: Engine) -> None:
        assert (await client.get("/health")).status_code == 200
        first = await asyncio.wait_for(client.post("/v1/embeddings", json=image_request(png(seed=310))), 10)
        error = assert_error(first, 503)
        assert error["type"] == "service_unavailable_error"
        health = await client.get("/health")
        assert_error(health, 503)
        # Fail fast, for images and for texts, rather than wait for a loop that is gone.
        for body in (image_request(png(seed=311)), {"model": "tiny", "input": ["a cat"]}):
            response = await asyncio.wait_for(client.post("/v1/embeddings", json=body), 10)
            assert_error(response, 503)
        classify = await asyncio.wait_for(client.post("/v1/classify", json={
            "model": "tiny", "input": [b64(png(seed=312))], "labels": ["a", "b"]}), 10)
        assert_error(classify, 503)

    run_app(siglip1_dir, EngineConfig(max_batch_size=4, max_wait_ms=10), test, prepare=break_loop)


@pytest.mark.parametrize("tower", ["images", "texts"])
def test_health_is_503_once_any_batcher_dies(siglip1_dir, tower):
    def break_loop(engine: Engine) -> None:
        def pop_live(size: int):
            raise RuntimeError("bug in the batch loop")

        getattr(engine.models["tiny"], tower)._pop_live = pop_live

    async def test(client: httpx.AsyncClient, engine: Engine) -> None:
        body = image_request(png(seed=320)) if tower == "images" else {"model": "tiny", "input": ["a dog"]}
        assert_error(await asyncio.wait_for(client.post("/v1/embeddings", json=body), 10), 503)
        assert_error(await client.get("/health"), 503)

    run_app(siglip1_dir, EngineConfig(max_batch_size=4, max_wait_ms=10), test, prepare=break_loop)
