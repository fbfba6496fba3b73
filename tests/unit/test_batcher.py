"""DynamicBatcher: grouping, failure isolation, admission, deadlines, cancellation, loop death, stop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from siglip_serve.engine.batcher import BatcherConfig, DynamicBatcher, ModelWorker, NoopObserver
from siglip_serve.errors import (
    DeadlineExceededError,
    EngineUnavailableError,
    InferenceError,
    QueueFullError,
)

GUARD_S = 5.0  # hang guard only; nothing here should take close to it


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, GUARD_S))


class FakeModel:
    """Doubles each item; records batches; can be held shut (``gate``) and fail on one value."""

    def __init__(self, *, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, xs: list[int]) -> list[int]:
        self.batches.append(list(xs))
        self.entered.set()
        self.gate.wait(GUARD_S)
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in xs:
            raise ValueError("boom")
        return [x * 2 for x in xs]

    @property
    def seen(self) -> list[int]:
        return [x for batch in self.batches for x in batch]

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 2.0), "run_batch was never called"


def make(model: Any, **config: Any) -> DynamicBatcher[int, int]:
    return DynamicBatcher(model, BatcherConfig(model="test", tower="image", **config))


async def wait_depth(batcher: DynamicBatcher[int, int], depth: int) -> None:
    while batcher.queue_depth != depth:
        await asyncio.sleep(0.001)


def assert_clean(batcher: DynamicBatcher[int, int]) -> None:
    assert batcher.queue_depth == 0
    assert not batcher._queue
    assert not batcher._in_flight


def test_concurrent_requests_are_batched_in_order() -> None:
    model = FakeModel(delay=0.01)

    async def main() -> None:
        batcher = make(model, max_batch_size=16, max_wait_ms=20)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(64)))
        assert results == [[2 * i] for i in range(64)]
        assert max(len(b) for b in model.batches) > 1
        assert all(len(b) <= 16 for b in model.batches)
        assert sorted(model.seen) == list(range(64))
        assert_clean(batcher)
        await batcher.stop()

    run(main())


def test_items_that_arrive_while_the_model_is_busy_form_the_next_batch() -> None:
    """Natural batching: an idle batcher starts at once; what queues meanwhile runs together."""
    model = FakeModel()

    async def main() -> None:
        batcher = make(model, max_batch_size=16)  # default max_wait_ms: no timer
        await batcher.start()
        model.gate.clear()
        first = asyncio.ensure_future(batcher.submit([1]))
        await model.wait_entered()  # ran alone, without waiting for company
        rest = [asyncio.ensure_future(batcher.submit([x])) for x in (2, 3, 4)]
        await wait_depth(batcher, 3)
        model.gate.set()
        assert await first == [2]
        assert [await r for r in rest] == [[4], [6], [8]]
        assert model.batches == [[1], [2, 3, 4]]
        await batcher.stop()

    run(main())


def test_batchers_sharing_a_worker_form_their_batch_when_their_turn_comes() -> None:
    """A batcher whose device is busy with another batcher's batch keeps collecting items."""
    images, texts = FakeModel(), FakeModel()

    async def main() -> None:
        worker = ModelWorker("test-device")
        image_batcher = DynamicBatcher(images, BatcherConfig(model="m", tower="image"), worker=worker)
        text_batcher = DynamicBatcher(texts, BatcherConfig(model="m", tower="text"), worker=worker)
        await image_batcher.start()
        await text_batcher.start()
        images.gate.clear()
        image_call = asyncio.ensure_future(image_batcher.submit([1]))
        await images.wait_entered()
        early = asyncio.ensure_future(text_batcher.submit([10]))
        await asyncio.sleep(0.05)  # time enough for a batch of [10] to be formed, were it formed early
        late = asyncio.ensure_future(text_batcher.submit([11]))
        await wait_depth(text_batcher, 2)
        images.gate.set()
        assert (await image_call, await early, await late) == ([2], [20], [22])
        assert texts.batches == [[10, 11]]
        await image_batcher.stop()
        await text_batcher.stop()
        worker.shutdown()

    run(main())


