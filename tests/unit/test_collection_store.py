"""The collection store against real LanceDB tables in temporary directories (storage.collections)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from siglip_serve.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    InvalidCollectionNameError,
    InvalidParameterError,
    ModelMismatchError,
)
from siglip_serve.jobs.writer import FORMAT_NAME, LanceOutput, output_schema
from siglip_serve.storage import NewItem
from siglip_serve.storage.collections import LanceCollectionStore
from siglip_serve.storage.index import IndexParams

DIM = 16


def unit(k: int, dim: int = DIM) -> np.ndarray:
    vector = np.zeros(dim, dtype=np.float32)
    vector[k] = 1.0
    return vector


def direction(*weights: float) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[: len(weights)] = weights
    return vector / np.linalg.norm(vector)


@pytest.fixture
def store(tmp_path: Path) -> LanceCollectionStore:
    return LanceCollectionStore(str(tmp_path / "data"), ann_index_threshold=0)


def make(store: LanceCollectionStore, name: str = "photos") -> None:
    store.create(name, model="fake", spec="/ckpt/fake", embed_dim=DIM)


def ids_in(store: LanceCollectionStore, name: str) -> list[str]:
    """Every item id, by an exact search (flat: these collections have no index)."""
    return [hit.id for hit in store.search(name, unit(0), top_k=100_000)]


def stored_ids(data: Path, name: str) -> list[str]:
    """Every row's id, read by a plain scan of the table, not through the store."""
    import lancedb

    table = lancedb.connect(str(data)).open_table(name)
    return table.search().select(["id"]).limit(None).to_arrow().column("id").to_pylist()


def test_create_list_get_delete(store: LanceCollectionStore) -> None:
    info = store.create("photos", model="fake", spec="/ckpt/fake", embed_dim=DIM)
    assert (info.name, info.model, info.spec, info.embed_dim, info.count, info.index, info.origin) == (
        "photos", "fake", "/ckpt/fake", DIM, 0, None, "api")
    make(store, "other.v2_b-1")
    assert sorted(c.name for c in store.list()) == ["other.v2_b-1", "photos"]
    with pytest.raises(CollectionExistsError):
        make(store)
    store.delete("photos")
    assert [c.name for c in store.list()] == ["other.v2_b-1"]
    for call in (lambda: store.get("photos"), lambda: store.delete("photos"), lambda: store.count("photos"),
                 lambda: store.search("photos", unit(0), top_k=1)):
        with pytest.raises(CollectionNotFoundError):
            call()


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "-x", "a..b", "a b", "é",
                                  "x" * 129, "a\x00", "/abs"])
def test_names_are_validated(store: LanceCollectionStore, name: str) -> None:
    with pytest.raises(InvalidCollectionNameError):
        store.create(name, model="fake", spec=None, embed_dim=DIM)
    with pytest.raises(InvalidCollectionNameError):
        store.get(name)
    assert store.list() == []


def test_upsert_replaces_by_id_and_delete_items_counts(store: LanceCollectionStore) -> None:
    make(store)
    assert store.upsert("photos", [NewItem("a", unit(0), {"v": 1}), NewItem("b", unit(1), {})]) == [None, None]
    assert store.upsert("photos", [NewItem("a", unit(2), {"v": 2})]) == [None]
    assert store.count("photos") == 2
    best = store.search("photos", unit(2), top_k=1)[0]
    assert (best.id, best.cosine, best.metadata) == ("a", 1.0, {"v": 2})
    with pytest.raises(InvalidParameterError, match="appears twice"):
        store.upsert("photos", [NewItem("c", unit(0), {}), NewItem("c", unit(1), {})])
    assert store.count("photos") == 2
    assert store.delete_items("photos", ["a", "missing", "a"]) == 1
    assert ids_in(store, "photos") == ["b"]


def test_search_is_sorted_by_exact_cosine_with_top_k(store: LanceCollectionStore) -> None:
    make(store)
    weights = {"far": (0.0, 1.0), "near": (1.0, 0.1), "mid": (1.0, 1.0), "opposite": (-1.0, 0.0)}
    store.upsert("photos", [NewItem(k, direction(*w), {"k": k}) for k, w in weights.items()])
    hits = store.search("photos", unit(0), top_k=3)
    assert [h.id for h in hits] == ["near", "mid", "far"]
    for hit in hits:
        expected = float(direction(*weights[hit.id]) @ unit(0))
        assert abs(hit.cosine - expected) < 1e-6 and hit.metadata == {"k": hit.id}
    assert [h.id for h in store.search("photos", -unit(0), top_k=1)] == ["opposite"]


