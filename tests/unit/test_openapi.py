"""The OpenAPI document (/openapi.json) lists every error a route can answer, with OpenAI's error body, and each
error the app really answers is listed for its route with its `code`; response fields are described; the
multipart form of /v1/classify and /v1/embeddings is documented; form-only types stay out of the JSON schemas.
In-process, over the analytic fake backend."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fakes import FakeBackend

from siglip_serve.api.app import create_app
from siglip_serve.config import Settings
from siglip_serve.engine.engine import Engine

GUARD_S = 30.0  # hang guard only
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
GOOD_IMAGE = base64.b64encode(b"img:1").decode()  # the fake backend's image format


def run_app(test: Callable[[httpx.AsyncClient], Awaitable[Any]], **settings: Any) -> Any:
    app = create_app(Settings(model=["fake"], **settings), Engine({"fake": FakeBackend()}))

    async def main() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=GUARD_S) as c:
                return await test(c)

    return asyncio.run(asyncio.wait_for(main(), GUARD_S))


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    async def get(client: httpx.AsyncClient) -> dict[str, Any]:
        response = await client.get("/openapi.json")
        assert response.status_code == 200
        return response.json()

    return run_app(get)


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


# --- every route's errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "statuses"), [
    ("POST", "/v1/classify", {400, 401, 403, 404, 408, 413, 414, 422, 429, 431, 500, 503, 504}),
    ("POST", "/v1/embeddings", {400, 401, 403, 404, 408, 413, 414, 422, 429, 431, 500, 503, 504}),
    ("POST", "/v1/rerank", {400, 401, 403, 404, 408, 413, 414, 422, 429, 431, 500, 503, 504}),
    ("POST", "/models/{model}", {400, 401, 403, 404, 408, 413, 414, 422, 429, 431, 500, 503, 504}),
    ("GET", "/v1/models", {401, 403, 414, 429, 431, 500, 503}),
    ("GET", "/health", {414, 431, 500, 503}),
    ("POST", "/v1/collections/{name}/search", {400, 401, 404, 409, 413, 422, 429, 503, 504}),
    ("POST", "/v1/vision/features", {400, 401, 404, 413, 422, 429, 503, 504}),
    ("POST", "/v1/admin/keys", {400, 401, 403, 404, 409, 422, 503}),
])
def test_route_lists_its_error_statuses(schema, method, path, statuses):
    op = schema["paths"][path][method.lower()]
    documented = {int(status) for status in op["responses"] if status.startswith(("4", "5"))}
    assert statuses <= documented, f"{method} {path}: missing {sorted(statuses - documented)}"
    if method == "GET":  # a body-less route has no body errors
        assert not documented & {408, 413}, documented


def test_every_error_response_is_openais_body(schema):
    for method, path, op in operations(schema):
        errors = {status: r for status, r in op["responses"].items() if status.startswith(("4", "5"))}
        assert errors, f"{method} {path} documents no error"
        for status, response in errors.items():
            assert response["content"]["application/json"]["schema"] == ERROR_REF, (method, path, status)
            assert "`code` says which" in response["description"], (method, path, status)
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's 422 shape is not ours


def test_error_body_and_its_fields_are_described(schema):
    detail = schema["components"]["schemas"]["ErrorDetail"]
    assert set(detail["properties"]) == {"message", "type", "param", "code"}
    assert all(prop.get("description") for prop in detail["properties"].values())


def test_statuses_name_their_codes_and_headers(schema):
    responses = schema["paths"]["/v1/classify"]["post"]["responses"]
    for status, codes in {"400": ["InvalidImageError", "TooManyInputsError", "InvalidTemplateError",
                                  "InvalidFormError", "invalid_json"],
                          "404": ["UnknownModelError"], "413": ["RequestTooLargeError"],
                          "422": ["invalid_field"], "429": ["rate_limit_exceeded", "QueueFullError"],
                          "503": ["EngineUnavailableError"], "504": ["DeadlineExceededError"]}.items():
        for code in codes:
            assert f"`{code}`" in responses[status]["description"], (status, code)
    assert "Retry-After" in responses["429"]["headers"]
    assert "Retry-After" in responses["503"]["headers"]
    assert "WWW-Authenticate" in responses["401"]["headers"]


# The app's real answers: each (status, code) must be documented for the route that gave it.
REAL_ERRORS: list[tuple[str, str, dict[str, Any] | bytes]] = [
    ("POST", "/v1/classify", {"input": [GOOD_IMAGE], "labels": []}),  # EmptyInputError
    ("POST", "/v1/classify", {"input": ["bm90IGFuIGltYWdl"], "labels": ["a"]}),  # InvalidImageError
    ("POST", "/v1/classify", {"input": [GOOD_IMAGE], "labels": ["a"], "hypothesis_template": "x"}),
    ("POST", "/v1/classify", {"model": "nope", "input": [GOOD_IMAGE], "labels": ["a"]}),  # UnknownModelError
    ("POST", "/v1/classify", {"input": [GOOD_IMAGE], "labels": ["a"], "top_k": 0}),  # invalid_field
    ("POST", "/v1/classify", b"{not json"),  # invalid_json
    ("POST", "/v1/classify", {"input": [GOOD_IMAGE] * 3, "labels": ["a"]}),  # TooManyInputsError
    ("POST", "/v1/embeddings", {"input": "x" * 300}),  # RequestTooLargeError
    ("POST", "/v1/embeddings", {"input": ["a"], "dimensions": 3}),  # InvalidParameterError
    ("POST", "/v1/rerank", {"query": "a", "documents": []}),  # EmptyInputError
    ("POST", "/models/nope", {"inputs": GOOD_IMAGE, "parameters": {"candidate_labels": "a"}}),
    ("POST", "/v1/collections", {"name": "a"}),  # no store: EngineUnavailableError
    ("POST", "/v1/admin/keys", {"name": "a"}),  # no key database: AccountsUnavailableError
]


def test_real_errors_are_documented_for_their_route(schema):
    async def answers(client: httpx.AsyncClient) -> list[httpx.Response]:
        out = []
        for method, path, body in REAL_ERRORS:
            kwargs = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) \
                else {"json": body}
            out.append(await client.request(method, path, **kwargs))
        return out

    responses = run_app(answers, max_inputs=2, max_request_bytes=256)
    for (method, path, _), response in zip(REAL_ERRORS, responses, strict=True):
        assert response.status_code >= 400, (path, response.text)
        code = response.json()["error"]["code"]
        template = "/models/{model}" if path.startswith("/models/") else path
        documented = schema["paths"][template][method.lower()]["responses"].get(str(response.status_code))
        assert documented is not None, f"{method} {path} answered {response.status_code}, not documented"
        assert f"`{code}`" in documented["description"], f"{method} {path}: {code} not in {response.status_code}"


# --- response fields, the form, the security scheme ---------------------------------------------------------


@pytest.mark.parametrize("model", ["EmbeddingsResponse", "EmbeddingData", "Usage", "ClassifyResponse",
                                   "Classification", "LabelScore", "RerankResponse", "RerankResult"])
def test_response_fields_are_described(schema, model):
    properties = schema["components"]["schemas"][model]["properties"]
    undescribed = [name for name, prop in properties.items() if name != "object" and not prop.get("description")]
    assert not undescribed, f"{model}: {undescribed}"


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/embeddings"])
def test_multipart_form_is_documented(schema, path):
    content = schema["paths"][path]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    form = content["multipart/form-data"]["schema"]["properties"]
    assert form["image"]["items"]["format"] == "binary"  # a file picker in /docs
    assert "model" in form


def test_json_only_routes_document_no_form(schema):
    assert set(schema["paths"]["/v1/rerank"]["post"]["requestBody"]["content"]) == {"application/json"}


def test_form_items_stay_out_of_the_json_schema(schema):
    schemas = schema["components"]["schemas"]
    assert "Input" not in schemas
    items = schemas["ClassifyRequest"]["properties"]["input"]["anyOf"][1]["items"]["anyOf"]
    assert items == [{"type": "string"}, {"$ref": "#/components/schemas/ImageItem"}]


def test_bearer_keys_are_declared(schema):
    bearer = schema["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    assert schema["security"] == [{}, {"bearer": []}]  # optional: a server without keys needs none
