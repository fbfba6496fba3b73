"""Admission before work: a request reserves its items as a whole, or is refused at once.

As text-embeddings-inference does with its permits (`core/src/infer.rs`, `try_acquire_many`):
capacity is taken before any fetch, decode or tokenization, so overload is answered with 429 in
microseconds instead of after seconds of work, and a 1,000-label request is never refused half way.
The batcher's own queue bound stays as a backstop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from siglip_serve.errors import QueueFullError


class Admission:
    """Items admitted at once for one model. Event-loop only: taking and returning never wait."""

    def __init__(self, capacity: int, *, name: str, on_change: Callable[[int], object] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"admission capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.name = name
        self.in_use = 0
        self._on_change = on_change or (lambda in_use: None)

    @contextmanager
    def reserve(self, items: int) -> Iterator[None]:
        """Hold `items` permits for the block, or raise QueueFullError now.

        A request larger than the whole capacity takes all of it, so it runs when the model is idle
        instead of never.
        """
        permits = min(max(items, 0), self.capacity)
        if self.in_use + permits > self.capacity:
            raise QueueFullError(f"{self.name} is at capacity ({self.in_use} of {self.capacity} items admitted); "
                                 "retry later")
        self.in_use += permits
        self._on_change(self.in_use)
        try:
            yield
        finally:
            self.in_use -= permits
            self._on_change(self.in_use)