def test_filter_by_metadata_equality(store: LanceCollectionStore) -> None:
    make(store)
    store.upsert("photos", [
        NewItem("cat1", unit(0), {"kind": "cat", "n": 1, "ok": True, "note": None, "deep": {"kind": "dog"}}),
        NewItem("cat2", unit(1), {"kind": "cat", "n": 2.0, "ok": False}),
        NewItem("dog", unit(2), {"kind": "dog", "n": 1.5, "quote": "it's"}),
    ])

    def found(**where: object) -> list[str]:
        return sorted(h.id for h in store.search("photos", unit(0), top_k=10, where=where))

    assert found(kind="cat") == ["cat1", "cat2"]
    assert found(kind="cat", n=2) == ["cat2"]  # 2 and 2.0 are one JSON number
    assert found(n=1.0) == ["cat1"] and found(n=1.5) == ["dog"]
    assert found(ok=True) == ["cat1"] and found(ok=False) == ["cat2"]
    assert found(n=True) == []  # true is not 1
    assert found(note=None) == ["cat1"]
    assert found(quote="it's") == ["dog"]
    assert found(kind="x' OR '1'='1") == []
    assert found(deep="dog") == []  # only top-level scalars are filterable
    with pytest.raises(InvalidParameterError):
        found(kind=["cat"])


def test_vectors_of_another_size_are_refused(store: LanceCollectionStore) -> None:
    make(store)
    with pytest.raises(ModelMismatchError):
        store.upsert("photos", [NewItem("a", unit(0, DIM * 2), {})])
    with pytest.raises(ModelMismatchError):
        store.search("photos", unit(0, DIM * 2), top_k=1)
    assert store.count("photos") == 0


def test_a_new_store_reads_what_another_wrote(tmp_path: Path) -> None:
    first = LanceCollectionStore(str(tmp_path / "data"), ann_index_threshold=0)
    make(first)
    first.upsert("photos", [NewItem(f"i{k}", unit(k), {"k": k}) for k in range(5)])
    second = LanceCollectionStore(str(tmp_path / "data"), ann_index_threshold=0)
    assert second.get("photos") == first.get("photos")
    assert [(h.id, h.metadata) for h in second.search("photos", unit(3), top_k=1)] == [("i3", {"k": 3})]
    second.upsert("photos", [NewItem("new", unit(7), {})])  # and the first sees the newer version at once
    assert first.count("photos") == 6 and first.search("photos", unit(7), top_k=1)[0].id == "new"


def test_other_tables_in_the_directory_are_not_collections(tmp_path: Path) -> None:
    import lancedb

    lancedb.connect(str(tmp_path / "data")).create_table("plain", schema=pa.schema([pa.field("x", pa.int32())]))
    store = LanceCollectionStore(str(tmp_path / "data"), ann_index_threshold=0)
    assert store.list() == []
    for call in (lambda: store.get("plain"), lambda: store.delete("plain")):
        with pytest.raises(CollectionNotFoundError, match="not a siglip-serve collection"):
            call()
    assert "plain" in lancedb.connect(str(tmp_path / "data")).list_tables().tables


def embed_job_table(data: Path, name: str, *, half: bool = False) -> None:
    """A dataset as `siglip-serve embed --out DATA/NAME` writes it (jobs.writer), with one failed row."""
    meta = pa.schema([pa.field("caption", pa.string()), pa.field("year", pa.int64())])
    info = {"format": FORMAT_NAME, "model": "/ckpt/fake", "spec": "/ckpt/fake", "embed_dim": DIM,
            "embedding_dtype": "float16" if half else "float32", "normalization": "l2"}
    schema = output_schema(embed_dim=DIM, half=half, text=False, labels=False, metadata=meta, info=info)
    out = LanceOutput(str(data / name))
    out.create(schema)
    vectors = [unit(0).tolist(), None, unit(1).tolist()]
    out.append(pa.table({"id": ["a.jpg", "bad.jpg", "b.jpg"], "source": ["/p/a.jpg", "/p/bad.jpg", "/p/b.jpg"],
                         "width": [4, None, 8], "height": [3, None, 6],
                         "embedding": pa.array(vectors, pa.list_(pa.float32(), DIM)),
                         "error": [None, "cannot identify image file", None],
                         "caption": ["a cat", None, "a dog"], "year": [2020, 2021, 2022]}))


