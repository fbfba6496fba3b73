"""The engine without HTTP: results equal the library's, the label cache, mixed inputs."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
import torch
from sample_images import encode, photo_like

import siglip_serve
from siglip_serve.engine.engine import Engine, EngineConfig
from siglip_serve.engine.inputs import Input
from siglip_serve.engine.label_cache import LabelCache
from siglip_serve.errors import InvalidImageError


@pytest.fixture(scope="module")
def library(siglip1_dir: Path) -> siglip_serve.Model:
    return siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32")


def images() -> list[bytes]:
    return [encode(photo_like(40 + 10 * i, 30, seed=i), "PNG") for i in range(3)]


def run(engine: Engine, work):
    async def main():
        async with engine:
            return await work(engine)

    return asyncio.run(main())


def test_label_cache_is_lru_and_bounded() -> None:
    cache = LabelCache(capacity=2)
    cache.put_many("m", [("a", torch.ones(2)), ("b", torch.zeros(2))])
    assert cache.get("m", "a") is not None  # touch a: b is now the oldest
    cache.put_many("m", [("c", torch.ones(2))])
    assert cache.get("m", "b") is None and cache.get("m", "a") is not None and len(cache) == 2
    assert cache.get("other-model", "a") is None


def test_classify_equals_library_and_second_call_hits_the_cache(library: siglip_serve.Model) -> None:
    engine = Engine({"tiny": library}, EngineConfig(max_wait_ms=1))
    labels = ["cat", "dog", "red car"]
    refs = [Input(param=f"input[{i}]", image=base64.b64encode(data).decode()) for i, data in enumerate(images())]

    async def work(engine: Engine):
        served = engine.resolve(None)
        first, _ = await engine.classify(served, refs, labels, templates=None, deadline=None)
        misses = engine.metrics.cache_misses._value.get()
        second, _ = await engine.classify(served, refs, labels, templates=None, deadline=None)
        return first, second, misses, engine.metrics.cache_misses._value.get(), engine.metrics.cache_hits._value.get()

    first, second, misses_after_first, misses_after_second, hits = run(engine, work)
    expected = library.classify(images(), labels)
    for got_row, want_row in zip(first, expected, strict=True):
        assert [label for label, _ in got_row] == [label for label, _ in want_row]
        assert [s for _, s in got_row] == pytest.approx([s for _, s in want_row], abs=1e-5)
    assert second == first
    assert misses_after_first == len(labels) and misses_after_second == len(labels) and hits == len(labels)


def test_mixed_inputs_keep_their_order(library: siglip_serve.Model) -> None:
    engine = Engine({"tiny": library}, EngineConfig(max_wait_ms=1))
    data = images()
    inputs = [Input("input[0]", text="a cat"), Input("input[1]", image=base64.b64encode(data[0]).decode()),
              Input("input[2]", text="a dog"), Input("input[3]", image=base64.b64encode(data[1]).decode())]

    async def work(engine: Engine):
        return await engine.embed(engine.resolve("tiny"), inputs, deadline=None)

    embeds, usage = run(engine, work)
    torch.testing.assert_close(torch.from_numpy(embeds[[0, 2]]), library.embed_texts(["a cat", "a dog"]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.from_numpy(embeds[[1, 3]]), library.embed_images(data[:2]), atol=1e-5, rtol=0)
    assert usage.images == 2 and usage.text_tokens > 0


def test_bad_image_error_names_its_item(library: siglip_serve.Model) -> None:
    engine = Engine({"tiny": library}, EngineConfig(max_wait_ms=1))
    good = base64.b64encode(images()[0]).decode()
    bad = base64.b64encode(b"not an image").decode()

    async def work(engine: Engine):
        served = engine.resolve(None)
        with pytest.raises(InvalidImageError) as info:
            await engine.classify(served, [Input("input[0]", image=good), Input("input[1]", image=bad)],
                                  ["cat"], templates=None, deadline=None)
        ok, _ = await engine.classify(served, [Input("input[0]", image=good)], ["cat"], templates=None,
                                      deadline=None)
        return info.value, ok

    error, ok = run(engine, work)
    assert error.param == "input[1]" and "input[1]" in error.message
    assert ok[0][0][0] == "cat"


def test_image_and_text_batches_of_every_model_on_a_device_share_one_model_thread(siglip1_dir: Path) -> None:
    """Two threads driving torch at once would each start an intra-op team on the same cores."""
    import threading

    models = {name: siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32") for name in ("a", "b")}
    seen: list[str] = []
    for model in models.values():
        towers = model.checkpoint.towers
        for method in ("encode_prepared", "encode_texts"):
            original = getattr(towers, method)

            def recording(*args, _original=original, **kwargs):
                seen.append(threading.current_thread().name)
                return _original(*args, **kwargs)

            setattr(towers, method, recording)
    engine = Engine(models, EngineConfig(max_wait_ms=1))
    refs = [Input(param="input[0]", image=base64.b64encode(images()[0]).decode())]

    async def work(engine: Engine):
        return await asyncio.gather(*(engine.classify(engine.resolve(name), refs, ["cat", "dog"], templates=None,
                                                      deadline=None) for name in models))

    results = run(engine, work)
    assert len(results) == 2 and len(seen) >= 4  # an image and a text batch per model
    assert len(set(seen)) == 1 and seen[0].startswith("siglip-model-cpu"), seen
