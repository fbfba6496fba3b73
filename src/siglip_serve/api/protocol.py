"""Request and response models: OpenAI's embeddings shape, our classify and rerank, HF's zero-shot shape.

Pydantic only; no torch. `to_inputs()` turns a request's items into the engine's `Input`s,
each named by its field so that errors point at the offending item.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from siglip_serve.engine.inputs import Input


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextItem(Strict):
    text: str


class ImageItem(Strict):
    image: str = Field(description="An http(s) URL, a data: URI or raw base64 image bytes.")


Item = str | TextItem | ImageItem


def to_input(item: Item, param: str, *, plain: Literal["text", "image"]) -> Input:
    if isinstance(item, TextItem):
        return Input(param=param, text=item.text)
    if isinstance(item, ImageItem):
        return Input(param=param, image=item.image)
    return Input(param=param, text=item) if plain == "text" else Input(param=param, image=item)


# --- /v1/embeddings ---------------------------------------------------------------


class EmbeddingsRequest(BaseModel):
    # OpenAI clients may send fields we do not use (user); unknown fields are ignored here.
    model: str | None = None
    input: str | list[Item] = Field(description="A string, or a list of strings, {text} and {image} objects.")
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
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    text_tokens: int = 0
    images: int = 0


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


# --- /v1/classify -------------------------------------------------------------------


class ClassifyRequest(Strict):
    model: str | None = None
    input: str | list[str | ImageItem] = Field(description="Images: URL, data URI, base64, or {image}.")
    labels: list[str] = Field(description="Candidate labels.")
    hypothesis_template: str | list[str] | None = Field(
        None, description='Template with "{}" or a list to ensemble. Default "This is a photo of {}."'
    )
    top_k: int | None = Field(None, ge=1)
    normalization: Literal["sigmoid", "softmax"] = "sigmoid"

    def to_inputs(self) -> list[Input]:
        items = [self.input] if isinstance(self.input, str) else self.input
        return [to_input(item, f"input[{i}]", plain="image") for i, item in enumerate(items)]


class LabelScore(BaseModel):
    label: str
    score: float


class Classification(BaseModel):
    object: Literal["classification"] = "classification"
    index: int
    prediction: str
    score: float
    predictions: list[LabelScore]


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]
    usage: Usage


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
    index: int
    relevance_score: float
    document: TextItem | ImageItem | None = None


class RerankResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    results: list[RerankResult]
    usage: Usage


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


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