@pytest.mark.parametrize("half", [False, True])
def test_an_embed_job_dataset_is_a_collection(tmp_path: Path, half: bool) -> None:
    embed_job_table(tmp_path / "data", "shop", half=half)
    store = LanceCollectionStore(str(tmp_path / "data"), ann_index_threshold=0)
    info = store.get("shop")
    assert (info.origin, info.model, info.embed_dim, info.count) == ("embed", "/ckpt/fake", DIM, 2)
    assert info.embedding_dtype == ("float16" if half else "float32")
    hits = store.search("shop", unit(1), top_k=10)
    assert [h.id for h in hits] == ["b.jpg", "a.jpg"]  # the failed row is not an item
    assert hits[0].cosine == 1.0
    assert hits[0].metadata == {"source": "/p/b.jpg", "width": 8, "height": 6, "caption": "a dog", "year": 2022}
    assert [h.id for h in store.search("shop", unit(1), top_k=10, where={"year": 2020})] == ["a.jpg"]
    assert [h.id for h in store.search("shop", unit(1), top_k=10, where={"caption": "a dog"})] == ["b.jpg"]
    for bad in ({"missing": 1}, {"year": "2020"}, {"embedding": 1}, {"error": None}):
        with pytest.raises(InvalidParameterError):
            store.search("shop", unit(1), top_k=10, where=bad)
    # Items added through the server use its columns; a key it lacks or a value that does not fit fails that item.
    errors = store.upsert("shop", [NewItem("c.jpg", unit(2), {"caption": "new", "year": 2024}),
                                   NewItem("d.jpg", unit(3), {"colour": "red"}),
                                   NewItem("e.jpg", unit(4), {"year": "last year"}),
                                   NewItem("bad.jpg", unit(5), {})])
    assert errors[0] is None and errors[3] is None
    assert "colour" in errors[1].message and errors[2] is not None
    assert store.count("shop") == 4
    assert store.search("shop", unit(5), top_k=1)[0].id == "bad.jpg"  # the failed row, replaced by a good one


def test_concurrent_writers_and_readers_lose_and_duplicate_nothing(store: LanceCollectionStore) -> None:
    make(store)
    writers, batches, per_batch, shared = 4, 8, 10, 5
    failures: list[BaseException] = []
    done = threading.Event()

    def write(w: int) -> None:
        try:
            for b in range(batches):
                items = [NewItem(f"w{w}-{b}-{i}", unit((w + i) % DIM), {"w": w}) for i in range(per_batch)]
                items += [NewItem(f"shared-{i}", unit(i), {"w": w}) for i in range(shared)]  # every writer
                assert store.upsert("photos", items) == [None] * len(items)
        except BaseException as exc:
            failures.append(exc)

    def read() -> None:
        try:
            while not done.is_set():
                found = ids_in(store, "photos")
                assert len(found) == len(set(found))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    reader = threading.Thread(target=read)
    reader.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    reader.join()
    assert failures == []
    found = stored_ids(Path(store.uri), "photos")
    assert len(found) == len(set(found)) == writers * batches * per_batch + shared == store.count("photos")


def clustered(n: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around `clusters` random centres (cosine ~0.9 to their centre), and the centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)).astype(np.float32) * 0.5 / dim**0.5
    return points / np.linalg.norm(points, axis=1, keepdims=True), centres


