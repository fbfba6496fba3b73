"""multipart/form-data bodies for the JSON routes (issue #16): ``curl -F image=@cat.jpg -F labels=cat,dog``.

A form becomes the dict its route's JSON body would be, and FastAPI validates that dict with the route's own
request model: a form meets the same checks, limits and error messages as JSON, in one code path. Each file
becomes an `Input` holding its bytes, which the engine decodes as they are (no base64 round trip), named by its
form field and its position among the parts of that name (``image[1]``), so errors point at the file. Text
values of an image field are URLs, data URIs or base64, as in JSON.

`FormRoute` is the whole wiring: a router made with ``APIRouter(route_class=FormRoute)`` takes forms on every
route whose request model is in `FORMS` (JSON bodies are untouched), and documents the form in OpenAPI.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from siglip_serve.api import protocol as p
from siglip_serve.config import Settings
from siglip_serve.engine.inputs import Input
from siglip_serve.errors import InvalidFormError, InvalidImageError, TooManyInputsError, shown

FORM_TYPE = "multipart/form-data"
# A file part. Swagger UI 5 shows a file picker only for format: binary (OpenAPI 3.0's way); for FastAPI's OpenAPI
# 3.1 contentMediaType alone it shows a text box.
FILE_SCHEMA = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
# Parsed parts are objects (a file is a spooled temporary file): their count is bounded apart from the body size,
# loosely enough that the request model's own limits (--max-inputs, --max-labels) answer first, in their words.
MIN_PART_LIMIT = 64


@dataclass(frozen=True)
class Part:
    """One part of a form: its field name, its position among the parts of that name, and a file's bytes or a
    field's text."""

    name: str
    index: int
    value: str | bytes

    @property
    def param(self) -> str:
        return f"{self.name}[{self.index}]"


@dataclass(frozen=True)
class Form:
    """A parsed form: every part, in the order sent."""

    parts: tuple[Part, ...]

    def named(self, *names: str) -> list[Part]:
        return [part for part in self.parts if part.name in names]

    def texts(self, name: str) -> list[str]:
        """The values of a text field; a file there is an error."""
        values = []
        for part in self.named(name):
            if not isinstance(part.value, str):
                raise InvalidFormError(f"{name} must be a text field, not a file", param=part.param)
            values.append(part.value)
        return values

    def fields(self, *, besides: set[str]) -> dict[str, Any]:
        """The remaining text fields as the JSON body has them: sent once, the value; repeated, the list of
        values (which the model then refuses for a single-valued field, naming it). A field sent once and empty
        is left out, as FastAPI's own forms do: HTML forms and Swagger UI send optional fields left blank."""
        body: dict[str, Any] = {}
        for name in dict.fromkeys(part.name for part in self.parts if part.name not in besides):
            values = self.texts(name)
            if values != [""]:
                body[name] = values[0] if len(values) == 1 else values
        return body


async def read_form(request: Request, settings: Settings) -> Form:
    """Parse a multipart/form-data body (already bounded by --max-request-bytes); files over --max-image-bytes
    are refused as inline images are. Raises `InvalidFormError` for a body that is not a form."""
    # An ingest item may take three parts (image, id, metadata).
    items = max(settings.max_inputs, settings.max_collection_items)
    part_limit = max(MIN_PART_LIMIT, 2 * (3 * items + settings.max_labels + settings.max_templates))
    parser = MultiPartParser(request.headers, request.stream(), max_files=part_limit, max_fields=part_limit,
                             max_part_size=settings.max_request_bytes)  # text fields: --max-text-chars says
    try:
        parsed = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many"):
            raise TooManyInputsError(f"{exc.message} (the limit follows --max-inputs, --max-collection-items and "
                                     "--max-labels)",
                                     param="body") from None
        raise InvalidFormError(f"not a valid multipart/form-data body: {exc.message}", param="body") from None
    counts: dict[str, int] = {}
    parts = []
    try:
        for name, value in parsed.multi_items():
            index = counts[name] = counts.get(name, -1) + 1
            if isinstance(value, UploadFile):
                part = Part(name, index, await value.read())
                if len(part.value) > settings.max_image_bytes:  # the words of preprocess.fetch's inline limit
                    raise InvalidImageError(f"image data is larger than the limit of {settings.max_image_bytes} "
                                            "bytes", param=part.param)
            else:
                part = Part(name, index, value)
            parts.append(part)
    finally:
        await parsed.close()
    return Form(tuple(parts))


