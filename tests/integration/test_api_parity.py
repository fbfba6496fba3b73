"""A live server's answers equal the library's on the same checkpoint and inputs.

Clients: the official `openai` client for /v1/embeddings, `huggingface_hub.InferenceClient` for the
HF zero-shot route, httpx for the rest.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import torch
from huggingface_hub import InferenceClient
from huggingface_hub import constants as hf_constants
from live import (
    HTTP_TIMEOUT_S,
    assert_close,
    assert_error,
    assert_same_ranking,
    b64,
    data_uri,
    embeddings_of,
    jpeg,
    png,
)

MODELS = ["tiny", "tiny2"]
TEXTS = ["a photo of a cat", "Hot_Dog on the BEACH!", "two dogs playing near the river"]
LABELS = ["cat", "dog", "red car", "tree"]


@pytest.fixture(scope="module")
def client(main_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{main_server.url}/v1", api_key="x", max_retries=0, timeout=HTTP_TIMEOUT_S)


@pytest.fixture(scope="module")
def http(main_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=main_server.url, timeout=HTTP_TIMEOUT_S) as session:
        yield session


def rows(response) -> np.ndarray:
    """The embeddings of an openai response; an explicit encoding_format="base64" leaves them as strings."""
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") if isinstance(d.embedding, str)
                     else np.asarray(d.embedding, dtype=np.float32) for d in response.data])


# --- /v1/embeddings with the openai client -------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_openai_text_embeddings_default_base64(client, libs, name):
    raw = client.embeddings.with_raw_response.create(model=name, input=TEXTS)
    assert b'"encoding_format":"base64"' in raw.http_request.content  # the client's default
    assert all(isinstance(d["embedding"], str) for d in raw.http_response.json()["data"])
    response = raw.parse()
    assert response.model == name
    assert_close(rows(response), libs[name].embed_texts(TEXTS).numpy())
    assert response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens


@pytest.mark.parametrize("name", MODELS)
def test_openai_text_embeddings_float(client, libs, name):
    response = client.embeddings.create(model=name, input=TEXTS, encoding_format="float")
    assert_close(rows(response), libs[name].embed_texts(TEXTS).numpy())
    single = client.embeddings.create(model=name, input=TEXTS[1], encoding_format="float")
    assert_close(rows(single), libs[name].embed_texts(TEXTS[1:2]).numpy())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_openai_image_embeddings(client, libs, name, encoding_format):
    images = [png(seed=1), jpeg(seed=2, width=25, height=60)]
    response = client.embeddings.create(model=name, input=[data_uri(images[0]), b64(images[1])],
                                        encoding_format=encoding_format, extra_body={"modality": "image"})
    assert_close(rows(response), libs[name].embed_images(images).numpy())
    assert response.usage.images == 2


def test_openai_unnormalized_embeddings(client, lib_tiny):
    images = [png(seed=3)]
    texts = client.embeddings.create(model="tiny", input=TEXTS, extra_body={"normalize": False})
    assert_close(rows(texts), lib_tiny.embed_texts(TEXTS, normalize=False).numpy())
    assert not np.allclose(np.linalg.norm(rows(texts), axis=1), 1.0, atol=1e-3)
    image_rows = client.embeddings.create(model="tiny", input=[b64(images[0])],
                                          extra_body={"modality": "image", "normalize": False})
    assert_close(rows(image_rows), lib_tiny.embed_images(images, normalize=False).numpy())


def test_openai_client_error_types(client):
    with pytest.raises(openai.NotFoundError) as not_found:
        client.embeddings.create(model="no-such-model", input=["x"])
    assert not_found.value.status_code == 404
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="tiny", input=["ok", "!!not base64!!"], extra_body={"modality": "image"})
    assert bad.value.body["param"] == "input[1]"
    assert client.embeddings.create(model="tiny", input=["ok"]).data


def test_mixed_text_and_image_items_keep_their_order(http, lib_tiny):
    image = png(seed=4)
    response = http.post("/v1/embeddings", json={"model": "tiny", "input": [
        {"text": TEXTS[0]}, {"image": data_uri(image)}, TEXTS[2], {"image": b64(image)}]})
    got = embeddings_of(response)
    text_rows = lib_tiny.embed_texts([TEXTS[0], TEXTS[2]]).numpy()
    image_row = lib_tiny.embed_images([image]).numpy()[0]
    assert_close(got, np.stack([text_rows[0], image_row, text_rows[1], image_row]))
    usage = response.json()["usage"]
    assert usage["images"] == 2 and usage["text_tokens"] > 0


def test_base64_encoding_is_little_endian_float32(http, lib_tiny):
    response = http.post("/v1/embeddings", json={"model": "tiny", "input": TEXTS, "encoding_format": "base64"})
    data = response.json()["data"]
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
    assert_close(decoded, lib_tiny.embed_texts(TEXTS).numpy())


def test_dimensions_equal_to_the_models_are_accepted(http, lib_tiny):
    response = http.post("/v1/embeddings", json={"model": "tiny", "input": ["a cat"],
                                                 "dimensions": lib_tiny.info.embed_dim})
    assert_close(embeddings_of(response), lib_tiny.embed_texts(["a cat"]).numpy())


# --- /v1/classify ----------------------------------------------------------------------------------


def server_rankings(response: httpx.Response) -> list[list[tuple[str, float]]]:
    assert response.status_code == 200, response.text
    body = response.json()
    out = []
    for i, item in enumerate(body["data"]):
        assert item["index"] == i
        ranked = [(p["label"], p["score"]) for p in item["predictions"]]
        assert (item["prediction"], item["score"]) == ranked[0]
        out.append(ranked)
    return out


CLASSIFY_CASES = {
    "default": {},
    "softmax": {"normalization": "softmax"},
    "top_k": {"top_k": 2},
    "template": {"hypothesis_template": "a drawing of a {}"},
    "ensemble": {"hypothesis_template": ["a photo of a {}.", "a sketch of the {}", "{}"], "top_k": 3},
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("case", CLASSIFY_CASES)
def test_classify_equals_library(http, libs, name, case):
    options = CLASSIFY_CASES[case]
    images = [png(seed=5), jpeg(seed=6, width=64, height=20), png(seed=7, width=9, height=9)]
    body = {"model": name, "input": [data_uri(images[0]), b64(images[1]), {"image": b64(images[2])}],
            "labels": LABELS, **options}
    got = server_rankings(http.post("/v1/classify", json=body))
    expected = libs[name].classify(images, LABELS, templates=options.get("hypothesis_template"),
                                   normalization=options.get("normalization", "sigmoid"),
                                   top_k=options.get("top_k"))
    assert len(got) == len(expected)
    for server_row, library_row in zip(got, expected, strict=True):
        assert_same_ranking(server_row, library_row)
    if case == "softmax":
        for row in got:
            assert sum(score for _, score in row) == pytest.approx(1.0, abs=1e-5)


def test_classify_single_string_input(http, lib_tiny):
    image = png(seed=8)
    got = server_rankings(http.post("/v1/classify", json={"model": "tiny", "input": b64(image), "labels": LABELS}))
    assert_same_ranking(got[0], lib_tiny.classify([image], LABELS)[0])


def test_repeated_classify_is_served_from_the_label_cache_with_the_same_numbers(http, lib_tiny):
    image = png(seed=9)
    body = {"model": "tiny", "input": [b64(image)], "labels": LABELS}
    first = server_rankings(http.post("/v1/classify", json=body))
    second = server_rankings(http.post("/v1/classify", json=body))
    expected = lib_tiny.classify([image], LABELS)
    assert_same_ranking(first[0], expected[0])
    assert_same_ranking(second[0], expected[0])


# --- /v1/rerank ------------------------------------------------------------------------------------


def library_relevance(model, query, documents) -> list[tuple[int, float]]:
    def embed(item) -> torch.Tensor:
        if isinstance(item, bytes):
            return model.embed_images([item])
        return model.embed_texts([item])

    q = embed(query)
    docs = torch.cat([embed(d) for d in documents])
    scores = model.logits(q, docs).sigmoid()[0]
    return sorted(((i, float(s)) for i, s in enumerate(scores)), key=lambda pair: -pair[1])


def as_item(item):
    return {"image": b64(item)} if isinstance(item, bytes) else item


RERANK_CASES = {
    "text-texts": ("a cat on a bed", ["a dog", "a cat sleeping on a bed", "red car in the city", "sunset"]),
    "text-images": ("a red ball", [png(seed=20), jpeg(seed=21), png(seed=22, width=17, height=70)]),
    "image-mixed": (png(seed=23), ["a photo of a tree", png(seed=24), "bright street at night"]),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("case", RERANK_CASES)
def test_rerank_equals_library_sigmoid(http, libs, name, case):
    query, documents = RERANK_CASES[case]
    body = {"model": name, "query": as_item(query), "documents": [as_item(d) for d in documents]}
    response = http.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert all("document" not in r for r in results)
    got = [(r["index"], r["relevance_score"]) for r in results]
    assert_same_ranking(got, library_relevance(libs[name], query, documents))


def test_rerank_top_n_and_return_documents(http, lib_tiny):
    query, documents = RERANK_CASES["image-mixed"]
    body = {"model": "tiny", "query": as_item(query), "documents": [as_item(d) for d in documents],
            "top_n": 2, "return_documents": True}
    response = http.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    expected = library_relevance(lib_tiny, query, documents)[:2]
    assert_same_ranking([(r["index"], r["relevance_score"]) for r in results], expected)
    for r in results:
        document = documents[r["index"]]
        assert r["document"] == ({"image": b64(document)} if isinstance(document, bytes) else {"text": document})


# --- Hugging Face Inference API route ------------------------------------------------------------------


@pytest.fixture
def hf_online(monkeypatch):
    """tests/conftest.py sets HF_HUB_OFFLINE, which also blocks InferenceClient; the target is loopback."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


