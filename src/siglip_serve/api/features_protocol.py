"""Request and response models of POST /v1/vision/features (dense patch features). Pydantic only; no torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from siglip_serve.api.protocol import ImageItem, Usage, to_input
from siglip_serve.engine.inputs import Input

DECODING = (
    "With encoding_format \"base64\" each `features` is the array's bytes, little-endian, in C order: "
    "`numpy.frombuffer(base64.b64decode(features), dtype).reshape(shape)` with the response's `dtype` "
    "(\"float32\" or \"float16\", i.e. numpy '<f4' or '<f2'). With \"float\" it is the same array as nested lists."
)


class FeaturesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    input: str | list[str | ImageItem] = Field(description="Images: URL, data URI, base64, or {image}.")
    layer: int = Field(-1, strict=True, description=(
        "Vision layer, numbered as transformers' hidden_states: 0 = patch embeddings, k = output of encoder layer "
        "k, and L (the tower's number of layers) or -1 = the final output after the last LayerNorm "
        "(last_hidden_state, the default). Negative counts from the end: -2 is the penultimate layer. "
        "Out of -(L+1)..L: 400."))
    pooling: Literal["none", "mean", "map"] = Field("none", description=(
        "\"none\": every patch token, shape [h, w, d]; \"mean\": the mean of the layer's patch tokens, [d]; "
        "\"map\": the tower's attention-pooling head (the raw image embedding), [d], final layer only."))
    encoding_format: Literal["base64", "float"] = Field("base64", description=DECODING)
    dtype: Literal["float32", "float16"] = Field("float32", description=(
        "float16 is the float32 result rounded to nearest (half the bytes)."))

    def to_inputs(self) -> list[Input]:
        items = [self.input] if isinstance(self.input, str) else self.input
        return [to_input(item, f"input[{i}]", plain="image") for i, item in enumerate(items)]


class FeatureData(BaseModel):
    object: Literal["vision.features"] = "vision.features"
    index: int
    shape: list[int] = Field(description="[h, w, d] (h x w patches, row-major; no class token), or [d] when pooled. "
                             "NaFlex: the image's own grid, only its real patches.")
    features: str | list = Field(description=DECODING)


class FeaturesResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"description": DECODING})

    object: Literal["list"] = "list"
    model: str
    layer: int = Field(description="The layer returned, as a non-negative index 0..L.")
    num_layers: int = Field(description="L, the vision tower's number of encoder layers.")
    pooling: Literal["none", "mean", "map"]
    dtype: Literal["float32", "float16"]
    encoding_format: Literal["base64", "float"]
    data: list[FeatureData]
    usage: Usage
