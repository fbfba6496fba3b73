"""The engine without HTTP, on the analytic fake backend (tests/fakes.py): every expected score is
sigmoid(5) or sigmoid(-5), computed by hand. Admission, the label cache, deadlines and ordering."""

from __future__ import annotations

import asyncio
import threading
import time

import fakes
import pytest
import torch
from fakes import MATCH, MISMATCH, FakeBackend

from siglip_serve.engine.engine import Engine, EngineConfig
from siglip_serve.engine.inputs import Input
from siglip_serve.engine.label_cache import CachedText, LabelCache, entry_bytes
from siglip_serve.errors import DeadlineExceededError, InvalidImageError, QueueFullError

GUARD_S = 30.0  # hang guard only


def run(engine: Engine, work):
    async def main():
        async with engine:
            return await asyncio.wait_for(work(engine), GUARD_S)

    return asyncio.run(main())


def images(*ks: int) -> list[Input]:
    return [Input(f"input[{i}]", image=fakes.image(k)) for i, k in enumerate(ks)]


async def until(condition, what: str) -> None:
    """Yield to the loop until `condition()`; a hang guard, not a timing assumption."""
    deadline = time.monotonic() + GUARD_S
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.005)


def test_classify_scores_are_the_sigmoid_of_the_known_logits() -> None:
    engine = Engine({"fake": FakeBackend()})

    async def work(engine: Engine):
        return await engine.classify(engine.resolve(None), images(1, 2), ["c0", "c1", "c2"], templates=None,
                                     deadline=None)

    results, usage = run(engine, work)
    assert results == [
        [("c1", pytest.approx(MATCH)), ("c0", pytest.approx(MISMATCH)), ("c2", pytest.approx(MISMATCH))],
        [("c2", pytest.approx(MATCH)), ("c0", pytest.approx(MISMATCH)), ("c1", pytest.approx(MISMATCH))],
    ]
    # "This is a photo of cK." is 6 words + EOS; 3 labels, one template; 2 images of 4 patches each.
    assert (usage.text_tokens, usage.images, usage.image_tokens) == (3 * 7, 2, 8)


def test_softmax_and_top_k() -> None:
    engine = Engine({"fake": FakeBackend()})

    async def work(engine: Engine):
        return await engine.classify(engine.resolve(None), images(0), ["c0", "c1", "c2", "c3"], templates="{}",
                                     normalization="softmax", top_k=2, deadline=None)

    (ranked,), _ = run(engine, work)
    e10 = torch.tensor(10.0).exp().item()  # logits 5 and -5 differ by 10
    assert ranked == [("c0", pytest.approx(e10 / (e10 + 3))), ("c1", pytest.approx(1 / (e10 + 3)))]


def test_template_ensemble_averages_normalized_prompts() -> None:
    # "c1 {}" with label c2 names two classes: its embedding is e1 (the first match), the other template's e2.
    # The ensemble is normalize(e1 + e2): cosine 1/sqrt(2) with e1 and with e2.
    engine = Engine({"fake": FakeBackend()})

    async def work(engine: Engine):
        return await engine.classify(engine.resolve(None), images(2), ["c2"], templates=["c1 {}", "{}"],
                                     deadline=None)

    (ranked,), _ = run(engine, work)
    expected = 1 / (1 + torch.tensor(-(10 / 2**0.5 - 5)).exp().item())
    assert ranked == [("c2", pytest.approx(expected, abs=1e-6))]


def test_a_warm_request_does_no_tokenization_and_counts_the_same_usage() -> None:
    backend = FakeBackend()
    engine = Engine({"fake": backend})

    async def work(engine: Engine):
        served = engine.resolve(None)
        first = await engine.classify(served, images(1), ["c0", "c1"], templates=None, deadline=None)
        tokenized = len(backend.tokenized)
        second = await engine.classify(served, images(1), ["c0", "c1"], templates=None, deadline=None)
        return first, second, tokenized

    first, second, tokenized_after_first = run(engine, work)
    assert tokenized_after_first == 2 and len(backend.tokenized) == 2  # nothing tokenized the second time
    assert second == first
    assert engine.metrics.cache_hits._value.get() == 2 and engine.metrics.cache_misses._value.get() == 2


