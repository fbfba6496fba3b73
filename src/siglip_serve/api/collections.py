"""The collection routes: create, list, get and delete collections; upsert and delete items; search.

The store arrives through ``app.state.collections`` (a `storage.collections.CollectionStore` that
the composition root builds), so this module never imports LanceDB. Store calls block on disk or
object storage and run in threads (`asyncio.to_thread`); embedding goes through the engine like any
other request (admission, batching, the deadline), and only then are items written.
"""

from __future__ import annotations

import asyncio
import base64
import math
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from siglip_serve.api import protocol as p
from siglip_serve.api.errors import status_of
from siglip_serve.api.limits import check_count, check_inputs
from siglip_serve.api.routes import deadline_of, engine_of, run_request, settings_of, usage
from siglip_serve.api.security import admit
from siglip_serve.api.uploads import FormRoute
from siglip_serve.errors import (
    EngineUnavailableError,
    InvalidParameterError,
    ModelMismatchError,
    SiglipServeError,
    shown,
)
from siglip_serve.storage import NewItem

if TYPE_CHECKING:
    from siglip_serve.backend import Temperature
    from siglip_serve.engine.engine import Engine, ServedModel
    from siglip_serve.storage.collections import CollectionInfo, CollectionStore

router = APIRouter(prefix="/v1/collections", route_class=FormRoute)  # ingest also takes multipart forms


def store_of(request: Request) -> CollectionStore:
    store = getattr(request.app.state, "collections", None)
    if store is None:
        raise EngineUnavailableError("this server has no collection store")
    return store


def card(info: CollectionInfo) -> p.Collection:
    return p.Collection(name=info.name, model=info.model, embedding_size=info.embed_dim, count=info.count or 0,
                        index=info.index, origin=info.origin)


def serves(served: ServedModel, collection: CollectionInfo) -> bool:
    """Whether `served` made the collection's vectors: its name or its checkpoint is the collection's model
    (an embed job records its --model spec, which the server's checkpoint name is when loaded from it)."""
    return (bool({served.name, served.info.name} & collection.model_names)
            and served.info.embed_dim == collection.embed_dim)


def model_for(engine: Engine, collection: CollectionInfo, requested: str | None) -> ServedModel:
    if requested is not None:
        served = engine.resolve(requested)
        if not serves(served, collection):
            raise ModelMismatchError(f"collection {collection.name!r} holds embeddings of model "
                                     f"{collection.model!r}, not of {shown(requested)}", param="model")
        return served
    for served in engine.models.values():
        if serves(served, collection):
            return served
    raise ModelMismatchError(f"collection {collection.name!r} holds embeddings of model {collection.model!r}, which "
                             f"this server does not serve (served: {', '.join(engine.models)})", param="model")


def siglip_score(cosine: float, temperature: Temperature) -> float:
    """sigmoid(exp(logit_scale) * cos + logit_bias): the pair's probability, as scoring.logits and /v1/rerank
    compute it (written out here because the HTTP layer does not import torch)."""
    logit = math.exp(temperature.logit_scale) * cosine + temperature.logit_bias
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    exp = math.exp(logit)
    return exp / (1.0 + exp)


def data_uri(jpeg: bytes | None) -> str | None:
    return None if jpeg is None else "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def error_detail(error: SiglipServeError) -> p.ErrorDetail:
    _, type_ = status_of(error)
    return p.ErrorDetail(message=error.message, type=type_, param=error.param, code=type(error).__name__)


@router.post("", response_model=p.Collection, status_code=201)
async def create_collection(body: p.CollectionCreateRequest, request: Request) -> p.Collection:
    served = engine_of(request).resolve(body.model)
    info = await asyncio.to_thread(store_of(request).create, body.name, model=served.name, spec=served.info.name,
                                   embed_dim=served.info.embed_dim)
    return card(info)


@router.get("", response_model=p.CollectionList)
async def list_collections(request: Request) -> p.CollectionList:
    return p.CollectionList(data=[card(info) for info in await asyncio.to_thread(store_of(request).list)])


@router.get("/{name}", response_model=p.Collection)
async def get_collection(name: str, request: Request) -> p.Collection:
    return card(await asyncio.to_thread(store_of(request).get, name))


@router.delete("/{name}", response_model=p.CollectionDeleted)
async def delete_collection(name: str, request: Request) -> p.CollectionDeleted:
    await asyncio.to_thread(store_of(request).delete, name)
    return p.CollectionDeleted(name=name)


