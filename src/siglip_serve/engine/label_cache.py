"""An LRU cache of raw text embeddings keyed by (model, final text after the template).

A label embedding costs a third to a thirteenth of an image (shared notes §6), and
zero-shot clients send the same label set again and again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch


class LabelCache:
    """Not thread-safe by design: only the event loop touches it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, model: str, text: str) -> torch.Tensor | None:
        key = (model, text)
        embedding = self._entries.get(key)
        if embedding is not None:
            self._entries.move_to_end(key)
        return embedding

    def put_many(self, model: str, items: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.capacity == 0:
            return
        for text, embedding in items:
            self._entries[(model, text)] = embedding
            self._entries.move_to_end((model, text))
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