def test_mixed_inputs_keep_their_order_and_are_normalized() -> None:
    engine = Engine({"fake": FakeBackend()})
    inputs = [Input("input[0]", text="c3"), Input("input[1]", image=fakes.image(5)),
              Input("input[2]", text="c4"), Input("input[3]", image=fakes.image(6))]

    async def work(engine: Engine):
        return await engine.embed(engine.resolve(None), inputs, deadline=None)

    embeds, usage = run(engine, work)
    for row, k in zip(embeds, (3, 5, 4, 6), strict=True):
        assert row.tolist() == fakes.unit(k).tolist()
    assert (usage.text_tokens, usage.images) == (4, 2)


def test_bad_image_error_names_its_item_and_the_engine_keeps_serving() -> None:
    engine = Engine({"fake": FakeBackend()})
    bad = [Input("input[0]", image=fakes.image(1)), Input("input[1]", image="bm90IGFuIGltYWdl")]

    async def work(engine: Engine):
        served = engine.resolve(None)
        with pytest.raises(InvalidImageError) as info:
            await engine.classify(served, bad, ["c1"], templates=None, deadline=None)
        ok, _ = await engine.classify(served, images(1), ["c1"], templates=None, deadline=None)
        return info.value, ok

    error, ok = run(engine, work)
    assert error.param == "input[1]" and error.message.startswith("input[1]: ")
    assert ok == [[("c1", pytest.approx(MATCH))]]


def test_admission_refuses_at_once_before_any_work_and_frees_on_completion() -> None:
    backend = FakeBackend()
    engine = Engine({"fake": backend}, EngineConfig(max_queue_size=3))
    backend.gate.clear()  # the model thread holds the first batch until the test lets it go

    async def work(engine: Engine):
        served = engine.resolve(None)
        holding = asyncio.ensure_future(engine.embed(served, [*images(1, 2)], deadline=None))
        await until(backend.entered.is_set, "the first request never reached the model")
        assert served.admission.in_use == 2
        prepared_before = len(backend.prepared)
        with pytest.raises(QueueFullError):  # 2 images + 2 texts > 3 - 2: refused whole, nothing prepared
            await engine.classify(served, images(3, 4), ["c5", "c6"], templates="{}", deadline=None)
        assert len(backend.prepared) == prepared_before and backend.tokenized == []
        backend.gate.set()
        first, _ = await holding
        assert served.admission.in_use == 0
        again, _ = await engine.classify(served, images(3, 4), ["c5", "c6"], templates="{}", deadline=None)
        return first, again

    first, again = run(engine, work)
    assert first.shape == (2, fakes.DIM) and len(again) == 2


def test_a_request_larger_than_the_capacity_runs_alone() -> None:
    engine = Engine({"fake": FakeBackend()}, EngineConfig(max_queue_size=2, max_batch_size=2))

    async def work(engine: Engine):
        served = engine.resolve(None)
        return await engine.classify(served, images(0, 1, 2), [f"c{k}" for k in range(6)], templates="{}",
                                     deadline=None)

    results, _ = run(engine, work)
    assert [row[0] for row in results] == [("c0", pytest.approx(MATCH)), ("c1", pytest.approx(MATCH)),
                                           ("c2", pytest.approx(MATCH))]


