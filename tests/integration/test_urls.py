"""Image URLs: fetched from a local HTTP server when private URLs are allowed, refused otherwise."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import torch
from live import HTTP_TIMEOUT_S, assert_close, assert_error, assert_same_ranking, embeddings_of, free_port

LABELS = ["cat", "dog", "tree"]


@pytest.fixture(scope="module")
def http(main_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=main_server.url, timeout=HTTP_TIMEOUT_S) as session:
        yield session


def file_bytes(image_host, path: str) -> bytes:
    return image_host.files[path][0]


def test_url_images_equal_the_library_on_the_same_bytes(http, image_host, lib_tiny):
    paths = ["/photo.png", "/photo.jpg"]
    urls = [image_host.url + p for p in paths]
    response = http.post("/v1/embeddings", json={"model": "tiny", "modality": "image", "input": urls})
    expected = lib_tiny.embed_images([file_bytes(image_host, p) for p in paths]).numpy()
    assert_close(embeddings_of(response), expected)
    assert set(paths) <= set(image_host.requests)


def test_url_image_classify_and_rerank(http, image_host, lib_tiny):
    url = image_host.url + "/photo.jpg"
    data = file_bytes(image_host, "/photo.jpg")
    response = http.post("/v1/classify", json={"model": "tiny", "input": [{"image": url}], "labels": LABELS})
    assert response.status_code == 200, response.text
    got = [(p["label"], p["score"]) for p in response.json()["data"][0]["predictions"]]
    assert_same_ranking(got, lib_tiny.classify([data], LABELS)[0])

    response = http.post("/v1/rerank", json={"model": "tiny", "query": "a cat",
                                             "documents": ["a dog", {"image": url}]})
    assert response.status_code == 200, response.text
    documents = torch.cat([lib_tiny.embed_texts(["a dog"]), lib_tiny.embed_images([data])])
    scores = lib_tiny.logits(lib_tiny.embed_texts(["a cat"]), documents).sigmoid()[0]
    expected = sorted(enumerate(scores.tolist()), key=lambda pair: -pair[1])
    assert_same_ranking([(r["index"], r["relevance_score"]) for r in response.json()["results"]], expected)


def test_hf_route_with_url(http, image_host, lib_tiny):
    url = image_host.url + "/photo.png"
    response = http.post("/models/tiny", json={"inputs": url, "parameters": {"candidate_labels": LABELS}})
    assert response.status_code == 200, response.text
    got = [(p["label"], p["score"]) for p in response.json()]
    assert_same_ranking(got, lib_tiny.classify([file_bytes(image_host, "/photo.png")], LABELS)[0])


def test_missing_url_is_400_naming_the_url(http, image_host, lib_tiny):
    url = image_host.url + "/missing.png"
    response = http.post("/v1/embeddings", json={"model": "tiny", "modality": "image",
                                                 "input": [image_host.url + "/photo.png", url]})
    error = assert_error(response, 400, param="input[1]", contains=url)
    assert "404" in error["message"]
    assert "/missing.png" in image_host.requests
    ok = http.post("/v1/embeddings", json={"model": "tiny", "modality": "image",
                                           "input": [image_host.url + "/photo.png"]})
    assert_close(embeddings_of(ok), lib_tiny.embed_images([file_bytes(image_host, "/photo.png")]).numpy())


def test_url_to_a_closed_port_is_400_naming_the_url(http):
    url = f"http://127.0.0.1:{free_port()}/x.png"
    assert_error(http.post("/v1/classify", json={"model": "tiny", "input": [url], "labels": ["a"]}),
                 400, param="input[0]", contains=url)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_url_refused_without_allow_private_urls(strict_server, image_host, host):
    url = image_host.url.replace("127.0.0.1", host) + "/photo.png?refused"
    seen = list(image_host.requests)
    with httpx.Client(base_url=strict_server.url, timeout=HTTP_TIMEOUT_S,
                      headers={"Authorization": "Bearer k1"}) as strict:
        for path, body in [
            ("/v1/embeddings", {"model": "tiny", "modality": "image", "input": [url]}),
            ("/v1/classify", {"model": "tiny", "input": [url], "labels": ["a"]}),
            ("/v1/rerank", {"model": "tiny", "query": "a", "documents": ["b", {"image": url}]}),
            ("/models/tiny", {"inputs": url, "parameters": {"candidate_labels": ["a"]}}),
        ]:
            error = assert_error(strict.post(path, json=body), 400, contains=url)
            assert error["type"] == "invalid_request_error"
        assert strict.post("/v1/embeddings", json={"model": "tiny", "input": ["a"]}).status_code == 200
    assert image_host.requests == seen, "the refused URL was fetched"
