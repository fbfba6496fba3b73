"""Collections: named sets of (id, embedding, metadata) items, searched by cosine similarity.

`CollectionStore` is what the server needs of storage; `LanceCollectionStore` keeps each collection as
one Lance table of an embedded LanceDB database (https://lancedb.github.io/lancedb/basic/) in a
directory or object-store URI, and is the only code that knows LanceDB. A table written by
``siglip-serve embed --out DIR/NAME`` is collection NAME of a store over DIR (storage.layout).

Consistency: every write to a collection (upsert, delete) runs under that collection's lock. Lance
commits each write as a new table version by an atomic manifest write
(https://lancedb.github.io/lance/format.html, "Transactions"), so a search reads a whole version and
never part of a write; the lock serializes this process's writers, because two merge_inserts racing
on one new id could both insert it. Several processes may read one collection (replicas over shared
storage: ``read_consistency_interval=0`` makes each read check for the newest version); one process
writes it. Building an index takes no write lock: Lance commits the index as its own version and
keeps rows added meanwhile searchable, unindexed, by a flat scan (tests/unit/test_collection_store.py).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import siglip_serve
from siglip_serve.config import default
from siglip_serve.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    InvalidCollectionNameError,
    InvalidParameterError,
    ModelMismatchError,
    SiglipServeError,
    shown,
)
from siglip_serve.storage import NewItem, Scalar
from siglip_serve.storage.index import IndexParams, index_config
from siglip_serve.storage.layout import (
    COLLECTION_FORMAT,
    COLLECTION_FORMAT_VERSION,
    THUMBNAIL,
    VECTOR,
    ApiLayout,
    Layout,
    sql_literal,
)

logger = logging.getLogger(__name__)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DELETE_CHUNK = 512  # ids per delete predicate
_ARROW_FLOATS = {"halffloat": "float16", "float": "float32", "double": "float64"}


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    model: str  # the served model name the vectors were made with (embed job: its --model spec)
    spec: str | None  # the checkpoint it was loaded from, when known
    embed_dim: int
    count: int | None  # items (an embed job's failed rows are not items); None: not read (stats=False)
    index: str | None  # the ANN index type, or None: searches are exact (or not read)
    origin: str  # "api" (POST /v1/collections) or "embed" (siglip-serve embed)
    embedding_dtype: str

    @property
    def model_names(self) -> set[str]:
        return {name for name in (self.model, self.spec) if name}


@dataclass(frozen=True)
class Hit:
    id: str
    cosine: float
    metadata: dict[str, Any]
    thumbnail: bytes | None = None  # only when the search asked for thumbnails


class CollectionStore(Protocol):
    def create(self, name: str, *, model: str, spec: str | None, embed_dim: int) -> CollectionInfo: ...
    def list(self) -> list[CollectionInfo]: ...
    def get(self, name: str, *, stats: bool = True) -> CollectionInfo:
        """The collection's description; with `stats`, also its item count and index (which cost reads)."""
    def delete(self, name: str) -> None: ...
    def upsert(self, name: str, items: Sequence[NewItem]) -> list[SiglipServeError | None]:
        """Store the items (an existing id is replaced); per item None, or why it was not stored."""
    def delete_items(self, name: str, ids: Sequence[str]) -> int:
        """Delete items by id; how many there were."""
    def search(self, name: str, vector: np.ndarray, *, top_k: int,
               where: Mapping[str, Scalar] | None = None, thumbnails: bool = False) -> list[Hit]:
        """The `top_k` items nearest `vector` (cosine) among those whose metadata has every entry of `where`;
        with `thumbnails`, each hit carries its stored thumbnail (None where there is none)."""
    def count(self, name: str) -> int: ...
    def build_index(self, name: str) -> CollectionInfo: ...


