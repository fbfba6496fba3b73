"""Bad input gets its documented status and OpenAI's error body naming the offending field or item,
and the server serves a normal request right after each. API keys. No memory growth from bad input."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import openai
import pytest
from live import (
    API_KEYS,
    HTTP_TIMEOUT_S,
    MAX_DOCUMENTS,
    MAX_IMAGE_PIXELS,
    MAX_INPUTS,
    MAX_LABELS,
    MAX_REQUEST_BYTES,
    assert_close,
    assert_error,
    b64,
    data_uri,
    embeddings_of,
    image_bytes,
    png,
)
from PIL import Image
from sample_images import photo_like

GOOD = b64(png(seed=40))


def raw_json(body: dict) -> bytes:
    """JSON with \\u escapes: the only way to send a lone surrogate (httpx's json= cannot encode one)."""
    return json.dumps(body, ensure_ascii=True).encode("ascii")


@dataclass(frozen=True)
class Bad:
    path: str
    body: dict | bytes
    status: int | tuple[int, ...]
    param: str | None = "any"  # "any": not checked
    contains: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def oversized_image() -> str:
    side = int(MAX_IMAGE_PIXELS**0.5) + 20  # a flat image: a few hundred bytes of PNG
    return b64(image_bytes(Image.new("RGB", (side, side), (10, 200, 30)), "PNG"))


BAD: dict[str, Bad] = {
    # body
    "malformed-json": Bad("/v1/embeddings", b'{"model": "tiny", "input": ["a cat"', 400, param=None),
    "malformed-json-classify": Bad("/v1/classify", b"{not json}", 400, param=None),
    "not-an-object": Bad("/v1/classify", b"[1, 2, 3]", 422),
    # field types
    "input-item-type": Bad("/v1/embeddings", {"model": "tiny", "input": ["a cat", 5]}, 422, param="input[1]"),
    "classify-input-item-type": Bad("/v1/classify", {"model": "tiny", "input": [GOOD, 7], "labels": ["a"]}, 422,
                                    param="input[1]"),
    "hf-parameters-type": Bad("/models/tiny", {"inputs": GOOD, "parameters": ["a"]}, 422, param="parameters"),
    "input-type": Bad("/v1/embeddings", {"model": "tiny", "input": 5}, 422, param="input"),
    "labels-type": Bad("/v1/classify", {"model": "tiny", "input": [GOOD], "labels": "cat"}, 422, param="labels"),
    "labels-missing": Bad("/v1/classify", {"model": "tiny", "input": [GOOD]}, 422, param="labels"),
    "top-k-type": Bad("/v1/classify", {"model": "tiny", "input": [GOOD], "labels": ["a"], "top_k": "many"}, 422,
                      param="top_k"),
    "top-k-zero": Bad("/v1/classify", {"model": "tiny", "input": [GOOD], "labels": ["a"], "top_k": 0}, 422,
                      param="top_k"),
    "normalization": Bad("/v1/classify", {"model": "tiny", "input": [GOOD], "labels": ["a"],
                                          "normalization": "relu"}, 422, param="normalization"),
    "encoding-format": Bad("/v1/embeddings", {"model": "tiny", "input": ["a"], "encoding_format": "int8"}, 422,
                           param="encoding_format"),
    "unknown-field": Bad("/v1/classify", {"model": "tiny", "input": [GOOD], "labels": ["a"], "bogus": 1}, 422,
                         param="bogus"),
    "rerank-query-type": Bad("/v1/rerank", {"model": "tiny", "query": 3, "documents": ["a"]}, 422, param="query"),
    # models
    "unknown-model": Bad("/v1/embeddings", {"model": "nope", "input": ["a"]}, 404, param="model", contains="nope"),
    "unknown-model-classify": Bad("/v1/classify", {"model": "nope", "input": [GOOD], "labels": ["a"]}, 404,
                                  param="model"),
    "unknown-model-hf": Bad("/models/nope", {"inputs": GOOD, "parameters": {"candidate_labels": ["a"]}}, 404,
                            param="model"),
    # images
    "bad-base64": Bad("/v1/embeddings", {"model": "tiny", "input": [GOOD, "!!not*base64!!"], "modality": "image"},
                      400, param="input[1]"),
    "bad-base64-classify": Bad("/v1/classify", {"model": "tiny", "input": [GOOD, "%%%"], "labels": ["a"]}, 400,
                               param="input[1]"),
    "garbage-bytes": Bad("/v1/embeddings", {"model": "tiny", "modality": "image",
                                            "input": [GOOD, b64(b"definitely not an image " * 8)]},
                         400, param="input[1]"),
    "garbage-data-uri": Bad("/v1/classify", {"model": "tiny", "labels": ["a"],
                                             "input": [{"image": data_uri(b"\x00\x01garbage" * 20)}]},
                            400, param="input[0]"),
    "truncated-png": Bad("/v1/classify", {"model": "tiny", "labels": ["a"], "input": [b64(png(seed=41)[:200])]},
                         400, param="input[0]"),
    "unsupported-format-ppm": Bad("/v1/classify", {"model": "tiny", "labels": ["a"],
                                                   "input": [GOOD, b64(image_bytes(photo_like(8, 8), "PPM"))]},
                                  400, param="input[1]"),
    "unsupported-format-ico": Bad("/v1/embeddings", {"model": "tiny", "modality": "image",
                                                     "input": [b64(image_bytes(photo_like(16, 16), "ICO"))]},
                                  400, param="input[0]"),
    "data-uri-not-base64": Bad("/v1/embeddings", {"model": "tiny", "modality": "image",
                                                  "input": ["data:image/png,abcd"]}, 400, param="input[0]"),
    "unsupported-url-scheme": Bad("/v1/embeddings", {"model": "tiny", "modality": "image",
                                                     "input": ["ftp://example.invalid/x.png"]},
                                  400, param="input[0]", contains="ftp://example.invalid/x.png"),
    "image-over-max-pixels": Bad("/v1/classify", {"model": "tiny", "labels": ["a"], "input": [oversized_image()]},
                                 400, param="input[0]"),
    "rerank-bad-document": Bad("/v1/rerank", {"model": "tiny", "query": "a", "documents": ["b", {"image": "@@"}]},
                               400, param="documents[1]"),
    "rerank-bad-query": Bad("/v1/rerank", {"model": "tiny", "query": {"image": "@@"}, "documents": ["b"]},
                            400, param="query"),
    "hf-bad-image": Bad("/models/tiny", {"inputs": "@@", "parameters": {"candidate_labels": ["a"]}}, 400,
                        param="inputs"),
    # texts, labels, templates
    "empty-labels": Bad("/v1/classify", {"model": "tiny", "input": [GOOD], "labels": []}, 400, param="labels"),
    "empty-label": Bad("/v1/classify", {"model": "tiny", "input": [GOOD], "labels": ["a", " "]}, 400,
                       param="labels[1]"),
    "hf-empty-labels": Bad("/models/tiny", {"inputs": GOOD, "parameters": {"candidate_labels": []}}, 400),
    "empty-text": Bad("/v1/embeddings", {"model": "tiny", "input": ["a cat", ""]}, 400, param="input[1]"),
    "empty-input-list": Bad("/v1/embeddings", {"model": "tiny", "input": []}, 400, param="input"),
    "empty-documents": Bad("/v1/rerank", {"model": "tiny", "query": "a", "documents": []}, 400, param="documents"),
    "template-without-braces": Bad("/v1/classify", {"model": "tiny", "input": [GOOD], "labels": ["a"],
                                                    "hypothesis_template": "a photo"},
                                   400, param="hypothesis_template"),
    "second-template-without-braces": Bad("/v1/classify", {"model": "tiny", "input": [GOOD], "labels": ["a"],
                                                           "hypothesis_template": ["a {}", "{} and {}"]},
                                          400, param="hypothesis_template[1]"),
    "empty-template-list": Bad("/v1/classify", {"model": "tiny", "input": [GOOD], "labels": ["a"],
                                                "hypothesis_template": []}, 400, param="hypothesis_template"),
    "hf-template-without-braces": Bad("/models/tiny", {"inputs": GOOD, "parameters": {
        "candidate_labels": ["a"], "hypothesis_template": "nothing"}}, 400, param="hypothesis_template"),
    # strings JSON allows but UTF-8 cannot encode (lone surrogates): bad input, not a server error
    "lone-surrogate-text": Bad("/v1/embeddings", raw_json({"model": "tiny", "input": ["ok", "\ud800"]}), (400, 422),
                               param="input[1]"),
    "lone-surrogate-text-tiny2": Bad("/v1/embeddings", raw_json({"model": "tiny2", "input": ["\ud800 x"]}),
                                     (400, 422), param="input[0]"),
    "lone-surrogate-label": Bad("/v1/classify", raw_json({"model": "tiny", "input": [GOOD], "labels": ["a", "\udfff"]}),
                                (400, 422), param="labels[1]"),
    "lone-surrogate-template": Bad("/v1/classify", raw_json({"model": "tiny", "input": [GOOD], "labels": ["a"],
                                                            "hypothesis_template": "\ud800 {}"}),
                                   (400, 422), param="hypothesis_template"),
    "lone-surrogate-query": Bad("/v1/rerank", raw_json({"model": "tiny", "query": "\ud800", "documents": ["a"]}),
                                (400, 422), param="query"),
    "lone-surrogate-url": Bad("/v1/embeddings", raw_json({"model": "tiny", "modality": "image",
                                                          "input": ["http://127.0.0.1:9/\ud800.png"]}),
                              (400, 422), param="input[0]"),
    # limits
    "too-many-inputs": Bad("/v1/embeddings", {"model": "tiny", "input": ["a"] * (MAX_INPUTS + 1)}, 400,
                           param="input"),
    "too-many-images": Bad("/v1/classify", {"model": "tiny", "input": [GOOD] * (MAX_INPUTS + 1), "labels": ["a"]},
                           400, param="input"),
    "too-many-labels": Bad("/v1/classify", {"model": "tiny", "input": [GOOD],
                                            "labels": [f"label {i}" for i in range(MAX_LABELS + 1)]},
                           400, param="labels"),
    "too-many-documents": Bad("/v1/rerank", {"model": "tiny", "query": "a",
                                             "documents": [f"doc {i}" for i in range(MAX_DOCUMENTS + 1)]},
                              400, param="documents"),
    "dimensions": Bad("/v1/embeddings", {"model": "tiny", "input": ["a"], "dimensions": 7}, 400,
                      param="dimensions"),
}


@pytest.fixture(scope="module")
def http(main_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=main_server.url, timeout=HTTP_TIMEOUT_S) as session:
        yield session


def send(http: httpx.Client, bad: Bad) -> httpx.Response:
    if isinstance(bad.body, bytes):
        return http.post(bad.path, content=bad.body, headers={"Content-Type": "application/json", **bad.headers})
    return http.post(bad.path, json=bad.body, headers=bad.headers)


def assert_serves_normally(http: httpx.Client, lib_tiny) -> None:
    image = png(seed=42)
    response = http.post("/v1/classify", json={"model": "tiny", "input": [b64(image)], "labels": ["cat", "dog"]})
    assert response.status_code == 200, response.text
    got = [(p["label"], p["score"]) for p in response.json()["data"][0]["predictions"]]
    expected = lib_tiny.classify([image], ["cat", "dog"])[0]
    assert [label for label, _ in got] == [label for label, _ in expected]
    assert_close([s for _, s in got], [s for _, s in expected])


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_its_status_then_the_server_serves(http, lib_tiny, case):
    bad = BAD[case]
    assert_error(send(http, bad), bad.status, param=bad.param, contains=bad.contains)
    assert_serves_normally(http, lib_tiny)


def test_several_models_and_none_named(http):
    error = assert_error(http.post("/v1/embeddings", json={"input": ["a"]}), 404, param="model")
    assert "tiny" in error["message"] and "tiny2" in error["message"]


# --- request body size: 413 ------------------------------------------------------------------------


def big_body() -> bytes:
    return json.dumps({"model": "tiny", "input": ["x" * (MAX_REQUEST_BYTES + 1000)]}).encode()


def test_body_over_limit_by_content_length_is_413(http, lib_tiny):
    body = big_body()
    response = http.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 413, contains=str(MAX_REQUEST_BYTES))
    assert_serves_normally(http, lib_tiny)