def test_a_batcher_waiting_for_company_leaves_the_device_to_others() -> None:
    images, texts = FakeModel(), FakeModel()

    async def main() -> None:
        worker = ModelWorker("test-device")
        image_batcher = DynamicBatcher(images, BatcherConfig(model="m", tower="image", max_batch_size=4,
                                                             max_wait_ms=2000), worker=worker)
        text_batcher = DynamicBatcher(texts, BatcherConfig(model="m", tower="text", max_batch_size=4), worker=worker)
        await image_batcher.start()
        await text_batcher.start()
        lone = asyncio.ensure_future(image_batcher.submit([1]))  # waits up to 2 s for 3 more
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(text_batcher.submit([5, 6]), 1.0) == [10, 12]
        assert not lone.done()
        await image_batcher.stop()  # draining: the lone item stops waiting and runs
        assert await lone == [2]
        await text_batcher.stop()
        worker.shutdown()

    run(main())


def test_one_request_spans_batches() -> None:
    model = FakeModel()

    async def main() -> None:
        batcher = make(model, max_batch_size=16, max_wait_ms=1)
        await batcher.start()
        assert await batcher.submit(list(range(40))) == [2 * i for i in range(40)]
        assert [len(b) for b in model.batches] == [16, 16, 8]
        assert await batcher.submit([]) == []
        await batcher.stop()

    run(main())


def test_wrong_result_count_fails_the_batch() -> None:
    async def main() -> None:
        batcher = make(lambda xs: xs[:-1], max_batch_size=8)
        await batcher.start()
        with pytest.raises(InferenceError, match="expected 3, got 2"):
            await batcher.submit([1, 2, 3])
        assert batcher.healthy
        assert_clean(batcher)
        await batcher.stop()

    run(main())


def test_model_error_fails_only_its_batch() -> None:
    model = FakeModel(fail_on=-1)

    async def main() -> None:
        batcher = make(model, max_batch_size=1, max_wait_ms=1)
        await batcher.start()
        bad, good = await asyncio.gather(batcher.submit([-1]), batcher.submit([5]), return_exceptions=True)
        assert isinstance(bad, InferenceError)
        assert "model failed on a batch of 1: boom" in str(bad)
        assert isinstance(bad.__cause__, ValueError)
        assert good == [10]
        assert batcher.healthy
        assert await batcher.submit([7]) == [14]
        assert_clean(batcher)
        await batcher.stop()

    run(main())


def test_queue_full_rejects_at_once() -> None:
    model = FakeModel()
    model.gate.clear()

    async def main() -> None:
        batcher = make(model, max_batch_size=1, max_wait_ms=0, max_queue_size=4)
        await batcher.start()
        try:
            running = asyncio.create_task(batcher.submit([0]))
            await model.wait_entered()
            queued = asyncio.create_task(batcher.submit([1, 2, 3, 4]))
            await wait_depth(batcher, 4)
            with pytest.raises(QueueFullError, match="queue full"):
                await batcher.submit([5])
            with pytest.raises(QueueFullError, match="can never fit"):
                await batcher.submit(list(range(5)))
            assert batcher.queue_depth == 4
        finally:
            model.gate.set()
        assert await running == [0]
        assert await queued == [2, 4, 6, 8]
        assert 5 not in model.seen
        assert_clean(batcher)
        await batcher.stop()

    run(main())


def test_deadline_exceeded_items_are_not_run() -> None:
    model = FakeModel()
    model.gate.clear()

    async def main() -> None:
        batcher = make(model, max_batch_size=1, max_wait_ms=0)
        await batcher.start()
        try:
            running = asyncio.create_task(batcher.submit([0]))
            await model.wait_entered()
            with pytest.raises(DeadlineExceededError):
                await batcher.submit([1, 2], deadline=time.monotonic() + 0.05)
            with pytest.raises(DeadlineExceededError):
                await batcher.submit([3], deadline=time.monotonic() - 1)
            assert batcher.queue_depth == 0
        finally:
            model.gate.set()
        assert await running == [0]
        assert await batcher.submit([4], deadline=time.monotonic() + 2) == [8]
        assert model.seen == [0, 4]
        assert_clean(batcher)
        await batcher.stop()

    run(main())


