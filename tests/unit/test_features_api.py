"""POST /v1/vision/features in-process: over the analytic fake backend (known tokens, counted forwards) and over
a tiny checkpoint (the answer equals the library's). Limits before work, decoding as the schema says, float16 as
float32 rounded, one forward per layer in a batch. Ordering is forced by holding the fake's model thread, never by
waiting on the clock."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import fakes
import httpx
import numpy as np
import pytest
from fakes import DIM, FakeBackend, patch_tokens
from sample_images import encode, photo_like

import siglip_serve
from siglip_serve.api.app import create_app
from siglip_serve.config import Settings
from siglip_serve.engine.engine import Engine

GUARD_S = 30.0  # hang guard only
URL = "/v1/vision/features"


def run_app(test: Callable[[httpx.AsyncClient, Any], Awaitable[Any]], backend: Any = None,
            engine: Engine | None = None, **settings: Any) -> Any:
    backend = backend if backend is not None else FakeBackend()
    app = create_app(Settings(model=["fake"], **settings), engine or Engine({"fake": backend}))

    async def main() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=GUARD_S) as c:
                return await test(c, backend)

    return asyncio.run(asyncio.wait_for(main(), GUARD_S))


def decode(item: dict, dtype: str) -> np.ndarray:
    """As the OpenAPI description says."""
    return np.frombuffer(base64.b64decode(item["features"]), {"float32": "<f4", "float16": "<f2"}[dtype]
                         ).reshape(item["shape"])


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


# --- over the fake ------------------------------------------------------------------------------------------


def test_tokens_come_back_as_little_endian_base64_of_the_shape_given():
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        response = await client.post(URL, json={"input": [fakes.image(1), fakes.image(3)], "layer": -2})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model"], body["layer"], body["num_layers"], body["dtype"]) == ("fake", 1, 2, "float32")
        assert body["usage"]["images"] == 2
        for item, k in zip(body["data"], (1, 3), strict=True):
            assert item["object"] == "vision.features" and item["shape"] == [2, 2, DIM]
            np.testing.assert_array_equal(decode(item, "float32"), patch_tokens(k, 1).reshape(2, 2, DIM))
        assert backend.feature_batches == [(2, 1)]

    run_app(test)


def test_float_encoding_and_float16_is_float32_rounded():
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        request = {"input": [fakes.image(2)], "layer": 0}
        f32 = decode((await client.post(URL, json=request)).json()["data"][0], "float32")
        half = (await client.post(URL, json={**request, "dtype": "float16"})).json()
        assert half["dtype"] == "float16"
        f16 = decode(half["data"][0], "float16")
        assert f16.dtype == np.float16 and np.array_equal(f16, f32.astype(np.float16))
        assert not np.array_equal(f16.astype(np.float32), f32), "values float16 holds exactly would prove nothing"
        as_floats = (await client.post(URL, json={**request, "encoding_format": "float"})).json()["data"][0]
        np.testing.assert_array_equal(np.asarray(as_floats["features"], np.float32), f32)
        half_floats = (await client.post(URL, json={**request, "encoding_format": "float", "dtype": "float16"})
                       ).json()["data"][0]
        np.testing.assert_array_equal(np.asarray(half_floats["features"]), f16.astype(np.float64))

    run_app(test)


def test_mean_and_map_pooling():
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        mean = (await client.post(URL, json={"input": [fakes.image(4)], "pooling": "mean", "layer": 1})).json()
        assert mean["data"][0]["shape"] == [DIM]
        np.testing.assert_allclose(decode(mean["data"][0], "float32"), patch_tokens(4, 1).mean(0), rtol=1e-6)
        pooled = (await client.post(URL, json={"input": [fakes.image(4)], "pooling": "map"})).json()
        np.testing.assert_array_equal(decode(pooled["data"][0], "float32"), fakes.unit(4) * 3)
        refused = await client.post(URL, json={"input": [fakes.image(4)], "pooling": "map", "layer": -2})
        error = error_of(refused, 400)
        assert error["param"] == "pooling" and "final layer" in error["message"]

    run_app(test)


@pytest.mark.parametrize("layer", [3, -4, 99])
def test_a_layer_out_of_range_is_400_naming_the_range_before_any_work(layer: int):
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        error = error_of(await client.post(URL, json={"input": [fakes.image(1)], "layer": layer}), 400)
        assert error["param"] == "layer" and error["code"] == "LayerOutOfRangeError"
        assert f"layer {layer} is out of range" in error["message"] and "-3..2" in error["message"]
        assert "2 layers" in error["message"]
        assert backend.prepared == [] and backend.feature_batches == []

    run_app(test)


def test_a_response_over_the_float_cap_is_413_with_its_size_before_any_work():
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        images = [fakes.image(k) for k in range(3)]  # 3 x (4 patches x 8) = 96 floats
        error = error_of(await client.post(URL, json={"input": images}), 413)
        assert error["code"] == "ResponseTooLargeError"
        assert "3 images x 32 floats = 96 floats" in error["message"] and "limit of 95" in error["message"]
        assert "384 bytes" in error["message"]
        assert backend.prepared == []
        pooled = await client.post(URL, json={"input": images, "pooling": "mean"})  # 3 x 8 floats fit
        assert pooled.status_code == 200 and len(pooled.json()["data"]) == 3
        assert (await client.post(URL, json={"input": images[:2]})).status_code == 200

    run_app(test, max_feature_floats=95)


def test_requests_of_one_layer_share_a_forward_and_a_mixed_batch_runs_one_per_layer():
    backend = FakeBackend()
    engine = Engine({"fake": backend})

    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        backend.gate.clear()
        first = asyncio.ensure_future(client.post(URL, json={"input": [fakes.image(0)]}))
        while not backend.entered.is_set():  # the first batch holds the model thread
            await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(client.post(URL, json=body)) for body in (
            {"input": [fakes.image(1), fakes.image(2)], "layer": -1},
            {"input": [fakes.image(3)], "layer": 0},
            {"input": [fakes.image(4)], "layer": 2},
        )]
        features = engine.resolve(None).features
        assert features is not None
        while features.queue_depth < 4:  # all three requests wait for the next batch
            await asyncio.sleep(0.005)
        backend.gate.set()
        responses = [await first, *[await q for q in queued]]
        assert [r.status_code for r in responses] == [200] * 4
        # The second batch holds all four images: layers -1 and 2 are one layer (one forward of 3), 0 another.
        assert backend.feature_batches[0] == (1, 2)
        assert sorted(backend.feature_batches[1:]) == [(1, 0), (3, 2)]
        np.testing.assert_array_equal(decode(responses[2].json()["data"][0], "float32"),
                                      patch_tokens(3, 0).reshape(2, 2, DIM))

    run_app(test, backend=backend, engine=engine)


class NoFeatures(FakeBackend):
    """A backend without the optional feature members."""

    @property
    def patch_layout(self):  # type: ignore[override]
        raise AttributeError("patch_layout")


def test_a_model_without_features_is_400_and_others_still_serve():
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        error = error_of(await client.post(URL, json={"input": [fakes.image(1)]}), 400)
        assert error["param"] == "model" and "does not serve vision features" in error["message"]
        assert (await client.post("/v1/embeddings", json={"input": [fakes.image(1)], "modality": "image"})
                ).status_code == 200

    run_app(test, backend=NoFeatures())


def test_openapi_says_how_to_decode():
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        schema = (await client.get("/openapi.json")).json()
        text = str(schema["paths"][URL]) + str(schema["components"]["schemas"]["FeaturesRequest"])
        assert "numpy.frombuffer(base64.b64decode(features), dtype).reshape(shape)" in text
        assert "little-endian" in text

    run_app(test)


def test_bad_fields_are_refused():
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        for body in ({"input": [fakes.image(1)], "dtype": "bfloat16"}, {"input": [fakes.image(1)], "pooling": "max"},
                     {"input": [fakes.image(1)], "layer": "last"}, {"input": [fakes.image(1)], "layer": True},
                     {"input": [fakes.image(1)], "layer": "-1"}, {"input": [fakes.image(1)], "extra": 1}):
            assert (await client.post(URL, json=body)).status_code == 422, body
        assert error_of(await client.post(URL, json={"input": []}), 400)["param"] == "input"
        assert backend.prepared == []

    run_app(test)


# --- over a tiny checkpoint: the HTTP answer is the library's ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny(siglip1_dir: Path) -> siglip_serve.Model:
    return siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32")


def test_http_features_equal_the_library(tiny: siglip_serve.Model):
    images = [encode(photo_like(48, 36, seed=s), "PNG") for s in range(3)]

    async def test(client: httpx.AsyncClient, backend: Any) -> None:
        refs = [base64.b64encode(data).decode() for data in images]
        for layer in (-1, -2, 0):
            body = (await client.post(URL, json={"input": refs, "layer": layer})).json()
            expected = tiny.encode_patches(images, layer)
            for item, features in zip(body["data"], expected, strict=True):
                assert item["shape"] == [4, 4, 32]
                np.testing.assert_allclose(decode(item, "float32"), features.spatial().numpy(), atol=1e-6, rtol=0)
        error = error_of(await client.post(URL, json={"input": refs[:1], "layer": 3}), 400)
        assert "-3..2" in error["message"]

    run_app(test, backend=tiny)


def test_naflex_shapes_are_each_images_own_grid_and_the_cap_counts_the_budget(
        tmp_path_factory: pytest.TempPathFactory):
    import torch
    from tiny_naflex import build_naflex

    from siglip_serve.model import Model
    from siglip_serve.models.naflex import load_naflex_checkpoint

    directory = build_naflex(tmp_path_factory.mktemp("ckpt") / "naflex")
    model = Model(load_naflex_checkpoint(directory, name="naflex", device=torch.device("cpu"), dtype=torch.float32))
    images = [encode(photo_like(30, 120, seed=1), "PNG"), encode(photo_like(200, 40, seed=2), "PNG")]

    async def test(client: httpx.AsyncClient, backend: Any) -> None:
        refs = [base64.b64encode(data).decode() for data in images]
        body = (await client.post(URL, json={"input": refs, "layer": -2})).json()
        expected = model.encode_patches(images, -2)
        assert [item["shape"][:2] for item in body["data"]] == [list(f.grid) for f in expected]
        assert body["data"][0]["shape"][0] > body["data"][0]["shape"][1]  # tall: more rows than columns
        for item, features in zip(body["data"], expected, strict=True):
            np.testing.assert_allclose(decode(item, "float32"), features.spatial().numpy(), atol=1e-6, rtol=0)
        # 3 images x 16 patches (the budget, whatever their grids) x 32 = 1536 floats: over a cap of 1100.
        error = error_of(await client.post(URL, json={"input": [*refs, refs[0]]}), 413)
        assert "3 images x 512 floats = 1,536 floats" in error["message"] and "patch budget" in error["message"]

    run_app(test, backend=model, max_feature_floats=1100)
