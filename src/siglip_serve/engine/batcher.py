"""Dynamic batching: group items of concurrent requests into one model call.

The design follows huggingface text-embeddings-inference (a bounded queue that a
single loop drains into batches of at most ``max_batch_size``) and LitServe's
``max_batch_size`` / ``batch_timeout`` pair. The model runs on one dedicated thread
(a `ModelWorker`) so the event loop never blocks on torch, and batches run one at a
time. Batchers of one device share that worker, so that their batches take turns
instead of competing for the same cores.

A batch is formed when the worker is free, from everything queued by then: items that
arrive while the device is busy join the next batch ("natural" batching, as in TEI),
and an idle device starts at once. ``max_wait_ms`` adds a wait for a fuller batch
before a batcher asks for its turn; it trades latency for batch size and is 0 by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from siglip_serve.config import default
from siglip_serve.errors import (
    DeadlineExceededError,
    EngineUnavailableError,
    InferenceError,
    QueueFullError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatcherConfig:
    """Limits of one batcher, and whose it is: the model and tower label messages and metrics."""

    model: str
    tower: str  # "image" or "text"
    max_batch_size: int = default("max_batch_size")
    max_queue_size: int = default("max_queue_size")
    max_wait_ms: float = default("max_wait_ms")

    @property
    def name(self) -> str:
        return f"{self.model}/{self.tower}"


class BatchObserver(Protocol):
    """What a batcher reports (metrics). A hook that raises is logged and otherwise ignored."""

    def on_batch(self, model: str, tower: str, size: int, run_seconds: float) -> None: ...
    def on_queue_wait(self, model: str, tower: str, seconds: float) -> None: ...
    def on_queue_depth(self, model: str, tower: str, depth: int) -> None: ...


class NoopObserver:
    """Records nothing."""

    def on_batch(self, model: str, tower: str, size: int, run_seconds: float) -> None:
        pass

    def on_queue_wait(self, model: str, tower: str, seconds: float) -> None:
        pass

    def on_queue_depth(self, model: str, tower: str, depth: int) -> None:
        pass


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    deadline: float | None
    enqueued_at: float


class ModelWorker:
    """The single thread that runs model calls for one device, and the turn to use it.

    Batchers sharing a worker take turns in arrival order (asyncio.Lock is FIFO); a batcher
    forms its batch only once it holds the turn, so the batch holds everything queued while
    the others ran.
    """

    def __init__(self, name: str, *, initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = ()) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=initializer,
                                           initargs=initargs)
        self.turn = asyncio.Lock()

    def shutdown(self) -> None:
        # A batch cut off by stop(drain=False) keeps the thread until it returns; don't wait for it.
        self.executor.shutdown(wait=False, cancel_futures=True)


class DynamicBatcher(Generic[T, R]):
    """Runs ``run_batch`` on batches formed from the items of concurrent ``submit`` calls.

    ``run_batch`` must return one result per input, in order. Call ``start()`` from the
    event loop that will call ``submit()``, and ``stop()`` before that loop ends.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        config: BatcherConfig,
        *,
        observer: BatchObserver | None = None,
        worker: ModelWorker | None = None,
    ) -> None:
        self._run_batch = run_batch
        # A shared worker serializes several batchers on one device (the caller owns it);
        # without one the batcher makes and owns its own.
        self._shared_worker = worker
        self._config = config
        self._observer: BatchObserver = observer or NoopObserver()
        self._queue: deque[_Pending[T, R]] = deque()
        self._in_flight: list[_Pending[T, R]] = []
        self._wakeup = asyncio.Event()
        self._worker: ModelWorker | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._dead = False

    @property
    def healthy(self) -> bool:
        """True while started, not stopping and the batch loop is alive."""
        return self._task is not None and not self._closing and not self._dead

    @property
    def queue_depth(self) -> int:
        """Items waiting for a batch (not counting the one being run)."""
        return len(self._queue)

    async def start(self) -> None:
        """Start the batch loop and its worker thread. Starting twice is a no-op."""
        if self._closing:
            raise EngineUnavailableError(f"{self._config.name} was stopped and cannot be restarted")
        if self._task is not None:
            return
        self._worker = self._shared_worker or ModelWorker(self._config.name)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self._config.name}-loop")

    async def stop(self, *, drain: bool = True) -> None:
        """Refuse new work; with ``drain`` finish queued items first, else fail them. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        task = self._task
        if task is not None and not task.done():
            if not drain:
                task.cancel()
            await asyncio.wait([task])  # unlike `await task`, never raises the loop's CancelledError
        self._fail_all(lambda: EngineUnavailableError(f"{self._config.name} is stopped"))
        if self._worker is not None and self._shared_worker is None:
            self._worker.shutdown()

    async def submit(self, items: Sequence[T], *, deadline: float | None = None) -> list[R]:
        """Run ``items`` (one request) and return their results in order.

        ``deadline`` is an absolute ``time.monotonic()`` value. Raises QueueFullError when the
        queue cannot take all items, DeadlineExceededError past the deadline, InferenceError
        when the model fails on a batch, EngineUnavailableError when not serving.
        """
        name, limit = self._config.name, self._config.max_queue_size
        if not self.healthy:
            raise EngineUnavailableError(f"{name} is not serving (not started, stopping or failed)")
        if not items:
            return []
        if len(items) > limit:
            raise QueueFullError(f"{name}: a request of {len(items)} items can never fit a queue of {limit}")
        if len(self._queue) + len(items) > limit:
            raise QueueFullError(f"{name}: queue full ({len(self._queue)} of {limit} items waiting)")
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExceededError(f"{name}: deadline passed before the request was queued")
        loop = asyncio.get_running_loop()
        pending = [_Pending(item, loop.create_future(), deadline, now) for item in items]
        self._queue.extend(pending)
        self._wakeup.set()
        self._report(self._observer.on_queue_depth, len(self._queue))
        timeout = None if deadline is None else deadline - now
        gathered = asyncio.gather(*(p.future for p in pending))
        # When its children are cancelled (timeout, client gone) gather stores an outcome nobody
        # reads; retrieve it, or asyncio logs "_GatheringFuture exception was never retrieved".
        gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            return list(await asyncio.wait_for(gathered, timeout))
        except TimeoutError as exc:
            raise DeadlineExceededError(f"{name}: request waited past its deadline") from exc
        finally:
            self._forget(pending)

    def _forget(self, pending: list[_Pending[T, R]]) -> None:
        """Leave nothing of a finished request behind: cancel and unqueue its unfinished items."""
        dropped = False
        for p in pending:
            if not p.future.done():
                p.future.cancel()
            if p.future.cancelled():
                dropped = True
            else:
                p.future.exception()  # mark as retrieved: gather re-raises only the first error
        if dropped:
            live = [p for p in self._queue if not p.future.cancelled()]
            self._queue.clear()
            self._queue.extend(live)
            self._report(self._observer.on_queue_depth, len(self._queue))

    async def _run(self) -> None:
        assert self._worker is not None
        try:
            while await self._wait_for_work():
                await self._wait_for_company()
                # Waiting for company holds no turn: a lone item must not keep other batchers off the device.
                async with self._worker.turn:
                    batch = self._pop_live(self._config.max_batch_size)
                    if batch:
                        await self._run_one(batch)
        except Exception as exc:
            # A bug in the loop: fail fast everywhere rather than let requests hang.
            self._dead = True
            logger.exception("%s: batch loop died", self._config.name)
            message = f"{self._config.name}: batch loop died: {exc!r}"
            self._fail_all(lambda: EngineUnavailableError(message), cause=exc)

    async def _wait_for_work(self) -> bool:
        """Wait until something is queued; False when stopping and idle."""
        while not self._queue:
            if self._closing:
                return False
            self._wakeup.clear()
            await self._wakeup.wait()
        return True

    async def _wait_for_company(self) -> None:
        """Up to max_wait_ms for a full batch (no wait by default)."""
        cfg = self._config
        until = time.monotonic() + cfg.max_wait_ms / 1000
        while len(self._queue) < cfg.max_batch_size and not self._closing:
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _pop_live(self, size: int) -> list[_Pending[T, R]]:
        """Pop up to ``size`` items, skipping abandoned ones and failing those past their deadline."""
        now, batch = time.monotonic(), []
        while self._queue and len(batch) < size:
            p = self._queue.popleft()
            if p.future.done():
                continue
            if p.deadline is not None and p.deadline <= now:
                expired = DeadlineExceededError(f"{self._config.name}: deadline passed in the queue")
                p.future.set_exception(expired)
                continue
            batch.append(p)
        self._report(self._observer.on_queue_depth, len(self._queue))
        return batch

    async def _run_one(self, batch: list[_Pending[T, R]]) -> None:
        name, size = self._config.name, len(batch)
        started = time.monotonic()
        for p in batch:
            self._report(self._observer.on_queue_wait, started - p.enqueued_at)
        self._in_flight = batch
        items, loop = [p.item for p in batch], asyncio.get_running_loop()
        try:
            results = list(await loop.run_in_executor(self._worker.executor, self._run_batch, items))
        except Exception as exc:
            logger.warning("%s: model failed on a batch of %d", name, size, exc_info=True)
            failed = f"model failed on a batch of {size}: {exc}"
            self._settle_errors(batch, lambda: InferenceError(failed), exc)
        else:
            if len(results) == size:
                for p, result in zip(batch, results, strict=True):
                    if not p.future.done():
                        p.future.set_result(result)
            else:
                wrong = f"run_batch returned a wrong number of results: expected {size}, got {len(results)}"
                logger.error("%s: %s", name, wrong)
                self._settle_errors(batch, lambda: InferenceError(wrong))
        self._in_flight = []
        self._report(self._observer.on_batch, size, time.monotonic() - started)

    @staticmethod
    def _settle_errors(
        batch: list[_Pending[T, R]], make: Callable[[], Exception], cause: BaseException | None = None
    ) -> None:
        # One exception object per future: a shared one would collect every awaiter's traceback.
        for p in batch:
            if not p.future.done():
                error = make()
                error.__cause__ = cause
                p.future.set_exception(error)

    def _fail_all(self, make: Callable[[], Exception], cause: BaseException | None = None) -> None:
        self._settle_errors([*self._in_flight, *self._queue], make, cause)
        self._queue.clear()
        self._in_flight = []

    def _report(self, hook: Callable[..., None], *args: float) -> None:
        try:
            hook(self._config.model, self._config.tower, *args)
        except Exception:
            logger.warning("%s: observer hook %s failed", self._config.name, hook.__name__, exc_info=True)