def test_cancelled_request_items_are_not_run() -> None:
    model = FakeModel()
    model.gate.clear()

    async def main() -> None:
        batcher = make(model, max_batch_size=2, max_wait_ms=0)
        await batcher.start()
        try:
            running = asyncio.create_task(batcher.submit([0]))
            await model.wait_entered()
            doomed = asyncio.create_task(batcher.submit([1, 2, 3]))
            await wait_depth(batcher, 3)
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            assert batcher.queue_depth == 0
        finally:
            model.gate.set()
        assert await running == [0]
        assert await batcher.submit([4]) == [8]
        assert model.seen == [0, 4]
        assert_clean(batcher)
        await batcher.stop()

    run(main())


def test_loop_death_fails_queued_and_future_requests() -> None:
    async def main() -> None:
        batcher = make(FakeModel(), max_wait_ms=1)
        await batcher.start()
        assert batcher.healthy

        def broken(size: int) -> list[Any]:
            raise RuntimeError("bug in the loop")

        batcher._pop_live = broken  # type: ignore[method-assign]
        with pytest.raises(EngineUnavailableError, match="batch loop died"):
            await asyncio.wait_for(batcher.submit([1, 2]), 2.0)
        assert not batcher.healthy
        with pytest.raises(EngineUnavailableError):
            await asyncio.wait_for(batcher.submit([3]), 2.0)
        assert_clean(batcher)
        await batcher.stop()

    run(main())


def test_observer_sees_batches_and_its_errors_are_swallowed() -> None:
    class Recording(NoopObserver):
        def __init__(self) -> None:
            self.sizes: list[int] = []
            self.waits = 0

        def on_batch(self, model: str, tower: str, size: int, run_seconds: float) -> None:
            assert (model, tower) == ("test", "image") and run_seconds >= 0
            self.sizes.append(size)
            raise RuntimeError("metrics backend down")

        def on_queue_wait(self, model: str, tower: str, seconds: float) -> None:
            self.waits += 1

    async def main() -> None:
        observer = Recording()
        config = BatcherConfig(max_batch_size=4, model="test", tower="image")
        batcher = DynamicBatcher(FakeModel(), config, observer=observer)
        await batcher.start()
        assert await batcher.submit(list(range(6))) == [0, 2, 4, 6, 8, 10]
        assert await batcher.submit([1]) == [2]
        assert observer.sizes == [4, 2, 1]
        assert observer.waits == 7
        assert batcher.healthy
        await batcher.stop()

    run(main())


def test_submit_before_start_is_unavailable() -> None:
    async def main() -> None:
        batcher = make(FakeModel())
        assert not batcher.healthy
        with pytest.raises(EngineUnavailableError):
            await batcher.submit([1])

    run(main())


def test_stop_with_drain_finishes_queued_items() -> None:
    model = FakeModel()
    model.gate.clear()

    async def main() -> None:
        batcher = make(model, max_batch_size=1, max_wait_ms=0)
        await batcher.start()
        try:
            running = asyncio.create_task(batcher.submit([0]))
            await model.wait_entered()
            queued = asyncio.create_task(batcher.submit([1, 2]))
            await wait_depth(batcher, 2)
            stopping = asyncio.create_task(batcher.stop(drain=True))
            await asyncio.sleep(0)
            assert not batcher.healthy
            with pytest.raises(EngineUnavailableError):
                await batcher.submit([3])
        finally:
            model.gate.set()
        assert await running == [0]
        assert await queued == [2, 4]
        await stopping
        await batcher.stop()
        with pytest.raises(EngineUnavailableError):
            await batcher.submit([4])
        assert_clean(batcher)

    run(main())


def test_stop_without_drain_fails_queued_items() -> None:
    model = FakeModel()
    model.gate.clear()

    async def main() -> None:
        batcher = make(model, max_batch_size=1, max_wait_ms=0)
        await batcher.start()
        try:
            running = asyncio.create_task(batcher.submit([0]))
            await model.wait_entered()
            queued = asyncio.create_task(batcher.submit([1, 2]))
            await wait_depth(batcher, 2)
            await batcher.stop(drain=False)
            for task in (running, queued):
                with pytest.raises(EngineUnavailableError, match="stopped"):
                    await task
            await batcher.stop(drain=False)
            assert_clean(batcher)
        finally:
            model.gate.set()
        assert model.seen == [0]

    run(main())
