"""Collections under several replicas: every replica reads the shared Lance data directory itself, and
sends every write to one `CollectionWriter` deployment (a single replica).

Why a single writer rather than every replica writing: `LanceCollectionStore` serializes the writes of
one process with a lock per collection, because two `merge_insert`s racing on one new id could both
insert it (storage/collections.py). Lance's optimistic concurrency makes concurrent commits of
different processes safe for the format (a conflicting commit is retried or rejected,
https://lancedb.github.io/lance/format.html "Conflict resolution"), but not this upsert's meaning. One
writer process keeps the store's guarantee (no id lost or duplicated) for any number of replicas, and
it is also the one place that builds ANN indexes. Writes are small next to the embedding work, which
stays on the replicas: they embed, the writer only commits rows.

Reads never go through the writer: a replica's store opens the database with
`read_consistency_interval=0`, so a search right after a write (answered by the writer) sees it.
"""

from __future__ import annotations

from typing import Any

from siglip_serve.errors import SiglipServeError
from siglip_serve.storage.collections import CollectionStore, LanceCollectionStore

WRITE_METHODS = frozenset({"create", "delete", "upsert", "delete_items", "build_index"})


class CollectionWriter:
    """The Serve deployment that owns every write to the collections of `data_dir` (run it as one replica)."""

    def __init__(self, data_dir: str, ann_index_threshold: int) -> None:
        self.store = LanceCollectionStore(data_dir, ann_index_threshold=ann_index_threshold)

    def write(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if method not in WRITE_METHODS:
            raise ValueError(f"{method!r} is not a write of the collection store")
        return getattr(self.store, method)(*args, **kwargs)


class RoutedCollectionStore:
    """A `CollectionStore` for one replica: the writes (`WRITE_METHODS`) go through `writer` (a Serve handle
    of `CollectionWriter`), everything else is read from the replica's own `local` store, with the same
    signatures (so the store's reads and writes change in one place, storage/collections.py). Called from
    worker threads (api/collections.py runs the store in `asyncio.to_thread`), where waiting on a handle's
    result is allowed."""

    def __init__(self, local: CollectionStore, writer: Any) -> None:
        self.local = local
        self.writer = writer

    def __getattr__(self, name: str) -> Any:
        if name in WRITE_METHODS:
            return lambda *args, **kwargs: self._write(name, *args, **kwargs)
        return getattr(self.local, name)

    def _write(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from ray.exceptions import RayTaskError

        args = tuple(list(arg) if isinstance(arg, (list, tuple)) else arg for arg in args)
        try:
            return self.writer.write.remote(method, args, kwargs).result()
        except RayTaskError as exc:
            # The writer's domain error (404, 409, ...) reaches the client as itself, not as a 500.
            cause = getattr(exc, "cause", None)
            if isinstance(cause, SiglipServeError):
                raise cause from None
            raise