def test_the_ann_index_finds_the_exact_nearest_neighbours_on_clustered_data(tmp_path: Path) -> None:
    dim, n = 64, 4000
    store = LanceCollectionStore(str(tmp_path / "data"), ann_index_threshold=n,
                                 index=IndexParams(rows_per_partition=1000))  # 4 partitions, all probed
    store.create("big", model="fake", spec=None, embed_dim=dim)
    points, centres = clustered(n, dim, clusters=40, seed=0)
    for start in range(0, n, 1000):  # the last batch crosses the threshold: the index is built in the background
        store.upsert("big", [NewItem(f"p{i}", points[i], {"i": i}) for i in range(start, start + 1000)])
    store.wait_for_indexing()
    info = store.get("big")
    assert info.index == "IVF_HNSW_SQ" and info.count == n
    queries, _ = clustered(50, dim, clusters=40, seed=1)
    queries = np.concatenate([queries, centres[:10]])
    recalls = []
    for query in queries:
        exact = {f"p{i}" for i in np.argsort(-(points @ query), kind="stable")[:10]}
        hits = store.search("big", query, top_k=10)
        assert hits[0].id in exact and [h.cosine for h in hits] == sorted((h.cosine for h in hits), reverse=True)
        recalls.append(len(exact & {h.id for h in hits}) / 10)
    assert np.mean(recalls) >= 0.95, recalls
    # Items written after the build are found at once (LanceDB scans unindexed rows next to the index).
    store.upsert("big", [NewItem("late", queries[0], {"late": True})])
    assert store.search("big", queries[0], top_k=1)[0].id == "late"
    assert [h.id for h in store.search("big", queries[0], top_k=5, where={"late": True})] == ["late"]


def test_building_an_index_while_writing_loses_nothing(tmp_path: Path) -> None:
    dim, n = 32, 3000
    store = LanceCollectionStore(str(tmp_path / "data"), ann_index_threshold=0,
                                 index=IndexParams(rows_per_partition=300))
    store.create("big", model="fake", spec=None, embed_dim=dim)
    points, _ = clustered(n + 600, dim, clusters=20, seed=2)
    store.upsert("big", [NewItem(f"p{i}", points[i], {}) for i in range(n)])
    builder = threading.Thread(target=store.build_index, args=("big",))
    builder.start()
    for start in range(n, n + 600, 100):  # new items, and old ones replaced, while the index is built
        store.upsert("big", [NewItem(f"p{i}", points[i], {}) for i in range(start, start + 100)]
                     + [NewItem(f"p{i - n}", points[i - n], {"again": True}) for i in range(start, start + 100)])
    builder.join()
    assert store.get("big").index == "IVF_HNSW_SQ"
    found = stored_ids(tmp_path / "data", "big")
    assert len(found) == len(set(found)) == n + 600 == store.count("big")
    assert json.dumps(store.search("big", points[0], top_k=1, where={"again": True})[0].metadata) == '{"again": true}'


def test_thumbnails_are_stored_and_returned_only_when_asked(store: LanceCollectionStore) -> None:
    make(store)
    store.upsert("photos", [NewItem("img", unit(0), {}, thumbnail=b"\xff\xd8jpeg"), NewItem("txt", unit(1), {})])
    asked = {hit.id: hit.thumbnail for hit in store.search("photos", unit(0), top_k=2, thumbnails=True)}
    assert asked == {"img": b"\xff\xd8jpeg", "txt": None}
    assert [hit.thumbnail for hit in store.search("photos", unit(0), top_k=2)] == [None, None]


def test_a_collection_made_before_thumbnails_still_takes_items_and_searches(tmp_path: Path) -> None:
    """Format-1 tables (no thumbnail column) keep working; their hits have no thumbnail."""
    import lancedb

    info = {"format": "siglip-serve-collection", "format_version": 1, "model": "fake", "spec": None,
            "embed_dim": DIM, "embedding_dtype": "float32", "normalization": "l2"}
    schema = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("embedding", pa.list_(pa.float32(), DIM)),
                        pa.field("metadata", pa.string()), pa.field("tags", pa.list_(pa.string()))],
                       metadata={"siglip_serve": json.dumps(info).encode()})
    lancedb.connect(str(tmp_path / "data")).create_table("old", schema=schema)
    store = LanceCollectionStore(str(tmp_path / "data"), ann_index_threshold=0)
    assert store.upsert("old", [NewItem("a", unit(2), {"k": 1}, thumbnail=b"ignored")]) == [None]
    hits = store.search("old", unit(2), top_k=1, thumbnails=True)
    assert [(h.id, h.metadata, h.thumbnail) for h in hits] == [("a", {"k": 1}, None)]