# --- forms of the routes: form -> the JSON body's dict ---------------------------------------------------------


def image_input(part: Part) -> Input:
    return Input(param=part.param, image=part.value)


def text_list(form: Form, name: str) -> list[str] | None:
    """A list field: repeated (each value as is), or sent once as a JSON array or comma-separated values."""
    values = form.texts(name)
    if not values:
        return None
    if len(values) > 1:
        return values
    value = values[0].strip()
    if value.startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidFormError(f"{name} starts like a JSON array but is not one: {exc}", param=name) from None
    return [label.strip() for label in value.split(",") if label.strip()]


def with_list(body: dict[str, Any], name: str, values: list[Any] | None) -> dict[str, Any]:
    return body if values is None else {**body, name: values}


def classify_body(form: Form) -> dict[str, Any]:
    """`image` (or `input`) parts: files, or URLs, data URIs or base64; `labels`: see `text_list`;
    `hypothesis_template` once or repeated; the other fields as in JSON."""
    body = form.fields(besides={"image", "input", "labels", "hypothesis_template"})
    images = [image_input(part) for part in form.named("image", "input")]
    body = with_list(body, "input", images or None)
    body = with_list(body, "labels", text_list(form, "labels"))
    templates = [template for template in form.texts("hypothesis_template") if template]  # blank: not given
    if templates:
        body["hypothesis_template"] = templates[0] if len(templates) == 1 else templates
    return body


def embeddings_body(form: Form) -> dict[str, Any]:
    """`image` parts: images (files, or URLs, data URIs or base64); `text` parts: texts; `input` parts: files
    are images, text values are what `modality` says (as plain strings in JSON). All in the order sent."""
    body = form.fields(besides={"image", "text", "input"})
    plain = "image" if body.get("modality") == "image" else "text"
    items = []
    for part in form.named("image", "text", "input"):
        if part.name == "text" and not isinstance(part.value, str):
            raise InvalidFormError("text must be a text field, not a file", param=part.param)
        if part.name == "image" or isinstance(part.value, bytes) or plain == "image":
            items.append(image_input(part))
        else:
            items.append(Input(param=part.param, text=part.value))
    return with_list(body, "input", items or None)


def items_body(form: Form) -> dict[str, Any]:
    """Collection ingest: one item per `image` part (file, or URL, data URI or base64) or `text` part, in the
    order sent; `id` and `metadata` (a JSON object), if sent, once per item in the same order."""
    body = form.fields(besides={"image", "text", "id", "metadata"})
    sources = form.named("image", "text")
    ids, metadata = form.texts("id"), form.texts("metadata")
    for name, values in (("id", ids), ("metadata", metadata)):
        if values and len(values) != len(sources):
            raise InvalidFormError(f"{len(values)} {name} fields for {len(sources)} items: send one per image or "
                                   "text part, in the same order, or none", param=name)
    items: list[dict[str, Any]] = []
    for i, part in enumerate(sources):
        if part.name == "text":
            if not isinstance(part.value, str):
                raise InvalidFormError("text must be a text field, not a file", param=part.param)
            item: dict[str, Any] = {"text": part.value}
        else:
            item = {"image": image_input(part)}
        if ids:
            item["id"] = ids[i]
        if metadata:
            item["metadata"] = _json_object(metadata[i], param=f"metadata[{i}]")
        items.append(item)
    return with_list(body, "items", items or None)


