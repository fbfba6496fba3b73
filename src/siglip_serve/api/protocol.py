"""Request and response models: OpenAI's embeddings shape, our classify and rerank, HF's zero-shot shape.

Pydantic only; no torch. `to_inputs()` turns a request's items into the engine's `Input`s,
each named by its field so that errors point at the offending item.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import CoreSchema, core_schema

from siglip_serve.accounts.types import Limits, NewKey
from siglip_serve.engine.inputs import Input
from siglip_serve.templates import DEFAULT_TEMPLATE


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextItem(Strict):
    text: str


class ImageItem(Strict):
    image: str = Field(description="An http(s) URL, a data: URI or raw base64 image bytes.")


Item = str | TextItem | ImageItem


class _IsInput:
    """Matches an `Input` instance only (pydantic's InstanceOf would also put Input in the OpenAPI schemas)."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.is_instance_schema(Input)


# An item of a multipart/form-data body (api.uploads): an uploaded file's bytes, or a form field's text, already
# named by its field (image[1]). Only an `Input` instance matches, which JSON can never produce, and the schema
# leaves it out: JSON bodies and their documentation are as without it, and a form is validated by the same model.
FormInput = SkipJsonSchema[Annotated[Input, _IsInput()]]


def to_input(item: Item | Input, param: str, *, plain: Literal["text", "image"]) -> Input:
    if isinstance(item, Input):
        return item
    if isinstance(item, TextItem):
        return Input(param=param, text=item.text)
    if isinstance(item, ImageItem):
        return Input(param=param, image=item.image)
    return Input(param=param, text=item) if plain == "text" else Input(param=param, image=item)


# --- /v1/embeddings ---------------------------------------------------------------


class EmbeddingsRequest(BaseModel):
    # OpenAI clients may send fields we do not use (user); unknown fields are ignored here.
    model: str | None = None
    input: str | list[Item | FormInput] = Field(
        description="A string, or a list of strings, {text} and {image} objects.")
    modality: Literal["text", "image"] = Field("text", description="What plain strings in `input` are.")
    encoding_format: Literal["float", "base64"] = "float"
    normalize: bool = Field(True, description="L2-normalize the embeddings (false: raw tower output).")
    dimensions: int | None = Field(None, description="Must equal the model's embedding size if given.")
    user: str | None = None

    def to_inputs(self) -> list[Input]:
        items = [self.input] if isinstance(self.input, str) else self.input
        return [to_input(item, f"input[{i}]", plain=self.modality) for i, item in enumerate(items)]


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int = Field(description="The input's position in the request.")
    embedding: list[float] | str = Field(description="The embedding: floats, or with encoding_format=base64 the "
                                         "base64 of its little-endian float32 bytes.")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Text tokens plus image tokens (each image counts its patches).")
    total_tokens: int = Field(description="Equal to prompt_tokens: nothing is generated.")
    text_tokens: int = Field(0, description="Text tokens encoded; a label served from the label cache counts none.")
    images: int = Field(0, description="Images encoded.")
    cost_usd: float = Field(0.0, description="What the request cost at the model's configured prices (see "
                            "/v1/models; the default price is an example).")


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData] = Field(description="One embedding per input, in request order.")
    model: str = Field(description="The served model's name.")
    usage: Usage = Field(description="What the request used, and its cost.")


# --- /v1/classify -------------------------------------------------------------------


class ClassifyRequest(Strict):
    model: str | None = None
    input: str | list[str | ImageItem | FormInput] = Field(
        description="Images: URL, data URI, base64, or {image}.")
    labels: list[str] = Field(description="Candidate labels.")
    hypothesis_template: str | list[str] | None = Field(
        None, description=f'Template with "{{}}" or a list to ensemble. Default "{DEFAULT_TEMPLATE}"')
    top_k: int | None = Field(None, ge=1)
    normalization: Literal["sigmoid", "softmax"] = "sigmoid"

    def to_inputs(self) -> list[Input]:
        items = [self.input] if isinstance(self.input, str) else self.input
        return [to_input(item, f"input[{i}]", plain="image") for i, item in enumerate(items)]


class LabelScore(BaseModel):
    label: str = Field(description="A candidate label as it was sent.")
    score: float = Field(description="sigmoid: SigLIP's independent probability of the (image, label) pair; "
                         "softmax: the share among the labels.")


class Classification(BaseModel):
    object: Literal["classification"] = "classification"
    index: int = Field(description="The image's position in the request.")
    prediction: str = Field(description="The best label.")
    score: float = Field(description="The best label's score.")
    predictions: list[LabelScore] = Field(description="Labels best first (top_k of them if given).")


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str = Field(description="The served model's name.")
    data: list[Classification] = Field(description="One classification per image, in request order.")
    usage: Usage = Field(description="What the request used, and its cost.")


# --- /v1/rerank ---------------------------------------------------------------------


