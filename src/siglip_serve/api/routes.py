"""Thin HTTP handlers: validate limits, call the engine, shape the response."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from siglip_serve.api import protocol as p
from siglip_serve.api.errors import (
    ANY_ROUTE,
    INFERENCE,
    KEYED,
    WITH_BODY,
    ClientDisconnected,
    error_response,
    error_responses,
)
from siglip_serve.api.limits import check_classify, check_count, check_inputs
from siglip_serve.api.model_cards import model_card
from siglip_serve.api.security import admit, charge
from siglip_serve.api.uploads import FormRoute
from siglip_serve.config import Settings
from siglip_serve.engine.inputs import Input
from siglip_serve.errors import DeadlineExceededError, InvalidFormError, InvalidParameterError, InvalidTemplateError

if TYPE_CHECKING:  # the HTTP layer never imports torch; the engine arrives through app.state
    from siglip_serve.engine.engine import Engine, Usage

T = TypeVar("T")

# API keys, rate limits and quotas are checked before the body is read (api.security.ApiKeyGate); what
# depends on the body (model, images) by `admit`, after parsing and before the engine. /v1/embeddings and
# /v1/classify also take multipart/form-data (api.uploads.FormRoute).
router = APIRouter(route_class=FormRoute)
# The errors each route can answer, for the OpenAPI document (api.errors.error_responses).
INFERENCE_ERRORS = error_responses(*ANY_ROUTE, *KEYED, *WITH_BODY, *INFERENCE, InvalidTemplateError)
FORM_ERRORS = error_responses(*ANY_ROUTE, *KEYED, *WITH_BODY, *INFERENCE, InvalidTemplateError, InvalidFormError)
READ_ERRORS = error_responses(*ANY_ROUTE, *KEYED)


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def deadline_of(request: Request) -> float:
    return time.monotonic() + settings_of(request).request_timeout_s


async def run_request(request: Request, work: Awaitable[T], *, deadline: float) -> T:
    """Run `work` until done, the deadline (504) or the client going away (as vLLM does).

    In the last two cases the work is cancelled, and with it its items still queued for a batch.
    """
    task = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({task, watcher}, timeout=max(0.0, deadline - time.monotonic()),
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    if watcher.done() and not watcher.cancelled():
        raise ClientDisconnected
    raise DeadlineExceededError(f"the request took longer than its deadline of "
                                f"{settings_of(request).request_timeout_s:g} s")


def usage(used: Usage, request: Request | None = None, model: str | None = None) -> p.Usage:
    """The response's usage; with the request and the model also its cost, metered with the request."""
    cost = charge(request, model, used) if request is not None and model is not None else 0.0
    return p.Usage(**used.as_dict(), cost_usd=cost)


def images_in(inputs: list[Input]) -> int:
    return sum(item.image is not None for item in inputs)


@router.post("/v1/embeddings", response_model=p.EmbeddingsResponse, responses=FORM_ERRORS)
async def embeddings(body: p.EmbeddingsRequest, request: Request) -> p.EmbeddingsResponse:
    engine = engine_of(request)
    served = engine.resolve(body.model)
    inputs = body.to_inputs()
    check_count(inputs, limit=settings_of(request).max_inputs, param="input")
    check_inputs(inputs, settings_of(request))
    if body.dimensions is not None and body.dimensions != served.info.embed_dim:
        raise InvalidParameterError(
            f"this model's embeddings have {served.info.embed_dim} dimensions, not {body.dimensions}",
            param="dimensions",
        )
    admit(request, served.name, images=images_in(inputs))
    deadline = deadline_of(request)
    embeds, used = await run_request(
        request, engine.embed(served, inputs, normalize=body.normalize, deadline=deadline), deadline=deadline
    )
    data = [p.EmbeddingData(index=i, embedding=encode_embedding(row, body.encoding_format))
            for i, row in enumerate(embeds)]
    return p.EmbeddingsResponse(data=data, model=served.name, usage=usage(used, request, served.name))


