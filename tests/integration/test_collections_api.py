"""Collections over HTTP: in-process over the fake backend (scores known by hand), then through live servers.

With the fake backend an image `fakes.image(k)` and a text with the word "cK" embed to e_k, so a
matching pair scores fakes.MATCH (cosine 1) and any other pair fakes.MISMATCH (cosine 0).
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import fakes
import httpx
import numpy as np
import pytest
from fakes import FakeBackend
from live import HTTP_TIMEOUT_S, assert_close, assert_error, b64, embeddings_of, live_server, png
from PIL import Image

from siglip_serve.api.app import create_app
from siglip_serve.config import Settings
from siglip_serve.engine.engine import Engine
from siglip_serve.storage.collections import LanceCollectionStore

GUARD_S = 60.0
EXACT = 1e-6


def run_app(data: Path, test: Callable[[httpx.AsyncClient, FakeBackend, LanceCollectionStore], Awaitable[Any]],
            *, store: bool = True, **settings: Any) -> Any:
    backend = FakeBackend()
    collections = LanceCollectionStore(str(data), ann_index_threshold=0) if store else None
    engine = Engine({"fake": backend, "other": FakeBackend("other")})
    app = create_app(Settings(model=["fake", "other"], **settings), engine, collections=collections)

    async def main() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=GUARD_S) as c:
                return await test(c, backend, collections)

    return asyncio.run(asyncio.wait_for(main(), GUARD_S))


def results(response: httpx.Response) -> list[tuple[str, float, float]]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    return [(row["id"], row["score"], row["cosine"]) for row in body["data"]]


def test_create_list_get_delete_and_their_errors(tmp_path: Path) -> None:
    async def test(client: httpx.AsyncClient, backend: FakeBackend, store: LanceCollectionStore) -> None:
        created = await client.post("/v1/collections", json={"name": "photos", "model": "fake"})
        assert created.status_code == 201, created.text
        assert created.json() == {"object": "collection", "name": "photos", "model": "fake", "embedding_size": 8,
                                  "count": 0, "index": None, "origin": "api"}
        assert_error(await client.post("/v1/collections", json={"name": "photos", "model": "fake"}), 409,
                     param="name")
        for bad in ("../etc", "a/b", ".x", "x" * 200, ""):
            error = assert_error(await client.post("/v1/collections", json={"name": bad, "model": "fake"}), 400)
            assert error["code"] == "InvalidCollectionNameError"
        assert_error(await client.post("/v1/collections", json={"name": "x", "model": "nope"}), 404, param="model")
        assert_error(await client.post("/v1/collections", json={"name": "x"}), 404, param="model")  # two served
        assert (await client.post("/v1/collections", json={"name": "texts", "model": "other"})).status_code == 201
        listed = (await client.get("/v1/collections")).json()
        assert listed["object"] == "list" and sorted(c["name"] for c in listed["data"]) == ["photos", "texts"]
        assert (await client.get("/v1/collections/texts")).json()["model"] == "other"
        assert_error(await client.get("/v1/collections/missing"), 404, param="name")
        assert_error(await client.get("/v1/collections/..%2Fetc"), (400, 404))
        deleted = await client.delete("/v1/collections/texts")
        assert deleted.json() == {"object": "collection.deleted", "name": "texts", "deleted": True}
        assert_error(await client.delete("/v1/collections/texts"), 404)
        assert [c["name"] for c in (await client.get("/v1/collections")).json()["data"]] == ["photos"]

    run_app(tmp_path / "data", test)


def test_ingest_images_and_texts_then_search_by_text_and_by_image(tmp_path: Path) -> None:
    async def test(client: httpx.AsyncClient, backend: FakeBackend, store: LanceCollectionStore) -> None:
        await client.post("/v1/collections", json={"name": "mixed", "model": "fake"})
        items = [{"id": "img1", "image": fakes.image(1), "metadata": {"kind": "image", "n": 1}},
                 {"id": "txt2", "text": "a photo of c2", "metadata": {"kind": "text"}},
                 {"image": fakes.image(3)},
                 {"id": "broken", "image": base64.b64encode(b"not an image").decode(), "metadata": {"kind": "image"}},
                 {"id": "img4", "image": "data:image/png;base64," + fakes.image(4), "metadata": {"kind": "image"}}]
        response = await client.post("/v1/collections/mixed/items", json={"items": items})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["upserted"], body["failed"], body["model"]) == (4, 1, "fake")
        assert [row["status"] for row in body["data"]] == ["upserted", "upserted", "upserted", "failed", "upserted"]
        generated = body["data"][2]["id"]
        assert len(generated) == 32 and generated not in {"img1", "txt2", "broken", "img4"}
        error = body["data"][3]["error"]
        assert (error["code"], error["param"], error["type"]) == ("InvalidImageError", "items[3]",
                                                                  "invalid_request_error")
        assert body["usage"]["images"] == 3 and body["usage"]["text_tokens"] == 5
        assert (await client.get("/v1/collections/mixed")).json()["count"] == 4  # the broken item was not written

        by_text = results(await client.post("/v1/collections/mixed/search", json={"query": "c1", "top_k": 10}))
        assert [row[0] for row in by_text][0] == "img1" and len(by_text) == 4
        for item_id, score, cosine in by_text:
            expected = (fakes.MATCH, 1.0) if item_id == "img1" else (fakes.MISMATCH, 0.0)
            assert abs(score - expected[0]) < EXACT and abs(cosine - expected[1]) < EXACT, (item_id, score, cosine)
        by_image = results(await client.post("/v1/collections/mixed/search",
                                             json={"query": {"image": fakes.image(2)}, "top_k": 2}))
        assert by_image[0][0] == "txt2" and abs(by_image[0][1] - fakes.MATCH) < EXACT and len(by_image) == 2
        by_object = await client.post("/v1/collections/mixed/search", json={"query": {"text": "c3"}, "top_k": 1})
        assert results(by_object)[0][0] == generated
        assert by_object.json()["usage"]["text_tokens"] == 2 and by_object.json()["data"][0]["metadata"] == {}

        filtered = await client.post("/v1/collections/mixed/search",
                                     json={"query": "c2", "filter": {"kind": "image"}, "top_k": 10})
        assert sorted(row[0] for row in results(filtered)) == ["img1", "img4"]
        assert all(abs(row[1] - fakes.MISMATCH) < EXACT for row in results(filtered))
        assert filtered.json()["data"][0]["metadata"]["kind"] == "image"
        numeric = await client.post("/v1/collections/mixed/search", json={"query": "c2", "filter": {"n": 1.0}})
        assert [row[0] for row in results(numeric)] == ["img1"]

        # Upsert: the same id with another image replaces the item.
        replaced = await client.post("/v1/collections/mixed/items",
                                     json={"items": [{"id": "img1", "image": fakes.image(5)}]})
        assert replaced.json()["upserted"] == 1
        top = results(await client.post("/v1/collections/mixed/search", json={"query": "c5", "top_k": 1}))
        assert top[0][0] == "img1" and (await client.get("/v1/collections/mixed")).json()["count"] == 4

        gone = await client.request("DELETE", "/v1/collections/mixed/items", json={"ids": ["img1", "nope"]})
        assert gone.json() == {"object": "list", "deleted": 1}
        assert (await client.get("/v1/collections/mixed")).json()["count"] == 3

    run_app(tmp_path / "data", test)


def test_items_can_be_uploaded_as_a_multipart_form(tmp_path: Path) -> None:
    """curl -F image=@a.jpg -F text=... -F id=... -F metadata='{...}': one item per image or text part, in order."""
    async def test(client: httpx.AsyncClient, backend: FakeBackend, store: LanceCollectionStore) -> None:
        await client.post("/v1/collections", json={"name": "up", "model": "fake"})
        files = [("image", ("one.png", b"img:1", "image/png")), ("text", (None, "a photo of c2")),
                 ("image", ("bad.png", b"not an image", "image/png")),
                 ("id", (None, "f1")), ("id", (None, "t2")), ("id", (None, "bad")),
                 ("metadata", (None, '{"kind": "file"}')), ("metadata", (None, '{"kind": "text"}')),
                 ("metadata", (None, "{}"))]
        response = await client.post("/v1/collections/up/items", files=files)
        assert response.status_code == 200, response.text
        body = response.json()
        assert [(row["id"], row["status"]) for row in body["data"]] == [("f1", "upserted"), ("t2", "upserted"),
                                                                        ("bad", "failed")]
        assert body["data"][2]["error"]["param"] == "image[1]"  # the second image part
        hits = await client.post("/v1/collections/up/search", json={"query": "c1", "top_k": 5})
        assert [(row[0], round(row[2], 6)) for row in results(hits)] == [("f1", 1.0), ("t2", 0.0)]
        assert hits.json()["data"][0]["metadata"] == {"kind": "file"}
        uneven = await client.post("/v1/collections/up/items", files=files[:2] + [("id", (None, "only-one"))])
        assert assert_error(uneven, 400, param="id")["code"] == "InvalidFormError"

    run_app(tmp_path / "data", test)


def test_bad_requests_are_refused_before_any_work(tmp_path: Path) -> None:
    async def test(client: httpx.AsyncClient, backend: FakeBackend, store: LanceCollectionStore) -> None:
        await client.post("/v1/collections", json={"name": "c", "model": "fake"})
        store.create("orphan", model="retired", spec=None, embed_dim=8)
        url = "/v1/collections/c"
        cases = [
            (f"{url}/items", {"items": [{"image": fakes.image(1), "text": "c1"}]}, 422, None),
            (f"{url}/items", {"items": [{"metadata": {}}]}, 422, None),
            (f"{url}/items", {"items": []}, 400, "items"),
            (f"{url}/items", {"items": [{"text": f"c{k}"} for k in range(4)]}, 400, "items"),  # max 3
            (f"{url}/items", {"items": [{"id": "a", "text": "c1"}, {"id": "a", "text": "c2"}]}, 400, "items[1].id"),
            (f"{url}/items", {"items": [{"text": "c1 " + "x" * 100}]}, 400, "items[0]"),
            (f"{url}/items", {"model": "other", "items": [{"text": "c1"}]}, 400, "model"),
            ("/v1/collections/missing/items", {"items": [{"text": "c1"}]}, 404, "name"),
            ("/v1/collections/orphan/items", {"items": [{"text": "c1"}]}, 400, "model"),
            (f"{url}/search", {"query": "c1", "top_k": 11}, 400, "top_k"),  # max 10
            (f"{url}/search", {"query": "c1", "top_k": 0}, 422, None),
            (f"{url}/search", {"query": "c1", "model": "other"}, 400, "model"),
            (f"{url}/search", {"query": "c1", "model": "nope"}, 404, "model"),
            (f"{url}/search", {"query": "c1", "filter": {"k": {"nested": 1}}}, 422, None),
            ("/v1/collections/missing/search", {"query": "c1"}, 404, "name"),
            ("/v1/collections/orphan/search", {"query": "c1"}, 400, "model"),
        ]
        for route, body, status, param in cases:
            error = assert_error(await client.post(route, json=body), status)
            if param is not None:
                assert error["param"] == param, (route, body, error)
        assert backend.tokenized == [] and backend.prepared == []
        assert (await client.get(url)).json()["count"] == 0
        assert_error(await client.request("DELETE", f"{url}/items", json={"ids": []}), 400, param="ids")

    run_app(tmp_path / "data", test, max_collection_items=3, max_top_k=10, max_text_chars=64)


def test_without_a_store_the_routes_answer_503(tmp_path: Path) -> None:
    async def test(client: httpx.AsyncClient, backend: FakeBackend, store: None) -> None:
        assert_error(await client.get("/v1/collections"), 503)

    run_app(tmp_path / "data", test, store=False)


# --- live servers ------------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "collections"


@pytest.fixture
def server_args(data_dir: Path) -> list[str]:
    return ["--data-dir", str(data_dir), "--max-inputs", "16"]


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "logs"
    path.mkdir()
    yield path


def test_a_collection_survives_a_restart_and_scores_as_rerank(siglip1_dir: Path, server_args: list[str],
                                                              log_dir: Path) -> None:
    images = {f"img{k}": b64(png(seed=200 + k, width=24 + k, height=20)) for k in range(4)}
    texts = {"t-cat": "a cat on a sofa", "t-car": "a red car"}
    items = ([{"id": i, "image": image, "metadata": {"kind": "image"}} for i, image in images.items()]
             + [{"id": i, "text": text, "metadata": {"kind": "text"}} for i, text in texts.items()])
    queries = [{"query": "a photo of a cat", "top_k": 6}, {"query": {"image": images["img2"]}, "top_k": 3},
               {"query": {"text": "a red car"}, "top_k": 6, "filter": {"kind": "image"}}]
    with live_server({"tiny": siglip1_dir}, server_args, log_dir / "first.log") as server, \
            httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
        assert client.post("/v1/collections", json={"name": "photos", "model": "tiny"}).status_code == 201
        ingest = client.post("/v1/collections/photos/items", json={"items": items}).json()
        assert ingest["upserted"] == 6 and ingest["failed"] == 0
        first = [results(client.post("/v1/collections/photos/search", json=query)) for query in queries]
        # score: SigLIP's sigmoid of the pair, as /v1/rerank gives it; cosine: of the /v1/embeddings vectors.
        ids = [*images, *texts]
        documents = [{"image": images[i]} for i in images] + [{"text": texts[i]} for i in texts]
        rerank = client.post("/v1/rerank", json={"query": "a photo of a cat", "documents": documents}).json()
        expected = {ids[row["index"]]: row["relevance_score"] for row in rerank["results"]}
        assert [row[0] for row in first[0]] == [ids[row["index"]] for row in rerank["results"]]
        assert_close([row[1] for row in first[0]], [expected[row[0]] for row in first[0]])
        vectors = embeddings_of(client.post("/v1/embeddings", json={"input": ["a photo of a cat", *documents]}))
        assert_close([row[2] for row in first[0]], [float(vectors[0] @ vectors[1 + ids.index(row[0])])
                                                    for row in first[0]])
        assert first[1][0][0] == "img2" and abs(first[1][0][2] - 1.0) < 1e-5
        assert {row[0] for row in first[2]} == set(images)
    with live_server({"tiny": siglip1_dir}, server_args, log_dir / "second.log") as server, \
            httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
        listed = client.get("/v1/collections").json()["data"]
        assert [(c["name"], c["model"], c["count"]) for c in listed] == [("photos", "tiny", 6)]
        again = [results(client.post("/v1/collections/photos/search", json=query)) for query in queries]
        for before, after in zip(first, again, strict=True):
            assert [row[0] for row in after] == [row[0] for row in before]
            assert_close([row[1:] for row in after], [row[1:] for row in before], tol=1e-6)
        # Thumbnails were stored at ingest: a JPEG of each image (these are under 128 px: kept at their size,
        # the same colours), none for texts, and only when asked for.
        asked = client.post("/v1/collections/photos/search",
                            json={"query": "a photo of a cat", "top_k": 6, "with_thumbnails": True}).json()["data"]
        assert {row["id"] for row in asked} == set(ids)
        for row in asked:
            if row["id"] in texts:
                assert row["thumbnail"] is None
                continue
            prefix = "data:image/jpeg;base64,"
            assert row["thumbnail"].startswith(prefix)
            thumb = Image.open(io.BytesIO(base64.b64decode(row["thumbnail"][len(prefix):])))
            source = Image.open(io.BytesIO(base64.b64decode(images[row["id"]])))
            assert thumb.format == "JPEG" and thumb.size == source.size
            # These photo-like test images are mostly noise, which JPEG smooths: compare each channel's mean.
            colour_error = np.abs(np.asarray(thumb, np.float32).mean((0, 1))
                                  - np.asarray(source.convert("RGB"), np.float32).mean((0, 1))).max()
            assert colour_error < 4, (row["id"], colour_error)
        plain = client.post("/v1/collections/photos/search", json={"query": "a photo of a cat"}).json()["data"]
        assert all(row["thumbnail"] is None for row in plain)


def test_concurrent_ingest_and_search_lose_and_duplicate_nothing(siglip1_dir: Path, server_args: list[str],
                                                                 log_dir: Path) -> None:
    writers, requests_each, per_request, shared = 4, 4, 4, 3
    images = [b64(png(seed=300 + k, width=20, height=20)) for k in range(8)]
    failures: list[str] = []
    writing = threading.Event()
    writing.set()
    with live_server({"tiny": siglip1_dir}, server_args, log_dir / "concurrent.log") as server:
        httpx.post(f"{server.url}/v1/collections", json={"name": "busy"}, timeout=HTTP_TIMEOUT_S)

        def write(w: int) -> None:
            with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
                for r in range(requests_each):
                    items = [{"id": f"w{w}-{r}-{i}", "image": images[(w + r + i) % 8], "metadata": {"w": w}}
                             for i in range(per_request)]
                    items += [{"id": f"shared-{i}", "text": f"caption {i}", "metadata": {"w": w}}
                              for i in range(shared)]
                    body = client.post("/v1/collections/busy/items", json={"items": items}).json()
                    if body.get("upserted") != len(items):
                        failures.append(str(body))

        def search() -> None:
            with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
                while writing.is_set():
                    found = [row[0] for row in results(client.post(
                        "/v1/collections/busy/search", json={"query": "a photo", "top_k": 1000}))]
                    if len(found) != len(set(found)):
                        failures.append(f"duplicates in {found}")

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        searcher = threading.Thread(target=search)
        searcher.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        writing.clear()
        searcher.join()
        assert failures == []
        total = writers * requests_each * per_request + shared
        assert httpx.get(f"{server.url}/v1/collections/busy", timeout=HTTP_TIMEOUT_S).json()["count"] == total
        found = results(httpx.post(f"{server.url}/v1/collections/busy/search", json={"query": "x", "top_k": 1000},
                                   timeout=HTTP_TIMEOUT_S))
        assert len(found) == len({row[0] for row in found}) == total


def test_an_embed_job_output_is_served_as_a_collection(siglip1_dir: Path, server_args: list[str], data_dir: Path,
                                                       log_dir: Path, tmp_path: Path) -> None:
    """`siglip-serve embed FOLDER --out DATA_DIR/NAME`, then `siglip-serve serve --data-dir DATA_DIR`."""
    from siglip_serve.jobs.embed import EmbedOptions, run_embed

    folder = tmp_path / "folder"
    folder.mkdir()
    for k in range(3):
        (folder / f"p{k}.png").write_bytes(png(seed=400 + k, width=30, height=22))
    (folder / "notes.txt").write_text("not an image")
    summary = run_embed(EmbedOptions(sources=[str(folder)], out=str(data_dir / "folder"), model=str(siglip1_dir),
                                     device="cpu", dtype="float32", quiet=True))
    assert summary.embedded == 3
    with live_server({"tiny": siglip1_dir}, server_args, log_dir / "embed.log") as server, \
            httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
        info = client.get("/v1/collections/folder").json()
        size = client.get("/v1/models").json()["data"][0]["embedding_size"]
        assert (info["origin"], info["count"], info["embedding_size"]) == ("embed", 3, size)
        response = client.post("/v1/collections/folder/search", json={"query": "a photo", "top_k": 3})
        hits = results(response)
        assert sorted(row[0] for row in hits) == ["p0.png", "p1.png", "p2.png"] and response.json()["model"] == "tiny"
        vectors = embeddings_of(client.post("/v1/embeddings", json={
            "input": ["a photo", *({"image": b64((folder / row[0]).read_bytes())} for row in hits)]}))
        assert_close([row[2] for row in hits], [float(vectors[0] @ vectors[1 + k]) for k in range(3)])
        metadata = response.json()["data"][0]["metadata"]
        assert metadata["source"].endswith(hits[0][0]) and metadata["width"] == 30
        only = client.post("/v1/collections/folder/search", json={"query": "a photo", "filter": {"id": "p1.png"}})
        assert_error(only, 400, param="filter.id")
        first = client.post("/v1/collections/folder/search",
                            json={"query": "a photo", "filter": {"source": metadata["source"]}})
        assert [row[0] for row in results(first)] == [hits[0][0]]