class RerankRequest(Strict):
    model: str | None = None
    query: Item = Field(description="A text, {text} or {image}.")
    documents: list[Item] = Field(description="Texts, {text} or {image} objects.")
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False

    def to_query(self) -> Input:
        return to_input(self.query, "query", plain="text")

    def to_documents(self) -> list[Input]:
        return [to_input(d, f"documents[{i}]", plain="text") for i, d in enumerate(self.documents)]


class RerankResult(BaseModel):
    index: int = Field(description="The document's position in the request.")
    relevance_score: float = Field(description="SigLIP's sigmoid probability of the (query, document) pair.")
    document: TextItem | ImageItem | None = Field(None, description="The document, with return_documents.")


class RerankResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str = Field(description="The served model's name.")
    results: list[RerankResult] = Field(description="Documents best first (top_n of them if given).")
    usage: Usage = Field(description="What the request used, and its cost.")


# --- HF Inference API: zero-shot-image-classification ----------------------------------


class HFZeroShotParameters(BaseModel):
    candidate_labels: list[str] | str
    hypothesis_template: str | None = None

    def labels(self) -> list[str]:
        if isinstance(self.candidate_labels, str):  # the HF widget sends "a, b, c"
            return [label.strip() for label in self.candidate_labels.split(",") if label.strip()]
        return self.candidate_labels


class HFZeroShotRequest(BaseModel):
    inputs: str = Field(description="Base64 image bytes or an image URL.")
    parameters: HFZeroShotParameters


# --- /v1/models -----------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "siglip-serve"
    family: str
    format: str
    image_size: int | None = Field(description="Square input side; null for NaFlex (variable size).")
    max_num_patches: int | None = Field(None, description="NaFlex patch budget per image.")
    patch_size: int
    embedding_size: int
    text_length: int
    # What the model pages show (issue #17); facts from the checkpoint registry, models/known_checkpoints.toml.
    task: str = Field("zero-shot-image-classification", description="Hugging Face task; the model also serves "
                      "/v1/embeddings and /v1/rerank.")
    architecture: str = Field(description="e.g. 'SigLIP 2 ViT-So400m/14'.")
    input_resolution: str = Field(description="e.g. '384x384', or 'NaFlex: up to 256 patches of 16x16'.")
    parameters: int | None = Field(None, description="Parameters of both towers; null when the checkpoint is "
                                   "not in the registry.")
    license: str | None = Field(None, description="SPDX id of the weights' license; null when unknown.")
    pricing: ModelPricing


class ModelPricing(BaseModel):
    currency: Literal["USD"] = "USD"
    per_1k_images: float
    per_1m_text_tokens: float
    example: bool = Field(description="True while this is the built-in example price, not one that was configured "
                          "(--price-per-1k-images, --price-per-1m-text-tokens, --model-price).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- /v1/collections ------------------------------------------------------------------

MetadataValue = str | int | float | bool | None


class CollectionCreateRequest(Strict):
    name: str = Field(description="1-128 letters, digits, '-', '_' or '.', starting with a letter or digit.")
    model: str | None = Field(None, description="The served model whose embeddings the collection holds "
                              "(default: the only one served).")


class Collection(BaseModel):
    object: Literal["collection"] = "collection"
    name: str
    model: str = Field(description="The model its vectors were made with; searches and ingests must use it.")
    embedding_size: int
    count: int = Field(description="Items stored.")
    index: str | None = Field(description="The ANN index (IVF_HNSW_SQ), or null: searches are exact.")
    origin: Literal["api", "embed"] = Field(description="Made by POST /v1/collections or by `siglip-serve embed`.")


class CollectionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Collection]


class CollectionDeleted(BaseModel):
    object: Literal["collection.deleted"] = "collection.deleted"
    name: str
    deleted: bool = True


class CollectionItem(Strict):
    id: str | None = Field(None, min_length=1, max_length=512,
                           description="The item's id; an existing id is replaced. Generated when absent.")
    image: str | FormInput | None = Field(None, description="An http(s) URL, a data: URI or raw base64 image bytes.")
    text: str | None = Field(None, description="A text to embed instead of an image.")
    metadata: dict[str, Any] = Field(default_factory=dict,
                                     description="Any JSON object, returned with search results; its top-level "
                                     "strings, numbers, booleans and nulls can be filtered on.")

    @model_validator(mode="after")
    def _one_input(self) -> CollectionItem:
        if (self.image is None) == (self.text is None):
            raise ValueError("an item has exactly one of image or text")
        return self

    def to_input(self, param: str) -> Input:
        if isinstance(self.image, Input):  # an uploaded file, named by its form field
            return self.image
        return Input(param=param, text=self.text, image=self.image)


class ItemsRequest(Strict):
    model: str | None = Field(None, description="Must be the collection's model if given.")
    items: list[CollectionItem] = Field(description="Items to embed and store (upsert by id).")


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong and how to fix it; names the item (input[2]) when one is.")
    type: str = Field(description="OpenAI's error type: invalid_request_error, authentication_error, "
                      "permission_error, not_found_error, rate_limit_error, insufficient_quota, timeout_error, "
                      "service_unavailable_error, server_error, ...")
    param: str | None = Field(None, description="The offending field or item (labels, input[2], image[0]), if any.")
    code: str | None = Field(None, description="A stable code for programs: the error's name (InvalidImageError, "
                             "TooManyInputsError, ...), or invalid_json, invalid_field, request_timeout, ...")


