"""`PixelBudget`: how many pixels are decoded at once, across threads.

No test depends on timing: threads are ordered with events, and a thread is known to be
blocked when the budget itself reports it waiting. The timeouts below only turn a bug that
would hang into a failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from siglip_serve.preprocess.pixel_budget import DecodeCancelled, PixelBudget

HANG_S = 30.0  # never reached unless the code under test is broken


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached: the budget is stuck")
        time.sleep(0.001)


class Holder:
    """A thread that reserves `pixels`, records when it got them, and holds them until released."""

    def __init__(self, budget: PixelBudget, pixels: int, log: list[str], name: str) -> None:
        self.acquired = threading.Event()
        self.release = threading.Event()
        self.in_use_when_acquired = -1
        self._thread = threading.Thread(target=self._run, args=(budget, pixels, log, name), daemon=True)
        self._thread.start()

    def _run(self, budget: PixelBudget, pixels: int, log: list[str], name: str) -> None:
        with budget.reserve(pixels):
            self.in_use_when_acquired = budget.in_use
            log.append(name)
            self.acquired.set()
            assert self.release.wait(HANG_S)

    def finish(self) -> None:
        self.release.set()
        self._thread.join(HANG_S)
        assert not self._thread.is_alive()


def test_capacity_and_pixels_are_validated() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PixelBudget(0)
    with pytest.raises(ValueError, match="negative"), PixelBudget(10).reserve(-1):
        pass


def test_reservations_that_fit_together_do_not_wait() -> None:
    budget = PixelBudget(100)
    with budget.reserve(60), budget.reserve(40), budget.reserve(0):
        assert budget.in_use == 100
    assert budget.in_use == 0
    assert budget.peak == 100


def test_a_reservation_waits_for_its_pixels() -> None:
    budget = PixelBudget(100)
    log: list[str] = []
    first = Holder(budget, 60, log, "first")
    assert first.acquired.wait(HANG_S)
    second = Holder(budget, 60, log, "second")
    wait_until(lambda: budget.waiting == 1)
    assert log == ["first"] and budget.in_use == 60
    first.finish()
    assert second.acquired.wait(HANG_S)
    assert second.in_use_when_acquired == 60
    second.finish()
    assert budget.in_use == 0 and budget.peak == 60


def test_an_oversized_reservation_waits_for_an_empty_budget_and_runs_alone() -> None:
    """Larger than the whole budget: not refused, but admitted only when nothing else holds pixels,
    and while it runs, even a reservation that would fit waits (first come, first served)."""
    budget = PixelBudget(100)
    log: list[str] = []
    small = Holder(budget, 10, log, "small")
    assert small.acquired.wait(HANG_S)
    huge = Holder(budget, 10_000, log, "huge")
    wait_until(lambda: budget.waiting == 1)
    late = Holder(budget, 10, log, "late")  # would fit next to "small", but "huge" came first
    wait_until(lambda: budget.waiting == 2)
    assert log == ["small"]

    small.finish()
    assert huge.acquired.wait(HANG_S)
    assert huge.in_use_when_acquired == 100  # the whole budget, and no more
    assert budget.waiting == 1 and log == ["small", "huge"]  # "late" still waits
    huge.finish()
    assert late.acquired.wait(HANG_S)
    late.finish()
    assert log == ["small", "huge", "late"]
    assert budget.in_use == 0 and budget.peak == 100


def test_an_oversized_reservation_on_an_idle_budget_runs_at_once() -> None:
    budget = PixelBudget(100)
    with budget.reserve(10**12):
        assert budget.in_use == 100
    assert budget.in_use == 0


def test_pixels_are_released_after_an_exception() -> None:
    budget = PixelBudget(100)
    with pytest.raises(RuntimeError, match="decode failed"), budget.reserve(70):
        raise RuntimeError("decode failed")
    assert budget.in_use == 0
    with budget.reserve(100):  # the whole budget is free again: this would wait forever otherwise
        assert budget.in_use == 100


def test_many_threads_never_exceed_the_budget() -> None:
    budget = PixelBudget(100)
    sizes = [30, 50, 70, 20, 100, 10, 40, 60, 250, 5] * 4
    seen: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(len(sizes), timeout=HANG_S)

    def work(pixels: int) -> None:
        start.wait()
        with budget.reserve(pixels):
            with lock:
                seen.append(budget.in_use)
            time.sleep(0)  # let other threads run while the pixels are held

    threads = [threading.Thread(target=work, args=(pixels,), daemon=True) for pixels in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_S)
    assert len(seen) == len(sizes)
    assert max(seen) <= 100
    assert budget.peak <= 100 and budget.in_use == 0 and budget.waiting == 0


def test_a_cancelled_handle_stops_waiting_and_the_queue_moves_on() -> None:
    """A request's handle shares the budget's pixels and queue; cancelling it ends its wait with
    DecodeCancelled (and any later one at once) without touching other reservations."""
    budget = PixelBudget(100)
    log: list[str] = []
    holder = Holder(budget, 100, log, "holder")
    assert holder.acquired.wait(HANG_S)
    request = budget.for_request()
    outcome: list[str] = []

    def wait_through_the_handle() -> None:
        try:
            with request.reserve(50):
                outcome.append("decoded")
        except DecodeCancelled:
            outcome.append("cancelled")

    waiter = threading.Thread(target=wait_through_the_handle, daemon=True)
    waiter.start()
    wait_until(lambda: budget.waiting == 1)
    behind = Holder(budget, 100, log, "behind")  # queued after the handle's reservation
    wait_until(lambda: budget.waiting == 2)
    request.cancel()
    waiter.join(HANG_S)
    assert outcome == ["cancelled"] and budget.waiting == 1 and budget.in_use == 100
    with pytest.raises(DecodeCancelled), request.reserve(0):
        pass
    holder.finish()
    assert behind.acquired.wait(HANG_S) and log == ["holder", "behind"]
    behind.finish()
    assert budget.in_use == 0


def test_reservations_through_handles_count_against_the_one_budget() -> None:
    budget = PixelBudget(100)
    first, second = budget.for_request(), budget.for_request()
    with first.reserve(60), second.reserve(40):
        assert budget.in_use == first.in_use == 100 and first.capacity == 100
    assert budget.peak == 100
    with pytest.raises(TypeError, match="for_request"):
        budget.cancel()