def _json_object(text: str, *, param: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidFormError(f"metadata {shown(text)} is not valid JSON: {exc}", param=param) from None


@dataclass(frozen=True)
class FormSpec:
    """How a request model is sent as a form: the converter, and the OpenAPI schema of the fields that differ
    from the model's own (the rest are documented as the model documents them)."""

    to_body: Callable[[Form], dict[str, Any]]
    fields: dict[str, dict[str, Any]]
    replaces: tuple[str, ...]
    required: tuple[str, ...]


def _files(description: str) -> dict[str, Any]:
    return {"type": "array", "items": FILE_SCHEMA, "description": description}


def _texts(description: str) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string"}, "description": description}


FORMS: dict[type[BaseModel], FormSpec] = {
    p.ClassifyRequest: FormSpec(
        classify_body,
        {"image": _files("Image files (repeat the field); a text value is a URL, data URI or base64. Errors "
                         "name the part: image[1]. `input` is accepted as the same field."),
         "labels": _texts("Candidate labels: repeat the field, or send one comma-separated value "
                          "(labels=cat,dog), or one JSON array."),
         "hypothesis_template": _texts('Template with "{}"; repeat the field to ensemble.')},
        replaces=("input", "labels", "hypothesis_template"), required=("image", "labels")),
    p.EmbeddingsRequest: FormSpec(
        embeddings_body,
        {"image": _files("Image files (repeat the field); a text value is a URL, data URI or base64."),
         "text": _texts("Texts to embed (repeat the field)."),
         "input": _texts("Files are images; text values are what `modality` says.")},
        replaces=("input",), required=()),
    p.ItemsRequest: FormSpec(
        items_body,
        {"image": _files("One item per image file (repeat the field); a text value is a URL, data URI or base64."),
         "text": _texts("One text item per value."),
         "id": _texts("Optional: one id per item, in order."),
         "metadata": _texts("Optional: one JSON object per item, in order.")},
        replaces=("items",), required=()),
}


def form_schema(model: type[BaseModel], spec: FormSpec) -> dict[str, Any]:
    """The form's OpenAPI schema: the model's own fields, with `spec.fields` in place of `spec.replaces`."""
    own = model.model_json_schema(ref_template="#/components/schemas/{model}")
    properties = {name: schema for name, schema in own.get("properties", {}).items() if name not in spec.replaces}
    return {"type": "object", "properties": {**spec.fields, **properties}, "required": list(spec.required)}


class _FormAsJson(Request):
    """The request as FastAPI's JSON path reads it: JSON content type, and the form's dict as its JSON."""

    def __init__(self, request: Request, body: dict[str, Any]) -> None:
        headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
        super().__init__({**request.scope, "headers": [*headers, (b"content-type", b"application/json")]},
                         request.receive)
        self._form_body = body

    async def body(self) -> bytes:
        return b"{}"  # FastAPI reads the JSON only from a non-empty body; `json()` is what it then validates

    async def json(self) -> Any:
        return self._form_body


def is_form(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == FORM_TYPE


class FormRoute(APIRoute):
    """An APIRoute that also takes its body as multipart/form-data when its request model is in `FORMS`."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        model, spec = self._form()
        if model is not None and spec is not None:
            extra = self.openapi_extra or {}
            body = extra.get("requestBody", {})
            form = {"schema": form_schema(model, spec)}
            self.openapi_extra = {**extra, "requestBody": {**body, "content": {**body.get("content", {}),
                                                                               FORM_TYPE: form}}}

    def _form(self) -> tuple[type[BaseModel] | None, FormSpec | None]:
        model = self.body_field.field_info.annotation if self.body_field is not None else None
        if not isinstance(model, type) or model not in FORMS:
            return None, None
        return model, FORMS[model]

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()  # called by APIRoute.__init__, once body_field is known
        _, spec = self._form()
        if spec is None:
            return handler

        async def form_or_json(request: Request) -> Response:
            if not is_form(request):
                return await handler(request)
            form = await read_form(request, request.app.state.settings)
            return await handler(_FormAsJson(request, spec.to_body(form)))

        return form_or_json