class ErrorResponse(BaseModel):
    """OpenAI's error body, for every error status."""

    error: ErrorDetail


class ItemResult(BaseModel):
    object: Literal["collection.item"] = "collection.item"
    index: int = Field(description="The item's position in the request.")
    id: str
    status: Literal["upserted", "failed"]
    error: ErrorDetail | None = Field(None, description="Why the item was not stored (it was not written at all).")


class ItemsResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[ItemResult]
    upserted: int
    failed: int
    usage: Usage = Field(description="What the request used, and its cost.")


class DeleteItemsRequest(Strict):
    ids: list[str] = Field(description="Ids of the items to delete; unknown ids are ignored.")


class DeleteItemsResponse(BaseModel):
    object: Literal["list"] = "list"
    deleted: int = Field(description="Items that existed and were deleted.")


class SearchRequest(Strict):
    model: str | None = Field(None, description="Must be the collection's model if given.")
    query: str | TextItem | ImageItem = Field(description="A text, {text} or {image}.")
    top_k: int = Field(10, ge=1, description="Results to return, best first.")
    filter: dict[str, MetadataValue] | None = Field(
        None, description="Metadata equality: only items whose metadata has every key with the given value. For "
        "collections from `siglip-serve embed` the keys are its columns (source, width, height, manifest columns).")
    with_thumbnails: bool = Field(False, description="Return each image item's stored thumbnail.")

    def to_query(self) -> Input:
        return to_input(self.query, "query", plain="text")


class SearchResult(BaseModel):
    object: Literal["search.result"] = "search.result"
    id: str
    score: float = Field(description="SigLIP's sigmoid probability of the (query, item) pair, as /v1/rerank's.")
    cosine: float = Field(description="Cosine similarity of the query and item embeddings.")
    metadata: dict[str, Any]
    thumbnail: str | None = Field(None, description="A data:image/jpeg;base64 URI of the ≤128 px thumbnail stored at "
                                  "ingest; null for text items and items stored without one.")


class SearchResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[SearchResult]
    usage: Usage = Field(description="What the request used, and its cost.")


# --- /v1/admin/keys and /v1/usage -------------------------------------------------------


# `siglip-serve keys create` takes its flags from these two models (accounts.cli), so a field's bounds and
# description are declared once for the route and the command.
class KeyLimits(Strict):
    rpm: int | None = Field(None, ge=1, description="Requests per minute.")
    images_per_minute: int | None = Field(None, ge=1, description="Images per minute.")
    images_per_day: int | None = Field(None, ge=0, description="Images per UTC day.")
    credit_usd: float | None = Field(None, ge=0, description="Lifetime budget in USD at the configured prices.")


class KeyCreateRequest(Strict):
    name: str = Field(min_length=1, max_length=200,
                      description="A name for the key, shown in lists, usage and metrics.")
    admin: bool = Field(False, description="May use /v1/admin/* and read every key's usage.")
    expires: str | None = Field(None, description="A duration from now (30d, 12h, 2w) or an ISO date/time (UTC).")
    models: list[str] | None = Field(None, description="Served model names the key may use (not given: all).")
    routes: list[str] | None = Field(None, description="Path prefixes the key may use, e.g. /v1/classify (not "
                                     "given: all); /v1/models and /v1/usage are always allowed.")
    limits: KeyLimits = Field(default_factory=KeyLimits)

    def new_key(self, now: dt.datetime) -> NewKey:
        """What the key store is asked to create; `expires` is read relative to `now`."""
        from siglip_serve.accounts.manage import parse_expiry

        return NewKey(name=self.name, admin=self.admin, expires_at=parse_expiry(self.expires, now),
                      models=tuple(self.models) if self.models is not None else None,
                      routes=tuple(self.routes) if self.routes is not None else None,
                      limits=Limits(**self.limits.model_dump()))


class KeyInfo(BaseModel):
    object: Literal["api_key"] = "api_key"
    id: int
    prefix: str = Field(description="The key's first characters, as shown in lists; the key is never shown again.")
    name: str
    admin: bool
    created_at: int = Field(description="Unix seconds.")
    expires_at: int | None
    revoked_at: int | None
    models: list[str] | None
    routes: list[str] | None
    limits: KeyLimits


class KeyCreated(KeyInfo):
    key: str = Field(description="The secret key: shown this once, only its hash is stored.")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyInfo]


class UsageBucket(BaseModel):
    object: Literal["usage.day"] = "usage.day"
    key_id: int = Field(description="0: requests made with a static --api-key or without a key.")
    day: str = Field(description="UTC date, YYYY-MM-DD.")
    model: str
    requests: int
    errors: int
    images: int
    text_tokens: int
    cost_usd: float


class UsageReport(BaseModel):
    object: Literal["list"] = "list"
    data: list[UsageBucket]
    total_cost_usd: float