@pytest.mark.parametrize("name", MODELS)
def test_hf_inference_client_bytes(main_server, libs, name, hf_online):
    image = png(seed=30)
    out = InferenceClient(timeout=HTTP_TIMEOUT_S).zero_shot_image_classification(
        image, candidate_labels=LABELS, model=f"{main_server.url}/models/{name}")
    assert_same_ranking([(o.label, o.score) for o in out], libs[name].classify([image], LABELS)[0])


def test_hf_inference_client_path_and_template(main_server, lib_tiny, hf_online, tmp_path):
    image = jpeg(seed=31)
    path = tmp_path / "image.jpg"
    path.write_bytes(image)
    out = InferenceClient(timeout=HTTP_TIMEOUT_S).zero_shot_image_classification(
        path, candidate_labels=LABELS, model=f"{main_server.url}/models/tiny",
        hypothesis_template="a sketch of a {}")
    expected = lib_tiny.classify([image], LABELS, templates="a sketch of a {}")[0]
    assert_same_ranking([(o.label, o.score) for o in out], expected)


def test_hf_route_comma_separated_labels(http, lib_tiny):
    image = png(seed=32)
    response = http.post("/models/tiny", json={"inputs": b64(image),
                                               "parameters": {"candidate_labels": "cat, dog,red car"}})
    assert response.status_code == 200, response.text
    got = [(p["label"], p["score"]) for p in response.json()]
    assert_same_ranking(got, lib_tiny.classify([image], ["cat", "dog", "red car"])[0])


