"""multipart/form-data on a live server (issue #16): `curl -F image=@cat.jpg -F labels=cat,dog` gets the numbers the
JSON body gets for the same image (and the library), and every limit and 4xx error the JSON body gets, in the
same words, naming the form part (image[1]) where JSON names input[1]. A local path sent as an image string gets
a 400 that says to upload the file or base64-encode it; bad base64 is still reported as such."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fakes import FakeBackend
from fastapi import APIRouter, FastAPI
from live import (
    API_KEYS,
    HTTP_TIMEOUT_S,
    MAX_INPUTS,
    MAX_LABELS,
    MAX_REQUEST_BYTES,
    assert_close,
    assert_error,
    assert_same_ranking,
    b64,
    embeddings_of,
    jpeg,
    png,
)

from siglip_serve.api import protocol as p
from siglip_serve.api.app import create_app
from siglip_serve.api.errors import install_error_handlers
from siglip_serve.api.uploads import FormRoute
from siglip_serve.config import Settings
from siglip_serve.engine.engine import Engine, EngineConfig
from siglip_serve.errors import InvalidImageError
from siglip_serve.preprocess.fetch import decode_inline_image, is_url

LABELS = ["cat", "dog", "red car", "tree"]
CAT, DOG = png(seed=21), jpeg(seed=22, width=64, height=20)


@pytest.fixture(scope="module")
def http(main_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=main_server.url, timeout=HTTP_TIMEOUT_S) as session:
        yield session


def files(*images: bytes, field: str = "image") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (f"img{i}.bin", data, "application/octet-stream")) for i, data in enumerate(images)]


def multipart(*parts: tuple[str, str | bytes]) -> dict[str, Any]:
    """httpx request arguments for a multipart/form-data body with `parts` in this order, bytes as file parts, as
    curl -F sends them (httpx's own `files=` sends a form only when there is a file, and text fields first)."""
    boundary = "siglip-serve-test-boundary"
    chunks = []
    for name, value in parts:
        disposition = f'form-data; name="{name}"' + ('; filename="upload.bin"' if isinstance(value, bytes) else "")
        chunks += [f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode(),
                   value if isinstance(value, bytes) else value.encode(), b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return {"content": b"".join(chunks), "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


def rankings(response: httpx.Response) -> list[list[tuple[str, float]]]:
    assert response.status_code == 200, response.text
    return [[(p["label"], p["score"]) for p in item["predictions"]] for item in response.json()["data"]]


def without_param(error: dict) -> str:
    """The message after its "param: " prefix: what JSON and form errors must share word for word."""
    return error["message"].removeprefix(f"{error['param']}: ") if error["param"] else error["message"]


# --- the same numbers -----------------------------------------------------------------------------------------


def test_classify_form_equals_json_and_library(http, lib_tiny):
    form = http.post("/v1/classify", files=files(CAT, DOG), data={"model": "tiny", "labels": ",".join(LABELS)})
    as_json = http.post("/v1/classify", json={"model": "tiny", "input": [b64(CAT), b64(DOG)], "labels": LABELS})
    assert form.json()["usage"] == as_json.json()["usage"]
    for got, json_row, library_row in zip(rankings(form), rankings(as_json), lib_tiny.classify([CAT, DOG], LABELS),
                                          strict=True):
        assert_same_ranking(got, json_row)
        assert_same_ranking(got, library_row)


@pytest.mark.parametrize("labels", [
    {"labels": "cat, dog ,red car,tree"},  # one field, comma-separated (spaces trimmed)
    {"labels": LABELS},  # the field repeated: each value as is
    {"labels": json.dumps(LABELS)},  # one field, a JSON array
], ids=["comma", "repeated", "json-array"])
def test_label_forms(http, lib_tiny, labels):
    got = rankings(http.post("/v1/classify", files=files(CAT), data={"model": "tiny", **labels}))
    assert_same_ranking(got[0], lib_tiny.classify([CAT], LABELS)[0])


def test_repeated_label_keeps_its_comma(http):
    response = http.post("/v1/classify", files=files(CAT), data={"model": "tiny", "labels": ["cat, sitting", "dog"]})
    assert sorted(label for label, _ in rankings(response)[0]) == ["cat, sitting", "dog"]


def test_classify_form_options_equal_json(http):
    options = {"hypothesis_template": ["a photo of {}.", "a drawing of {}."], "top_k": 2, "normalization": "softmax"}
    form = http.post("/v1/classify", files=files(DOG, field="input"),
                     data={"model": "tiny2", "labels": LABELS, **{k: v if isinstance(v, list) else str(v)
                                                                  for k, v in options.items()}})
    as_json = http.post("/v1/classify", json={"model": "tiny2", "input": [b64(DOG)], "labels": LABELS, **options})
    assert len(rankings(form)[0]) == 2
    assert_same_ranking(rankings(form)[0], rankings(as_json)[0])


def test_blank_optional_fields_are_not_given(http):
    """HTML forms and Swagger UI's "Try it out" send optional fields left blank as empty values."""
    form = http.post("/v1/classify", **multipart(("model", "tiny"), ("image", CAT), ("labels", "cat,dog"),
                                                 ("top_k", ""), ("normalization", ""), ("hypothesis_template", "")))
    as_json = http.post("/v1/classify", json={"model": "tiny", "input": [b64(CAT)], "labels": ["cat", "dog"]})
    assert_same_ranking(rankings(form)[0], rankings(as_json)[0])


def test_image_field_may_hold_base64_text(http):
    form = http.post("/v1/classify", **multipart(("model", "tiny"), ("image", b64(CAT)), ("labels", "cat,dog")))
    as_json = http.post("/v1/classify", json={"model": "tiny", "input": [b64(CAT)], "labels": ["cat", "dog"]})
    assert_same_ranking(rankings(form)[0], rankings(as_json)[0])


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_embeddings_form_equals_json_and_library(http, lib_tiny, encoding_format):
    texts = ["a photo of a cat", "two dogs"]
    form = http.post("/v1/embeddings", files=files(CAT, DOG),
                     data={"model": "tiny", "text": texts, "encoding_format": encoding_format})
    as_json = http.post("/v1/embeddings", json={"model": "tiny", "encoding_format": encoding_format, "input": [
        *({"text": t} for t in texts), {"image": b64(CAT)}, {"image": b64(DOG)}]})
    # httpx sends the text fields before the files: the form's order is texts, then images.
    got = embeddings_of(form)
    assert_close(got, embeddings_of(as_json))
    assert_close(got[:2], lib_tiny.embed_texts(texts).numpy())
    assert_close(got[2:], lib_tiny.embed_images([CAT, DOG]).numpy())
    assert form.json()["usage"] == as_json.json()["usage"]


def test_embeddings_input_field_follows_modality(http, lib_tiny):
    images = http.post("/v1/embeddings", **multipart(("model", "tiny"), ("input", b64(CAT)), ("modality", "image")))
    texts = http.post("/v1/embeddings", **multipart(("model", "tiny"), ("input", "a cat"), ("input", "a dog")))
    assert_close(embeddings_of(images), lib_tiny.embed_images([CAT]).numpy())
    assert_close(embeddings_of(texts), lib_tiny.embed_texts(["a cat", "a dog"]).numpy())


# --- the same limits and errors ------------------------------------------------------------------------------

GOOD = {"model": "tiny", "labels": "cat,dog"}
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    # name: (form data, form files as {"image": [bytes...]}, the JSON body of the same request)
    "too-many-images": (GOOD, {"image": [CAT] * (MAX_INPUTS + 1)},
                        {"model": "tiny", "labels": ["cat", "dog"], "input": [b64(CAT)] * (MAX_INPUTS + 1)}),
    "too-many-labels": ({"model": "tiny", "labels": [f"l{i}" for i in range(MAX_LABELS + 1)]}, {"image": [CAT]},
                        {"model": "tiny", "input": [b64(CAT)], "labels": [f"l{i}" for i in range(MAX_LABELS + 1)]}),
    "empty-labels": ({"model": "tiny", "labels": ""}, {"image": [CAT]},
                     {"model": "tiny", "input": [b64(CAT)], "labels": []}),
    "template-without-braces": ({**GOOD, "hypothesis_template": "a photo"}, {"image": [CAT]},
                                {"model": "tiny", "input": [b64(CAT)], "labels": ["cat", "dog"],
                                 "hypothesis_template": "a photo"}),
    "unknown-model": ({**GOOD, "model": "nope"}, {"image": [CAT]},
                      {"model": "nope", "input": [b64(CAT)], "labels": ["cat", "dog"]}),
    "top-k-zero": ({**GOOD, "top_k": "0"}, {"image": [CAT]},
                   {"model": "tiny", "input": [b64(CAT)], "labels": ["cat", "dog"], "top_k": 0}),
    "top-k-not-a-number": ({**GOOD, "top_k": "many"}, {"image": [CAT]},
                           {"model": "tiny", "input": [b64(CAT)], "labels": ["cat", "dog"], "top_k": "many"}),
    "unknown-field": ({**GOOD, "bogus": "1"}, {"image": [CAT]},
                      {"model": "tiny", "input": [b64(CAT)], "labels": ["cat", "dog"], "bogus": "1"}),
    "no-labels": ({"model": "tiny"}, {"image": [CAT]}, {"model": "tiny", "input": [b64(CAT)]}),
    "model-twice": ({**GOOD, "model": ["tiny", "tiny2"]}, {"image": [CAT]},
                    {"model": ["tiny", "tiny2"], "input": [b64(CAT)], "labels": ["cat", "dog"]}),
    "body-over-the-limit": (GOOD, {"image": [b"\0" * MAX_REQUEST_BYTES]},
                            {"model": "tiny", "labels": ["cat", "dog"], "input": [b64(b"\0" * MAX_REQUEST_BYTES)]}),
}


@pytest.mark.parametrize("case", CASES)
def test_form_errors_equal_json_errors(http, case):
    data, form_files, body = CASES[case]
    form = http.post("/v1/classify", data=data, files=[(name, (f"f{i}", content, "application/octet-stream"))
                                                       for name, contents in form_files.items()
                                                       for i, content in enumerate(contents)] or None)
    as_json = http.post("/v1/classify", json=body)
    expected = assert_error(as_json, as_json.status_code)
    assert 400 <= as_json.status_code < 500
    got = assert_error(form, as_json.status_code, param=expected["param"])
    assert (got["type"], got["code"], got["message"]) == (expected["type"], expected["code"], expected["message"])
    assert http.post("/v1/classify", files=files(CAT), data=GOOD).status_code == 200


def test_form_without_images_is_refused_like_json(http):
    form = http.post("/v1/classify", **multipart(("model", "tiny"), ("labels", "cat,dog")))
    as_json = http.post("/v1/classify", json={"model": "tiny", "labels": ["cat", "dog"]})
    expected = assert_error(as_json, 422, param="input")
    assert assert_error(form, 422, param="input")["message"] == expected["message"]


def test_embeddings_form_keeps_the_order_sent(http, lib_tiny):
    response = http.post("/v1/embeddings", **multipart(("model", "tiny"), ("image", DOG), ("text", "a cat"),
                                                       ("image", CAT)))
    got = embeddings_of(response)
    assert_close(got[[0, 2]], lib_tiny.embed_images([DOG, CAT]).numpy())
    assert_close(got[1:2], lib_tiny.embed_texts(["a cat"]).numpy())


def test_bad_image_is_named_by_its_part(http):
    form = http.post("/v1/classify", files=files(CAT, b"not an image"), data=GOOD)
    as_json = http.post("/v1/classify", json={"model": "tiny", "labels": ["cat", "dog"],
                                              "input": [b64(CAT), b64(b"not an image")]})
    got = assert_error(form, 400, param="image[1]")
    expected = assert_error(as_json, 400, param="input[1]")
    assert got["code"] == expected["code"] == "InvalidImageError"
    assert without_param(got) == without_param(expected)


def test_embeddings_errors_name_the_part(http):
    response = http.post("/v1/embeddings", **multipart(("model", "tiny"), ("text", "a cat"), ("text", "")))
    assert_error(response, 400, param="text[1]")
    assert_error(http.post("/v1/embeddings", data={"model": "tiny", "text": "a cat"},
                           files=files(CAT, b"junk")), 400, param="image[1]")


@pytest.mark.parametrize(("data", "form_files", "param"), [
    ({"model": "tiny"}, {"labels": b"cat,dog", "image": CAT}, "labels[0]"),  # a file where text belongs
    ({"model": "tiny", "labels": "[cat"}, {"image": CAT}, "labels"),  # looks like a JSON array, is not one
])
def test_form_field_errors(http, data, form_files, param):
    response = http.post("/v1/classify", data=data, files={k: ("f", v) for k, v in form_files.items()})
    error = assert_error(response, 400, param=param)
    assert error["code"] == "InvalidFormError"


def test_body_that_is_not_a_form(http):
    response = http.post("/v1/classify", content=b"a body without parts",
                         headers={"Content-Type": "multipart/form-data"})  # no boundary
    error = assert_error(response, 400, contains="multipart/form-data")
    assert error["code"] == "InvalidFormError"


def test_form_needs_the_key_like_json(strict_server):
    url = f"{strict_server.url}/v1/classify"
    assert_error(httpx.post(url, files=files(CAT), data=GOOD, timeout=HTTP_TIMEOUT_S), 401)
    authorized = httpx.post(url, files=files(CAT), data=GOOD, timeout=HTTP_TIMEOUT_S,
                            headers={"Authorization": f"Bearer {API_KEYS[0]}"})
    assert authorized.status_code == 200, authorized.text


def test_file_over_the_image_limit_is_refused_like_inline_data(tmp_path):
    """--max-image-bytes below the body limit: a file over it gets the inline-data error (in-process, fake model)."""
    settings = Settings(model=["fake"], max_image_bytes=8)
    app = create_app(settings, Engine({"fake": FakeBackend()}, EngineConfig.from_settings(settings)))

    async def main() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=HTTP_TIMEOUT_S) as c:
                over = await c.post("/v1/classify", files=files(b"img:1", b"img:1 and more"), data={"labels": "a"})
                inline = await c.post("/v1/classify", json={"input": [b64(b"img:1"), b64(b"img:1 and more")],
                                                            "labels": ["a"]})
                within = await c.post("/v1/classify", files=files(b"img:1"), data={"labels": "a"})
                return over, inline, within

    over, inline, within = asyncio.run(asyncio.wait_for(main(), HTTP_TIMEOUT_S))
    got, expected = assert_error(over, 400, param="image[1]"), assert_error(inline, 400, param="input[1]")
    assert without_param(got) == without_param(expected) == "image data is larger than the limit of 8 bytes"
    assert within.status_code == 200, within.text


# --- a local path sent as an image ---------------------------------------------------------------------------

PATHS = ["/home/me/cat.jpg", "./cat.jpg", "../photos/cat.png", "C:\\Users\\me\\cat.png", "C:/x.png", "cat.jpg",
         "~/cat.webp", "photos\\cat.jpeg", "my photos/cat one.png"]


@pytest.mark.parametrize("path", PATHS)
def test_local_path_says_to_upload_or_base64(path):
    assert not is_url(path)
    with pytest.raises(InvalidImageError) as info:
        decode_inline_image(path, max_bytes=1000)
    assert "looks like a file path" in str(info.value)
    assert "multipart/form-data" in str(info.value) and "base64" in str(info.value)


@pytest.mark.parametrize("text", ["not base64!", "QUJD=QUJD", "A", "QUJDé", "SGVsbG8.."])
def test_bad_base64_is_still_bad_base64(text):
    with pytest.raises(InvalidImageError, match="invalid base64 image data"):
        decode_inline_image(text, max_bytes=1000)


def test_base64_that_looks_like_a_path_is_decoded():
    data = bytes([0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10])  # a JPEG's first bytes: its base64 starts with "/9j/"
    encoded = base64.b64encode(data).decode()
    assert encoded.startswith("/9j/")
    assert decode_inline_image(encoded, max_bytes=1000) == data


def test_local_path_on_the_server(http):
    response = http.post("/v1/classify", json={"model": "tiny", "input": [b64(CAT), "/home/me/cat.jpg"],
                                               "labels": ["cat"]})
    error = assert_error(response, 400, param="input[1]", contains="looks like a file path")
    assert "-F image=@" in error["message"] and "base64" in error["message"]
    bad = assert_error(http.post("/v1/classify", json={"model": "tiny", "input": ["not base64!"], "labels": ["a"]}),
                       400, param="input[0]")
    assert "invalid base64 image data" in bad["message"]


def test_file_url_says_to_upload(http):
    error = assert_error(http.post("/v1/embeddings", json={"model": "tiny", "modality": "image",
                                                           "input": ["file:///home/me/cat.jpg"]}), 400,
                         param="input[0]", contains="unsupported URL scheme 'file'")
    assert "multipart/form-data" in error["message"]


def test_uploads_leave_the_server_healthy(http, lib_tiny):
    """After every error above, a form request still gets the library's numbers."""
    got = embeddings_of(http.post("/v1/embeddings", files=files(DOG), data={"model": "tiny"}))
    assert_close(got, lib_tiny.embed_images([DOG]).numpy())
    assert np.isfinite(got).all()


# --- collection ingest: the form the lead's route takes once its router uses FormRoute -------------------------


def ingest_app() -> FastAPI:
    """A route shaped like POST /v1/collections/{name}/items on a FormRoute router, answering what it was given."""
    app = FastAPI()
    install_error_handlers(app)
    app.state.settings = Settings(model=["fake"])
    router = APIRouter(route_class=FormRoute)

    @router.post("/items")
    async def items(body: p.ItemsRequest) -> list[dict[str, Any]]:
        inputs = [item.to_input(f"items[{i}]") for i, item in enumerate(body.items)]
        return [{"param": x.param, "image": base64.b64encode(x.image).decode() if isinstance(x.image, bytes)
                 else x.image, "text": x.text, "id": item.id, "metadata": item.metadata}
                for x, item in zip(inputs, body.items, strict=True)]

    app.include_router(router)
    return app


def post_ingest(**kwargs: Any) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=ingest_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=HTTP_TIMEOUT_S) as c:
            return await c.post("/items", **kwargs)

    return asyncio.run(asyncio.wait_for(main(), HTTP_TIMEOUT_S))