def test_chunked_body_over_limit_is_413(http, lib_tiny):
    body = big_body()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    request = http.build_request("POST", "/v1/embeddings", content=chunks(),
                                 headers={"Content-Type": "application/json"})
    assert "content-length" not in request.headers
    assert request.headers.get("transfer-encoding") == "chunked"
    assert_error(http.send(request), 413, contains=str(MAX_REQUEST_BYTES))
    assert_serves_normally(http, lib_tiny)


def test_chunked_body_under_limit_is_served(http, lib_tiny):
    body = json.dumps({"model": "tiny", "input": ["a chunked cat"]}).encode()

    def chunks() -> Iterator[bytes]:
        yield body[:10]
        yield body[10:]

    response = http.post("/v1/embeddings", content=chunks(), headers={"Content-Type": "application/json"})
    assert_close(embeddings_of(response), lib_tiny.embed_texts(["a chunked cat"]).numpy())


def test_body_just_under_limit_is_not_413(http):
    text = "cat " * ((MAX_REQUEST_BYTES - 200) // 4)
    body = json.dumps({"model": "tiny", "input": [text]}).encode()
    assert len(body) < MAX_REQUEST_BYTES
    response = http.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text


# --- API keys --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict(strict_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=strict_server.url, timeout=HTTP_TIMEOUT_S) as session:
        yield session


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


EMBED = {"model": "tiny", "input": ["a cat"]}


@pytest.mark.parametrize("headers", [
    {}, auth("wrong"), {"Authorization": "Bearer"}, {"Authorization": "k1"}, {"Authorization": "Basic k1"},
    auth("k1k2"),
], ids=["missing", "wrong", "empty", "no-scheme", "basic", "concatenated"])
def test_missing_or_wrong_api_key_is_401(strict, lib_tiny, headers):
    for path, body in [("/v1/embeddings", EMBED), ("/v1/classify", {"input": [GOOD], "labels": ["a"]}),
                       ("/v1/rerank", {"query": "a", "documents": ["b"]}),
                       ("/models/tiny", {"inputs": GOOD, "parameters": {"candidate_labels": ["a"]}})]:
        response = strict.post(path, json=body, headers=headers)
        assert_error(response, 401)
        assert response.json()["error"]["type"] == "authentication_error"
    assert_error(strict.get("/v1/models", headers=headers), 401)
    response = strict.post("/v1/embeddings", json=EMBED, headers=auth("k1"))
    assert_close(embeddings_of(response), lib_tiny.embed_texts(["a cat"]).numpy())


@pytest.mark.parametrize("key", API_KEYS)
def test_every_configured_key_works(strict_server, lib_tiny, key):
    client = openai.OpenAI(base_url=f"{strict_server.url}/v1", api_key=key, max_retries=0, timeout=HTTP_TIMEOUT_S)
    response = client.embeddings.create(model="tiny", input=["a cat"])
    assert_close([d.embedding for d in response.data], lib_tiny.embed_texts(["a cat"]).numpy())
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_hf_inference_client_with_a_key(strict_server, lib_tiny, monkeypatch):
    from huggingface_hub import InferenceClient
    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # set by tests/conftest.py; the target is loopback
    image = png(seed=43)
    out = InferenceClient(token="k2", timeout=HTTP_TIMEOUT_S).zero_shot_image_classification(
        image, candidate_labels=["cat", "dog"], model=f"{strict_server.url}/models/tiny")
    expected = lib_tiny.classify([image], ["cat", "dog"])[0]
    assert [o.label for o in out] == [label for label, _ in expected]
    assert_close([o.score for o in out], [score for _, score in expected])


def test_openai_client_with_wrong_key_raises_authentication_error(strict_server):
    client = openai.OpenAI(base_url=f"{strict_server.url}/v1", api_key="nope", max_retries=0,
                           timeout=HTTP_TIMEOUT_S)
    with pytest.raises(openai.AuthenticationError):
        client.embeddings.create(model="tiny", input=["a cat"])


def test_health_and_metrics_are_open(strict):
    assert strict.get("/health").status_code == 200
    assert strict.get("/metrics").status_code == 200


# --- memory ----------------------------------------------------------------------------------------


def bad_request_senders(http: httpx.Client) -> list[Callable[[], httpx.Response]]:
    senders = [lambda bad=bad: send(http, bad) for bad in BAD.values()]
    big = big_body()
    senders.append(lambda: http.post("/v1/embeddings", content=big, headers={"Content-Type": "application/json"}))
    return senders


def test_bad_requests_do_not_grow_memory(main_server, http):
    senders = bad_request_senders(http)

    def burst(count: int) -> None:
        for i in range(count):
            # A connection the server dropped is not what this test measures.
            with contextlib.suppress(httpx.TransportError):
                assert senders[i % len(senders)]().status_code >= 400

    burst(len(senders) * 2)  # warm-up: allocator arenas, caches, lazily imported code
    before = main_server.rss_bytes()
    burst(200)
    after = main_server.rss_bytes()
    assert after - before < 50 * 1024 * 1024, f"RSS grew by {(after - before) / 2**20:.1f} MiB over 200 bad requests"