def encode_embedding(row: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # little-endian float32, as OpenAI's API and clients use
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return row.tolist()


@router.post("/v1/classify", response_model=p.ClassifyResponse, responses=FORM_ERRORS)
async def classify(body: p.ClassifyRequest, request: Request) -> p.ClassifyResponse:
    engine, settings = engine_of(request), settings_of(request)
    served = engine.resolve(body.model)
    images = body.to_inputs()
    check_count(images, limit=settings.max_inputs, param="input")
    check_classify(body.labels, body.hypothesis_template, settings)
    admit(request, served.name, images=len(images))
    deadline = deadline_of(request)
    results, used = await run_request(request, engine.classify(
        served, images, body.labels, templates=body.hypothesis_template, normalization=body.normalization,
        top_k=body.top_k, deadline=deadline,
    ), deadline=deadline)
    data = [
        p.Classification(index=i, prediction=ranked[0][0], score=ranked[0][1],
                         predictions=[p.LabelScore(label=label, score=score) for label, score in ranked])
        for i, ranked in enumerate(results)
    ]
    return p.ClassifyResponse(model=served.name, data=data, usage=usage(used, request, served.name))


@router.post("/v1/rerank", response_model=p.RerankResponse, response_model_exclude_none=True,
             responses=INFERENCE_ERRORS)
async def rerank(body: p.RerankRequest, request: Request) -> p.RerankResponse:
    engine = engine_of(request)
    served = engine.resolve(body.model)
    documents, query = body.to_documents(), body.to_query()
    check_count(documents, limit=settings_of(request).max_documents, param="documents")
    check_inputs([query, *documents], settings_of(request))
    admit(request, served.name, images=images_in([query, *documents]))
    deadline = deadline_of(request)
    order, used = await run_request(request, engine.rerank(
        served, query, documents, top_n=body.top_n, deadline=deadline
    ), deadline=deadline)
    results = [
        p.RerankResult(index=i, relevance_score=score,
                       document=_as_item(body.documents[i]) if body.return_documents else None)
        for i, score in order
    ]
    return p.RerankResponse(model=served.name, results=results, usage=usage(used, request, served.name))


def _as_item(document: p.Item) -> p.TextItem | p.ImageItem:
    return p.TextItem(text=document) if isinstance(document, str) else document


@router.post("/models/{model:path}", response_model=list[p.LabelScore], responses=INFERENCE_ERRORS)
async def hf_zero_shot(model: str, body: p.HFZeroShotRequest, request: Request) -> list[p.LabelScore]:
    """Hugging Face Inference API shape, for `InferenceClient.zero_shot_image_classification`."""
    engine, settings = engine_of(request), settings_of(request)
    served = engine.resolve(model)
    labels = body.parameters.labels()
    check_classify(labels, body.parameters.hypothesis_template, settings, labels_param="parameters.candidate_labels")
    admit(request, served.name, images=1)
    deadline = deadline_of(request)
    results, used = await run_request(request, engine.classify(
        served, [Input(param="inputs", image=body.inputs)], labels,
        templates=body.parameters.hypothesis_template, deadline=deadline,
    ), deadline=deadline)
    usage(used, request, served.name)  # the HF shape has no usage field: metered only
    return [p.LabelScore(label=label, score=score) for label, score in results[0]]


@router.get("/v1/models", response_model=p.ModelList, responses=READ_ERRORS)
async def list_models(request: Request) -> p.ModelList:
    pricing = request.app.state.pricing
    return p.ModelList(data=[model_card(served.name, served.info, pricing)
                             for served in engine_of(request).models.values()])


@router.get("/health", responses=error_responses(*ANY_ROUTE, "unhealthy"))
async def health(request: Request) -> JSONResponse:
    engine = engine_of(request)
    if engine.healthy:
        return JSONResponse({"status": "ok", "models": list(engine.models)})
    return error_response(503, "the engine cannot serve", type_="service_unavailable_error", code="unhealthy")


@router.get("/metrics", responses=READ_ERRORS)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(engine_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
