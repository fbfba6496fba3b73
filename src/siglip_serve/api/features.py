"""POST /v1/vision/features: the vision tower's patch tokens of one layer, per image.

Every limit is checked before any work: the image count, the layer's range (400 naming it), the pooling
and the floats the response would hold (413 with the size). The body is built off the event loop: the
JSON of a few million floats takes seconds, which would stall every other request.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from siglip_serve.api.features_protocol import DECODING, FeaturesRequest, FeaturesResponse
from siglip_serve.api.limits import check_count
from siglip_serve.api.routes import deadline_of, engine_of, run_request, settings_of
from siglip_serve.api.security import admit, charge
from siglip_serve.errors import InvalidParameterError
from siglip_serve.features import PatchFeatures, PatchLayout, Pooling, check_pooling, check_response_floats

router = APIRouter()

WIRE_DTYPES = {"float32": "<f4", "float16": "<f2"}  # little-endian whatever the host, as the schema says


@router.post("/v1/vision/features", response_model=FeaturesResponse, summary="Dense patch features of images",
             description="The vision tower's patch tokens of one layer (SigLIP has no class token). " + DECODING)
async def vision_features(body: FeaturesRequest, request: Request) -> Response:
    engine, settings = engine_of(request), settings_of(request)
    served = engine.resolve(body.model)
    images = body.to_inputs()
    check_count(images, limit=settings.max_inputs, param="input")
    layout: PatchLayout | None = served.patch_layout
    if layout is None:
        raise InvalidParameterError(f"model {served.name} does not serve vision features", param="model")
    pooling = Pooling(body.pooling)
    layer = layout.resolve_layer(body.layer)
    check_pooling(pooling, layer, layout)
    check_response_floats(layout, images=len(images), pooling=pooling, limit=settings.max_feature_floats)
    admit(request, served.name, images=len(images))
    deadline = deadline_of(request)
    results, used = await run_request(
        request, engine.patch_features(served, images, layer=layer, deadline=deadline), deadline=deadline)
    head = {"object": "list", "model": served.name, "layer": layer, "num_layers": layout.num_layers,
            "pooling": pooling.value, "dtype": body.dtype, "encoding_format": body.encoding_format}
    content = await asyncio.to_thread(
        response_body, head, results, pooling=pooling, dtype=body.dtype, encoding_format=body.encoding_format,
        usage={**used.as_dict(), "cost_usd": charge(request, served.name, used)})
    return Response(content=content, media_type="application/json")


def response_body(head: dict[str, Any], results: Sequence[PatchFeatures], *, pooling: Pooling, dtype: str,
                  encoding_format: str, usage: dict[str, float]) -> bytes:
    data = [{"object": "vision.features", "index": i, **encode_array(pooled_array(result, pooling), dtype,
                                                                      encoding_format, param=f"input[{i}]")}
            for i, result in enumerate(results)]
    return json.dumps({**head, "data": data, "usage": usage}, separators=(",", ":"), allow_nan=False).encode()


def pooled_array(result: PatchFeatures, pooling: Pooling) -> np.ndarray:
    """[h, w, d] tokens, or the [d] vector `pooling` asks for, as float32."""
    tokens = np.asarray(result.features, dtype=np.float32)
    if pooling == Pooling.MEAN:
        return tokens.mean(axis=0, dtype=np.float64).astype(np.float32)
    if pooling == Pooling.MAP:
        return np.asarray(result.pooled, dtype=np.float32)
    return tokens.reshape(*result.grid, tokens.shape[-1])


def encode_array(array: np.ndarray, dtype: str, encoding_format: str, *, param: str) -> dict[str, Any]:
    """{"shape", "features"}: float16 is the float32 array rounded to nearest (numpy's astype)."""
    wire = np.ascontiguousarray(array.astype(WIRE_DTYPES[dtype]))
    if encoding_format == "base64":
        return {"shape": list(wire.shape), "features": base64.b64encode(wire.tobytes()).decode("ascii")}
    if not np.isfinite(wire).all():  # JSON has no infinities; float16 overflows past 65504
        raise InvalidParameterError("features over float16's range (65504) cannot be sent as JSON numbers; ask "
                                    "dtype float32 or encoding_format base64", param=param)
    return {"shape": list(wire.shape), "features": wire.tolist()}