def check_name(name: str) -> str:
    """Letters, digits, '-', '_', '.', first a letter or digit, at most 128: no separators, no '..'."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise InvalidCollectionNameError(
            f"collection names are 1-128 letters, digits, '-', '_' or '.', starting with a letter or digit; "
            f"got {shown(name)}", param="name")
    return name


class LanceCollectionStore:
    """Collections as Lance tables of the LanceDB database at `uri` (created when missing)."""

    def __init__(self, uri: str, *, ann_index_threshold: int = default("ann_index_threshold"),
                 index: IndexParams | None = None) -> None:
        import lancedb

        if "://" not in uri:
            uri = str(Path(uri).expanduser())
        self.uri = uri
        self.ann_index_threshold = ann_index_threshold
        self.index = index or IndexParams()
        self._db = lancedb.connect(uri, read_consistency_interval=timedelta(0))
        self._guard = threading.Lock()
        self._tables: dict[str, tuple[Any, Layout]] = {}
        self._write_locks: dict[str, threading.Lock] = {}
        self._index_locks: dict[str, threading.Lock] = {}
        self._indexing: dict[str, threading.Thread] = {}

    # --- collections ----------------------------------------------------------------------------

    def create(self, name: str, *, model: str, spec: str | None, embed_dim: int) -> CollectionInfo:
        check_name(name)
        info = {"format": COLLECTION_FORMAT, "format_version": COLLECTION_FORMAT_VERSION,
                "created_by": f"siglip-serve {siglip_serve.__version__} serve", "model": model, "spec": spec,
                "embed_dim": embed_dim, "embedding_dtype": "float32", "normalization": "l2"}
        with self._lock(self._write_locks, name):
            try:
                self._db.create_table(name, schema=ApiLayout.schema(embed_dim, info))
            except ValueError:  # lancedb: "Table 'NAME' already exists"
                raise CollectionExistsError(f"collection {name!r} exists", param="name") from None
        return self.get(name)

    def list(self) -> list[CollectionInfo]:
        found = []
        for name in self._table_names():
            try:
                found.append(self.get(name))
            except CollectionNotFoundError:  # another table in the directory, or deleted meanwhile
                continue
        return found

    def get(self, name: str, *, stats: bool = True) -> CollectionInfo:
        table, layout = self._open(name)
        info = layout.info
        return CollectionInfo(
            name=name, model=str(info.get("model") or info.get("spec")), spec=info.get("spec"), embed_dim=layout.dim,
            count=table.count_rows(layout.items_filter) if stats else None,
            index=self._index_type(table) if stats else None,
            origin=layout.origin, embedding_dtype=_ARROW_FLOATS.get(str(layout.value_type), str(layout.value_type)))

    def count(self, name: str) -> int:
        table, layout = self._open(name)
        return table.count_rows(layout.items_filter)

    def delete(self, name: str) -> None:
        self._open(name)  # only collections are dropped, never another table in the directory
        with self._lock(self._write_locks, name):
            try:
                self._db.drop_table(name)
            except (ValueError, FileNotFoundError):
                raise CollectionNotFoundError(f"collection {name!r} does not exist", param="name") from None
            finally:
                with self._guard:
                    self._tables.pop(name, None)

    # --- items ----------------------------------------------------------------------------------

    def upsert(self, name: str, items: Sequence[NewItem]) -> list[SiglipServeError | None]:
        table, layout = self._open(name)
        seen: set[str] = set()
        for index, item in enumerate(items):
            if item.id in seen:
                raise InvalidParameterError(f"id {shown(item.id)} appears twice", param=f"items[{index}].id")
            seen.add(item.id)
            if np.shape(item.embedding) != (layout.dim,):
                raise ModelMismatchError(f"collection {name!r} holds {layout.dim}-dimensional embeddings, "
                                         f"not {np.shape(item.embedding)}", param=f"items[{index}]")
        rows, errors = layout.rows(items)
        if rows.num_rows:
            with self._lock(self._write_locks, name):
                table, _ = self._open(name)  # again under the lock: deleted meanwhile is a 404, not a write
                table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(rows)
            self._index_if_due(name, table)
        return errors

    def delete_items(self, name: str, ids: Sequence[str]) -> int:
        deleted = 0
        with self._lock(self._write_locks, name):
            table, _ = self._open(name)
            for start in range(0, len(ids), _DELETE_CHUNK):
                chunk = dict.fromkeys(ids[start : start + _DELETE_CHUNK])
                where = f"id IN ({', '.join(sql_literal(i, param='ids') for i in chunk)})"
                present = table.count_rows(where)
                if present:
                    table.delete(where)
                    deleted += present
        return deleted

    def search(self, name: str, vector: np.ndarray, *, top_k: int,
               where: Mapping[str, Scalar] | None = None, thumbnails: bool = False) -> list[Hit]:
        table, layout = self._open(name)
        query_vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query_vector.shape != (layout.dim,):
            raise ModelMismatchError(f"collection {name!r} holds {layout.dim}-dimensional embeddings, "
                                     f"not {query_vector.shape[0]}", param="query")
        predicate = layout.where(where)
        columns = [*layout.columns(), *([THUMBNAIL] if thumbnails and layout.has_thumbnails else [])]
        query = (table.search(query_vector, vector_column_name=VECTOR).distance_type("cosine")
                 .select([*columns, VECTOR, "_distance"]).limit(top_k)
                 # Ignored by a flat scan; with an index: partitions probed, the graph walk's breadth, and
                 # candidates re-ranked by their exact distance (storage.index).
                 .nprobes(self.index.nprobes).ef(self.index.ef).refine_factor(self.index.refine_factor))
        if predicate:
            query = query.where(predicate, prefilter=True)
        result = query.to_arrow()
        # The exact cosine from the stored vectors (normalized again: float16 tables, rounding), not `_distance`.
        vectors = result.column(VECTOR).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = vectors.astype(np.float32).reshape(result.num_rows, layout.dim)
        norms = np.linalg.norm(vectors, axis=1) * max(float(np.linalg.norm(query_vector)), 1e-12)
        cosines = (vectors @ query_vector) / np.maximum(norms, 1e-12)
        rows = result.select(columns).to_pylist()
        hits = [Hit(id=row["id"], cosine=float(cosine), metadata=layout.metadata_of(row), thumbnail=row.get(THUMBNAIL))
                for row, cosine in zip(rows, cosines, strict=True)]
        return sorted(hits, key=lambda hit: (-hit.cosine, hit.id))

    # --- the ANN index --------------------------------------------------------------------------

    def build_index(self, name: str) -> CollectionInfo:
        """Build (or rebuild) the collection's ANN index now; see `storage.index` for its parameters."""
        table, layout = self._open(name)
        with self._lock(self._index_locks, name):  # one build per collection; writers go on meanwhile
            config = index_config(self.index, rows=table.count_rows(layout.items_filter))
            table.create_index(VECTOR, config=config, replace=True)
            if isinstance(layout, ApiLayout):  # serves the array_has_all prefilter of metadata filters
                from lancedb.index import LabelList

                table.create_index("tags", config=LabelList(), replace=True)
        return self.get(name)

    def wait_for_indexing(self, timeout: float | None = None) -> None:
        """Wait for background index builds (tests; shutdown)."""
        with self._guard:
            threads = list(self._indexing.values())
        for thread in threads:
            thread.join(timeout)

    def _index_if_due(self, name: str, table: Any) -> None:
        """Past `ann_index_threshold` items, build the index in the background; rebuild it once the rows
        written since (searched by a flat scan next to the index) reach `IndexParams.stale_fraction`."""
        if not self.ann_index_threshold:
            return
        stats = self._index_stats(table)
        if stats is None:
            due = table.count_rows() >= self.ann_index_threshold
        else:
            due = stats.num_unindexed_rows >= self.index.stale_fraction * max(stats.num_indexed_rows, 1)
        if not due:
            return
        with self._guard:
            if name in self._indexing and self._indexing[name].is_alive():
                return
            thread = threading.Thread(target=self._build_logged, args=(name,), daemon=True,
                                      name=f"siglip-index-{name}")
            self._indexing[name] = thread
        thread.start()

    def _build_logged(self, name: str) -> None:
        try:
            info = self.build_index(name)
            logger.info("built the %s index of collection %s (%d items)", info.index, name, info.count)
        except Exception:  # a failed build leaves the previous version; searches stay exact or use the old index
            logger.exception("building the index of collection %s failed", name)

    def _index_stats(self, table: Any) -> Any:
        for index in table.list_indices():
            if VECTOR in index.columns:
                return table.index_stats(index.name)
        return None

    def _index_type(self, table: Any) -> str | None:
        stats = self._index_stats(table)
        return None if stats is None else str(stats.index_type)

    # --- plumbing -------------------------------------------------------------------------------

    def _open(self, name: str) -> tuple[Any, Layout]:
        check_name(name)
        with self._guard:
            cached = self._tables.get(name)
        if cached is not None:
            return cached
        try:
            table = self._db.open_table(name)
        except (ValueError, FileNotFoundError):  # lancedb: "Table 'NAME' was not found"
            raise CollectionNotFoundError(f"collection {name!r} does not exist", param="name") from None
        layout = Layout.of(table.schema)
        if layout is None:
            raise CollectionNotFoundError(f"table {name!r} in the data directory is not a siglip-serve collection",
                                          param="name")
        with self._guard:
            return self._tables.setdefault(name, (table, layout))

    def _table_names(self) -> Iterator[str]:
        token = None
        while True:
            page = self._db.list_tables(page_token=token)
            yield from page.tables
            token = page.page_token
            if not token:
                return

    def _lock(self, locks: dict[str, threading.Lock], name: str) -> threading.Lock:
        with self._guard:
            return locks.setdefault(name, threading.Lock())


__all__ = ["CollectionInfo", "CollectionStore", "Hit", "LanceCollectionStore", "NewItem", "check_name"]
