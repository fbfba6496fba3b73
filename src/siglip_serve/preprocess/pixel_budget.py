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


class PixelBudget:
    """At most `capacity` pixels reserved at once; `reserve` blocks until its pixels are free.

    A reservation larger than the whole budget is never refused (refusing is the per-image
    limit's job): it waits until the budget is entirely free, then holds all of it, so it
    runs alone. Thread-safe; meant for the worker threads that decode images.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a pixel budget needs a capacity of at least 1, not {capacity}")
        self.capacity = capacity
        self._in_use = 0
        self._peak = 0
        self._waiting: deque[object] = deque()  # one ticket per blocked `reserve`, oldest first
        self._changed = threading.Condition()

    @property
    def in_use(self) -> int:
        """Pixels reserved now (an oversized reservation counts as the whole budget)."""
        with self._changed:
            return self._in_use

    @property
    def peak(self) -> int:
        """The most pixels reserved at the same time so far; never more than `capacity`."""
        with self._changed:
            return self._peak

    @property
    def waiting(self) -> int:
        """Reservations blocked now, waiting for pixels to be released."""
        with self._changed:
            return len(self._waiting)

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        """Hold `pixels` of the budget for the duration of the block (released on any exit)."""
        if pixels < 0:
            raise ValueError(f"cannot reserve a negative number of pixels ({pixels})")
        charge = min(pixels, self.capacity)  # an oversized reservation takes the whole budget
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            try:
                self._changed.wait_for(lambda: self._waiting[0] is ticket and self._in_use + charge <= self.capacity)
            finally:
                # Leave the queue whether we got the pixels or were interrupted, and wake the next in line.
                self._waiting.remove(ticket)
                self._changed.notify_all()
            self._in_use += charge
            self._peak = max(self._peak, self._in_use)
        try:
            yield
        finally:
            with self._changed:
                self._in_use -= charge
                self._changed.notify_all()