def test_a_request_past_its_deadline_fails_and_the_next_one_is_served() -> None:
    """Deterministic: the model is held until the 504 has happened, so no machine is too slow for it."""
    backend = FakeBackend()
    engine = Engine({"fake": backend})
    backend.gate.clear()

    async def work(engine: Engine):
        served = engine.resolve(None)
        with pytest.raises(DeadlineExceededError):
            await engine.embed(served, [Input("input[0]", text="c1")], deadline=time.monotonic() + 0.05)
        backend.gate.set()
        return await engine.embed(served, [Input("input[0]", text="c2")], deadline=time.monotonic() + GUARD_S)

    embeds, _ = run(engine, work)
    assert embeds[0].tolist() == fakes.unit(2).tolist()


def test_label_cache_is_bounded_by_bytes_and_keys_by_hash() -> None:
    embedding = torch.ones(8)
    size = entry_bytes(embedding)
    cache = LabelCache(capacity_bytes=2 * size)
    long_text = "x" * 1_000_000
    cache.put_many("m", [(long_text, CachedText(embedding, 64)), ("b", CachedText(torch.zeros(8), 2))])
    assert cache.bytes == 2 * size  # a megabyte text costs its 16-byte digest, like any other
    assert cache.get("m", long_text).num_tokens == 64  # touch it: "b" is now the oldest
    cache.put_many("m", [("c", CachedText(torch.ones(8), 3))])
    assert cache.get("m", "b") is None and cache.get("m", long_text) is not None and len(cache) == 2
    assert cache.get("other-model", long_text) is None
    assert cache.bytes <= cache.capacity_bytes


def test_image_and_text_batches_of_every_model_on_a_device_share_one_model_thread() -> None:
    """Two threads driving torch at once would each start an intra-op team on the same cores."""
    backends = {"a": FakeBackend("a"), "b": FakeBackend("b")}
    seen: list[str] = []
    for backend in backends.values():
        for method in ("encode_image_batch", "encode_text_batch"):
            original = getattr(backend, method)

            def recording(batch, _original=original):
                seen.append(threading.current_thread().name)
                return _original(batch)

            setattr(backend, method, recording)
    engine = Engine(backends)

    async def work(engine: Engine):
        return await asyncio.gather(*(engine.classify(engine.resolve(name), images(1), ["c1", "c2"],
                                                      templates=None, deadline=None) for name in backends))

    results = run(engine, work)
    assert len(results) == 2 and len(seen) == 4  # an image and a text batch per model
    assert len(set(seen)) == 1 and seen[0].startswith("siglip-model-cpu"), seen


class BudgetedBackend(FakeBackend):
    """Reserves each image's pixels from the engine's decode budget, as the real decode does."""

    PIXELS = 10

    def prepare_image(self, source: bytes, *, budget=None):
        with budget.reserve(self.PIXELS):
            return super().prepare_image(source, budget=budget)


def test_a_cancelled_request_stops_waiting_for_decode_memory_and_frees_its_decode_thread() -> None:
    """A client gone while its image waits for the pixel budget: the waiting decode gives up instead of
    decoding for nobody, and the only decode thread serves the next request."""
    backend = BudgetedBackend()
    engine = Engine({"fake": backend}, EngineConfig(decode_workers=1, max_decode_pixels=BudgetedBackend.PIXELS))

    async def work(engine: Engine):
        served = engine.resolve(None)
        with engine.pixels.reserve(BudgetedBackend.PIXELS):  # another decode holds the whole budget
            gone = asyncio.ensure_future(engine.embed(served, images(1), deadline=None))
            await until(lambda: engine.pixels.waiting == 1, "the decode never waited for the budget")
            gone.cancel()
            await until(lambda: engine.pixels.waiting == 0, "the cancelled decode kept waiting")
        with pytest.raises(asyncio.CancelledError):
            await gone
        embeds, _ = await engine.embed(served, images(2), deadline=None)
        return embeds

    embeds = run(engine, work)
    assert embeds[0].tolist() == fakes.unit(2).tolist()
    assert backend.prepared == [b"img:2"]  # image 1 was never decoded
    assert engine.pixels.in_use == 0