# --- listing, health, metrics, OpenAPI ----------------------------------------------------------------


def test_models_list(http, libs):
    response = http.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    cards = {card["id"]: card for card in body["data"]}
    assert set(cards) == set(MODELS)
    for name, card in cards.items():
        info = libs[name].info
        assert card["object"] == "model"
        assert card["embedding_size"] == info.embed_dim
        assert card["family"] == info.family
        assert card["image_size"] == info.image_size
        assert card["patch_size"] == info.patch_size
        assert card["text_length"] == info.text_length


def test_openai_client_lists_models(client):
    assert {m.id for m in client.models.list()} == set(MODELS)


def test_health(http):
    response = http.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert set(response.json()["models"]) == set(MODELS)


def test_metrics_exposition(http):
    http.post("/v1/embeddings", json={"model": "tiny", "input": ["metrics probe"]})
    assert_error(http.post("/v1/embeddings", json={"model": "nope", "input": ["x"]}), 404)
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in ("siglip_requests_total", "siglip_errors_total", "siglip_batch_size_bucket",
                 "siglip_batch_size_count", "siglip_queue_depth", "siglip_stage_seconds_bucket"):
        assert name in text, name
    assert 'route="/v1/embeddings",status="200"' in text
    assert 'route="/v1/embeddings",status="404"' in text


def test_openapi_schema(http):
    response = http.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/v1/embeddings", "/v1/classify", "/v1/rerank", "/v1/models", "/health", "/metrics"):
        assert path in paths, path