def test_ingest_form_items_in_order_with_ids_and_metadata():
    response = post_ingest(**multipart(("image", CAT), ("id", "cat"), ("metadata", '{"kind": "pet"}'),
                                       ("text", "a red car"), ("id", "car"), ("metadata", "{}"),
                                       ("image", b64(DOG)), ("id", "dog"), ("metadata", '{"n": 2}'),
                                       ("model", "tiny")))
    assert response.status_code == 200, response.text
    assert response.json() == [
        {"param": "image[0]", "image": b64(CAT), "text": None, "id": "cat", "metadata": {"kind": "pet"}},
        {"param": "items[1]", "image": None, "text": "a red car", "id": "car", "metadata": {}},
        {"param": "image[1]", "image": b64(DOG), "text": None, "id": "dog", "metadata": {"n": 2}},
    ]


def test_ingest_form_without_ids_or_metadata():
    response = post_ingest(files=files(CAT, DOG))
    assert [(item["param"], item["id"], item["metadata"]) for item in response.json()] == [
        ("image[0]", None, {}), ("image[1]", None, {})]


@pytest.mark.parametrize(("parts", "status", "param"), [
    ((("image", CAT), ("image", DOG), ("id", "only-one")), 400, "id"),  # ids must pair with items
    ((("image", CAT), ("metadata", "{not json")), 400, "metadata[0]"),
    ((("image", CAT), ("metadata", "[1, 2]")), 422, "items[0].metadata"),  # JSON, not an object: the model says
    ((("image", CAT), ("bogus", "1")), 422, "bogus"),
    ((("text", b"a file"),), 400, "text[0]"),
])
def test_ingest_form_errors(parts, status, param):
    assert_error(post_ingest(**multipart(*parts)), status, param=param)
