"""An LRU cache of raw text embeddings, keyed by a hash of (model, final text), bounded in bytes.

A label embedding costs a third to a thirteenth of an image forward (text towers are the smaller
half of every SigLIP, arXiv:2303.15343 Table 1 and the model cards), and zero-shot clients send the
same label set again and again. Keys are 16-byte BLAKE2b digests rather than the texts themselves,
so a long prompt costs 16 bytes here (collisions: about 2^-64 for 2^32 entries, the birthday bound
of a 128-bit hash). Each entry keeps its text's token count, so a fully warm request does no
tokenization at all, usage accounting included.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch

# CPython overhead per entry beyond the embedding's data and the key: the OrderedDict node, the
# bytes key object, the tuple, the tensor object and its storage header (sys.getsizeof, measured).
ENTRY_OVERHEAD_BYTES = 400


@dataclass(frozen=True)
class CachedText:
    embedding: torch.Tensor
    num_tokens: int


def cache_key(model: str, text: str) -> bytes:
    return hashlib.blake2b(f"{model}\0{text}".encode("utf-8", "surrogatepass"), digest_size=16).digest()


def entry_bytes(embedding: torch.Tensor) -> int:
    return embedding.numel() * embedding.element_size() + 16 + ENTRY_OVERHEAD_BYTES


class LabelCache:
    """Not thread-safe by design: only the event loop touches it."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, CachedText] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, model: str, text: str) -> CachedText | None:
        key = cache_key(model, text)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put_many(self, model: str, items: Iterable[tuple[str, CachedText]]) -> None:
        for text, entry in items:
            size = entry_bytes(entry.embedding)
            if size > self.capacity_bytes:
                continue
            key = cache_key(model, text)
            previous = self._entries.pop(key, None)
            if previous is not None:
                self.bytes -= entry_bytes(previous.embedding)
            self._entries[key] = entry
            self.bytes += size
        while self.bytes > self.capacity_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= entry_bytes(evicted.embedding)