@router.post("/{name}/index", response_model=p.Collection)
async def build_index(name: str, request: Request) -> p.Collection:
    """Build (or rebuild) the collection's ANN index now; searches stay exact until it is committed."""
    return card(await asyncio.to_thread(store_of(request).build_index, name))


@router.post("/{name}/items", response_model=p.ItemsResponse)
async def upsert_items(name: str, body: p.ItemsRequest, request: Request) -> p.ItemsResponse:
    engine, settings, store = engine_of(request), settings_of(request), store_of(request)
    collection = await asyncio.to_thread(store.get, name, stats=False)
    served = model_for(engine, collection, body.model)
    check_count(body.items, limit=settings.max_collection_items, param="items")
    inputs = [item.to_input(f"items[{i}]") for i, item in enumerate(body.items)]
    check_inputs(inputs, settings)
    ids = [item.id if item.id is not None else uuid.uuid4().hex for item in body.items]
    first: dict[str, int] = {}
    for i, item_id in enumerate(ids):
        if first.setdefault(item_id, i) != i:
            raise InvalidParameterError(f"id {shown(item_id)} is also items[{first[item_id]}]'s",
                                        param=f"items[{i}].id")
    admit(request, served.name, images=sum(item.image is not None for item in inputs))
    deadline = deadline_of(request)
    embedded = await run_request(request, engine.embed_items(served, inputs, deadline=deadline,
                                                             thumbnail_side=settings.thumbnail_px or None),
                                 deadline=deadline)
    embeds, used = embedded.results, embedded.usage
    errors: list[SiglipServeError | None] = [e if isinstance(e, SiglipServeError) else None for e in embeds]
    ready = [i for i, error in enumerate(errors) if error is None]
    new = [NewItem(id=ids[i], embedding=embeds[i], metadata=body.items[i].metadata,
                   thumbnail=embedded.thumbnails[i]) for i in ready]
    # Not cancellable: once embedded, the write is one atomic commit whether or not the client still waits.
    stored = await asyncio.to_thread(store.upsert, name, new) if new else []
    for i, error in zip(ready, stored, strict=True):
        errors[i] = error.at(f"items[{i}].{error.param}") if error is not None and error.param else error
    data = [p.ItemResult(index=i, id=ids[i], status="failed" if error else "upserted",
                         error=error_detail(error) if error else None) for i, error in enumerate(errors)]
    failed = sum(error is not None for error in errors)
    return p.ItemsResponse(model=served.name, data=data, upserted=len(errors) - failed, failed=failed,
                           usage=usage(used, request, served.name))


@router.delete("/{name}/items", response_model=p.DeleteItemsResponse)
async def delete_items(name: str, body: p.DeleteItemsRequest, request: Request) -> p.DeleteItemsResponse:
    check_count(body.ids, limit=settings_of(request).max_collection_items, param="ids")
    return p.DeleteItemsResponse(deleted=await asyncio.to_thread(store_of(request).delete_items, name, body.ids))


@router.post("/{name}/search", response_model=p.SearchResponse)
async def search(name: str, body: p.SearchRequest, request: Request) -> p.SearchResponse:
    engine, settings, store = engine_of(request), settings_of(request), store_of(request)
    if body.top_k > settings.max_top_k:
        raise InvalidParameterError(f"{body.top_k} is over the limit of {settings.max_top_k}", param="top_k")
    collection = await asyncio.to_thread(store.get, name, stats=False)
    served = model_for(engine, collection, body.model)
    query = body.to_query()
    check_inputs([query], settings)
    admit(request, served.name, images=int(query.image is not None))
    deadline = deadline_of(request)
    embeds, used = await run_request(request, engine.embed(served, [query], deadline=deadline), deadline=deadline)
    hits: list[Any] = await asyncio.to_thread(store.search, name, embeds[0], top_k=body.top_k, where=body.filter,
                                              thumbnails=body.with_thumbnails)
    temperature = served.backend.temperature
    data = [p.SearchResult(id=hit.id, score=siglip_score(hit.cosine, temperature), cosine=hit.cosine,
                           metadata=hit.metadata, thumbnail=data_uri(hit.thumbnail) if body.with_thumbnails else None)
            for hit in hits]
    return p.SearchResponse(model=served.name, data=data, usage=usage(used, request, served.name))
