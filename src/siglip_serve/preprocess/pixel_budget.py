"""A budget of pixels being decoded at once, shared by the threads that decode images.

The per-image limit (`max_image_pixels`) refuses one image that is too large; it does not
bound several images decoded at the same time. Four 8000x8000 PNGs of 62 KB each are
legal one by one, yet decoded together they hold about 4 x 64 MP x 3 bytes of RGB plus
the copies made on the way (bench/memory_bounds.py). The budget makes a decode reserve
its pixels first and wait while others hold the rest, so decode memory stays near
``capacity`` x (bytes per pixel) whatever the number of decode threads or requests.

Waiters are served in arrival order: a large image waiting for room is not overtaken by
a stream of small ones (which could otherwise starve it forever).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class DecodeCancelled(Exception):
    """The request that was waiting for these pixels was cancelled: give up instead of decoding."""


class _Ledger:
    """The state every handle on one budget shares."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0
        self.waiting: deque[object] = deque()  # one ticket per blocked `reserve`, oldest first
        self.changed = threading.Condition()


class PixelBudget:
    """At most `capacity` pixels reserved at once; `reserve` blocks until its pixels are free.

    A reservation larger than the whole budget is never refused (refusing is the per-image
    limit's job): it waits until the budget is entirely free, then holds all of it, so it
    runs alone. Thread-safe; meant for the worker threads that decode images.

    `for_request()` gives a handle on the same budget that a request can `cancel()`: a decode
    waiting through it then stops waiting and raises `DecodeCancelled`, so a client that went
    away does not keep a decode thread blocked and then make it decode an image nobody wants.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a pixel budget needs a capacity of at least 1, not {capacity}")
        self._ledger = _Ledger(capacity)
        self._cancelled: threading.Event | None = None

    @property
    def capacity(self) -> int:
        return self._ledger.capacity

    @property
    def in_use(self) -> int:
        """Pixels reserved now (an oversized reservation counts as the whole budget)."""
        with self._ledger.changed:
            return self._ledger.in_use

    @property
    def peak(self) -> int:
        """The most pixels reserved at the same time so far; never more than `capacity`."""
        with self._ledger.changed:
            return self._ledger.peak

    @property
    def waiting(self) -> int:
        """Reservations blocked now, waiting for pixels to be released."""
        with self._ledger.changed:
            return len(self._ledger.waiting)

    def for_request(self) -> PixelBudget:
        """A handle on this budget (same pixels, same queue) that `cancel()` applies to."""
        handle = PixelBudget.__new__(PixelBudget)
        handle._ledger, handle._cancelled = self._ledger, threading.Event()
        return handle

    def cancel(self) -> None:
        """End the waits of this handle's reservations (now and later) with `DecodeCancelled`;
        reservations already granted keep their pixels until their block exits."""
        if self._cancelled is None:
            raise TypeError("only a handle from for_request() can be cancelled, not the shared budget")
        ledger = self._ledger
        with ledger.changed:
            self._cancelled.set()
            ledger.changed.notify_all()

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        """Hold `pixels` of the budget for the duration of the block (released on any exit)."""
        if pixels < 0:
            raise ValueError(f"cannot reserve a negative number of pixels ({pixels})")
        ledger, cancelled = self._ledger, self._cancelled
        charge = min(pixels, ledger.capacity)  # an oversized reservation takes the whole budget
        ticket = object()
        with ledger.changed:
            ledger.waiting.append(ticket)
            try:
                ledger.changed.wait_for(lambda: (cancelled is not None and cancelled.is_set())
                                        or (ledger.waiting[0] is ticket and ledger.in_use + charge <= ledger.capacity))
            finally:
                # Leave the queue whether we got the pixels, were cancelled or interrupted; wake the next in line.
                ledger.waiting.remove(ticket)
                ledger.changed.notify_all()
            if cancelled is not None and cancelled.is_set():
                raise DecodeCancelled("the request was cancelled while its image waited for decode memory")
            ledger.in_use += charge
            ledger.peak = max(ledger.peak, ledger.in_use)
        try:
            yield
        finally:
            with ledger.changed:
                ledger.in_use -= charge
                ledger.changed.notify_all()
