"""The serving engine: admission, per-request preparation, one batcher per model and tower, the label cache.

No HTTP here; usable from Python directly (``async with Engine({"name": backend}) as engine``).
Models are reached only through the backend contract (`siglip_serve.backend.Backend`).
Request path (TEI's router -> core -> backend): look the texts up in the label cache, admit the
request's uncached work as a whole or refuse it at once (429), then fetch, decode and tokenize in a
worker pool, submit to the tower's batcher with a deadline, and score with pure functions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import torch

from siglip_serve.backend import Backend, ModelInfo, serves_features
from siglip_serve.config import Settings, default
from siglip_serve.engine.admission import Admission
from siglip_serve.engine.batcher import BatcherConfig, DynamicBatcher, ModelWorker
from siglip_serve.engine.inputs import Input
from siglip_serve.engine.label_cache import CachedText, LabelCache
from siglip_serve.errors import (
    EmptyInputError,
    EngineUnavailableError,
    InvalidParameterError,
    SiglipServeError,
    UnknownModelError,
    shown,
)
from siglip_serve.features import PatchFeatures, PatchLayout
from siglip_serve.metrics import Metrics
from siglip_serve.preprocess.fetch import FetchPolicy, make_client, read_image_reference
from siglip_serve.preprocess.pixel_budget import PixelBudget
from siglip_serve.preprocess.text import check_text
from siglip_serve.preprocess.thumbnails import make_thumbnail
from siglip_serve.scoring import (
    Normalization,
    check_classify_options,
    ensemble_templates,
    format_prompts,
    l2_normalize,
    logits,
    probabilities,
    ranked,
    ranked_labels,
)


@dataclass(frozen=True)
class EngineConfig:
    """The engine's share of `Settings`; each default is the setting's declared one."""

    max_batch_size: int = default("max_batch_size")
    max_wait_ms: float = default("max_wait_ms")
    max_queue_size: int = default("max_queue_size")
    label_cache_bytes: int = default("label_cache_bytes")
    decode_workers: int = default("decode_workers")
    max_decode_pixels: int = default("max_decode_pixels")
    fetch: FetchPolicy = field(default_factory=FetchPolicy)

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        return cls(
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue_size=settings.max_queue_size,
            label_cache_bytes=settings.label_cache_bytes,
            decode_workers=settings.decode_workers,
            max_decode_pixels=settings.max_decode_pixels,
            fetch=FetchPolicy.from_settings(settings),
        )


@dataclass
class Usage:
    text_tokens: int = 0
    images: int = 0
    image_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        prompt = self.text_tokens + self.image_tokens
        return {"prompt_tokens": prompt, "total_tokens": prompt, "text_tokens": self.text_tokens,
                "images": self.images}


@dataclass(frozen=True)
class Encoded:
    """Raw embeddings of a request's texts and images, in the order given, and what they cost."""

    texts: torch.Tensor  # [T, D]
    images: torch.Tensor  # [I, D]
    usage: Usage


@dataclass(frozen=True)
class ItemEmbeddings:
    """`Engine.embed_items`' answer: per input its embedding or error, the usage, and per input the
    image's JPEG thumbnail when asked (None for texts, failures, and when not asked)."""

    results: list[np.ndarray | SiglipServeError]
    usage: Usage
    thumbnails: list[bytes | None]


@dataclass(frozen=True)
class PreparedItem:
    prepared: Any
    thumbnail: bytes | None


@dataclass(frozen=True)
class FeatureItem:
    """One prepared image for the features batcher, with the layer (0..L) its request asked for."""

    prepared: Any
    layer: int


class ServedModel:
    """A backend with its admission and its batchers: images, texts and, where the backend has them, features."""

    def __init__(self, name: str, backend: Backend, config: EngineConfig, metrics: Metrics,
                 worker: ModelWorker) -> None:
        self.name = name
        self.backend = backend
        self.info: ModelInfo = backend.info
        self.admission = Admission(config.max_queue_size, name=f"model {name}",
                                   on_change=metrics.admitted.labels(name).set)

        # Rows are cloned: a view would keep its whole batch alive, in the label cache for instance.
        def run_images(prepared: list[Any]) -> list[torch.Tensor]:
            return [row.clone() for row in backend.encode_image_batch(prepared)]

        def run_texts(ids: list[Any]) -> list[torch.Tensor]:
            return [row.clone() for row in backend.encode_text_batch(ids)]

        def batcher_config(tower: str) -> BatcherConfig:
            return BatcherConfig(model=name, tower=tower, max_batch_size=config.max_batch_size,
                                 max_queue_size=config.max_queue_size, max_wait_ms=config.max_wait_ms)

        self.images: DynamicBatcher[Any, torch.Tensor] = DynamicBatcher(
            run_images, batcher_config("image"), observer=metrics, worker=worker)
        self.texts: DynamicBatcher[Any, torch.Tensor] = DynamicBatcher(
            run_texts, batcher_config("text"), observer=metrics, worker=worker)
        self.patch_layout: PatchLayout | None = None
        self.features: DynamicBatcher[FeatureItem, PatchFeatures] | None = None
        if serves_features(backend):
            self.patch_layout = backend.patch_layout  # type: ignore[attr-defined]
            self.features = DynamicBatcher(_feature_runner(backend), batcher_config("features"), observer=metrics,
                                           worker=worker)

    @property
    def batchers(self) -> list[DynamicBatcher]:
        return [self.images, self.texts] + ([self.features] if self.features is not None else [])


def _feature_runner(backend: Any) -> Any:
    """The features batch function: one forward per distinct layer in the batch (requests of one layer share
    a forward; a batch mixing layers runs one per layer), results in the batch's order."""

    def run_features(items: list[FeatureItem]) -> list[PatchFeatures]:
        rows_of: dict[int, list[int]] = {}
        for row, item in enumerate(items):
            rows_of.setdefault(item.layer, []).append(row)
        results: list[Any] = [None] * len(items)
        for layer, rows in rows_of.items():
            encoded = backend.encode_patch_batch([items[row].prepared for row in rows], layer=layer)
            for row, features in zip(rows, encoded, strict=True):
                results[row] = features
        return results

    return run_features


class Engine:
    """Owns admission and batching for every served model. Start it before use; `healthy` says
    whether it can serve."""

    def __init__(self, models: Mapping[str, Backend], config: EngineConfig | None = None,
                 *, metrics: Metrics | None = None) -> None:
        if not models:
            raise ValueError("an engine needs at least one model")
        self.config = config or EngineConfig()
        self.metrics = metrics or Metrics()
        # One model thread per device: the image and text batches of every model on a device take
        # turns there. Two threads driving torch at once on a CPU each start their own intra-op
        # thread team and oversubscribe the cores; on a GPU they would only interleave kernels.
        threads = torch.get_num_threads()
        self._workers = {
            device: ModelWorker(f"siglip-model-{device}", initializer=torch.set_num_threads, initargs=(threads,))
            for device in {backend.info.device for backend in models.values()}
        }
        self.models = {name: ServedModel(name, backend, self.config, self.metrics,
                                         self._workers[backend.info.device])
                       for name, backend in models.items()}
        self.cache = LabelCache(self.config.label_cache_bytes)
        self.pixels = PixelBudget(self.config.max_decode_pixels)
        self._pool: ThreadPoolExecutor | None = None
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.config.decode_workers, thread_name_prefix="siglip-decode")
        self._client = make_client(self.config.fetch)
        for served in self.models.values():
            for batcher in served.batchers:
                await batcher.start()

    async def stop(self, *, drain: bool = True) -> None:
        for served in self.models.values():
            for batcher in served.batchers:
                await batcher.stop(drain=drain)
        if self._client is not None:
            await self._client.aclose()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        for worker in self._workers.values():
            worker.shutdown()

    @property
    def healthy(self) -> bool:
        return self._pool is not None and all(
            batcher.healthy for s in self.models.values() for batcher in s.batchers
        )

    def resolve(self, name: str | None) -> ServedModel:
        """A served model by name; the only one when `name` is omitted."""
        if name is None:
            if len(self.models) == 1:
                return next(iter(self.models.values()))
            raise UnknownModelError(f"several models are served, name one of: {', '.join(self.models)}",
                                    param="model")
        served = self.models.get(name)
        if served is None:
            raise UnknownModelError(f"model {shown(name)} is not served; served: {', '.join(self.models)}",
                                    param="model")
        return served

    # --- the one path every task takes ------------------------------------------------------------

    async def encode(self, served: ServedModel, *, texts: Sequence[str], images: Sequence[Input],
                     deadline: float | None) -> Encoded:
        """Raw embeddings of `texts` (given as is, validated by the caller) and `images`.

        Cached texts cost nothing; the rest of the request is admitted as a whole before any work.
        """
        self._check_serving()
        found = {text: self.cache.get(served.name, text) for text in dict.fromkeys(texts)}
        missing = [text for text, entry in found.items() if entry is None]
        self.metrics.cache_hits.inc(len(texts) - len(missing))
        self.metrics.cache_misses.inc(len(missing))
        with served.admission.reserve(len(images) + len(missing)):
            computed, image_embeds = await _gather_first_error([
                self._encode_texts(served, missing, deadline=deadline),
                self._encode_images(served, images, deadline=deadline),
            ])
        found.update(computed)
        dim = served.info.embed_dim
        rows = [found[text] for text in texts]
        usage = Usage(text_tokens=sum(entry.num_tokens for entry in rows), images=len(images),
                      image_tokens=len(images) * served.info.tokens_per_image)
        text_embeds = torch.stack([entry.embedding for entry in rows]) if rows else torch.empty(0, dim)
        return Encoded(texts=text_embeds, images=image_embeds, usage=usage)

    async def _encode_texts(self, served: ServedModel, texts: list[str], *,
                            deadline: float | None) -> dict[str, CachedText]:
        if not texts:
            return {}
        # Tokenizing 1,000 labels takes tens of milliseconds (more with open_clip's ftfy cleaning): off the loop.
        tokenized = await self._in_pool(served.backend.tokenize, texts)
        embeds = await self._submit_chunked(served.texts, [t.ids for t in tokenized], deadline=deadline)
        entries = {text: CachedText(embedding, t.num_tokens)
                   for text, t, embedding in zip(texts, tokenized, embeds, strict=True)}
        self.cache.put_many(served.name, entries.items())
        return entries

    async def _encode_images(self, served: ServedModel, images: Sequence[Input], *,
                             deadline: float | None) -> torch.Tensor:
        if not images:
            return torch.empty(0, served.info.embed_dim)
        prepared = await _gather_first_error(self._prepare(served, item) for item in images)
        return torch.stack(await self._submit_chunked(served.images, prepared, deadline=deadline))

    async def _prepare(self, served: ServedModel, item: Input) -> Any:
        return await self._decode(served, item, await self._fetch(item))

    async def _fetch(self, item: Input) -> Any:
        """The image's bytes: a URL or path reference is fetched (the fetch policy's guards), bytes pass."""
        assert item.image is not None
        data = item.image
        if isinstance(data, str):
            started = time.perf_counter()
            try:
                data = await read_image_reference(data, policy=self.config.fetch, client=self._client)
            except SiglipServeError as exc:
                raise exc.at(item.param) from None
            self.metrics.stage_seconds.labels("fetch").observe(time.perf_counter() - started)
        return data

    async def _decode(self, served: ServedModel, item: Input, data: Any) -> Any:
        started = time.perf_counter()
        try:
            prepared = await self._decoding(lambda budget: served.backend.prepare_image(data, budget=budget))
        except SiglipServeError as exc:
            raise exc.at(item.param) from None
        self.metrics.stage_seconds.labels("decode").observe(time.perf_counter() - started)
        return prepared

    async def _decoding(self, decode: Callable[[PixelBudget], Any]) -> Any:
        """`decode(budget)` in the decode pool, its pixels reserved from the shared budget through a
        handle this request cancels when it is cancelled (client gone, deadline): a decode still waiting
        for pixels then gives up (`DecodeCancelled`, read by no one) instead of decoding for nobody."""
        budget = self.pixels.for_request()
        try:
            return await self._in_pool(decode, budget)
        except asyncio.CancelledError:
            budget.cancel()
            raise

    def _in_pool(self, function: Any, *args: Any) -> Awaitable[Any]:
        assert self._pool is not None
        return asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def _submit_chunked(self, batcher: DynamicBatcher, items: list, *, deadline: float | None) -> list:
        """Submit a large request a few batches at a time.

        A request may hold more items than the batcher's queue takes at once (admission lets one
        through when the model is idle); queueing four batches ahead keeps the model busy while
        other requests still get their turn between the chunks.
        """
        chunk = max(1, min(self.config.max_queue_size, 4 * self.config.max_batch_size))
        results: list = []
        for start in range(0, len(items), chunk):
            results.extend(await batcher.submit(items[start : start + chunk], deadline=deadline))
        return results

    def _check_serving(self) -> None:
        if not self.healthy:
            raise EngineUnavailableError("the engine is not serving (starting, stopping or failed)")

    # --- tasks ------------------------------------------------------------------------------------

    async def embed(self, served: ServedModel, inputs: Sequence[Input], *, normalize: bool = True,
                    deadline: float | None) -> tuple[np.ndarray, Usage]:
        """[N, D] float32 embeddings of mixed texts and images in input order, L2-normalized unless asked."""
        text_rows = [i for i, item in enumerate(inputs) if item.text is not None]
        image_rows = [i for i, item in enumerate(inputs) if item.image is not None]
        for i in text_rows:
            check_text(inputs[i].text, param=inputs[i].param)
        encoded = await self.encode(served, texts=[inputs[i].text for i in text_rows],
                                    images=[inputs[i] for i in image_rows], deadline=deadline)
        out = torch.empty(len(inputs), served.info.embed_dim)
        out[text_rows] = encoded.texts
        out[image_rows] = encoded.images
        return (l2_normalize(out) if normalize else out).numpy(), encoded.usage

    async def embed_items(self, served: ServedModel, inputs: Sequence[Input], *, deadline: float | None,
                          thumbnail_side: int | None = None) -> ItemEmbeddings:
        """Per input (text or image), its L2-normalized [D] float32 embedding, or the domain error that
        stopped that input alone: an image that cannot be fetched or decoded, an invalid text; with
        `thumbnail_side`, also each embedded image's JPEG thumbnail (preprocess.thumbnails).

        For collection ingest, where one bad image must not fail its batch (`embed` fails the request).
        Admitted as a whole like `encode`; the good items reach the batchers like any other request's.
        """
        self._check_serving()
        results: list[np.ndarray | SiglipServeError | None] = [None] * len(inputs)
        thumbnails: list[bytes | None] = [None] * len(inputs)
        text_rows: list[int] = []
        for i, item in enumerate(inputs):
            if item.text is not None:
                try:
                    check_text(item.text, param=item.param)
                    text_rows.append(i)
                except SiglipServeError as exc:
                    results[i] = exc
        image_rows = [i for i, item in enumerate(inputs) if item.image is not None]
        found = {inputs[i].text: self.cache.get(served.name, inputs[i].text) for i in text_rows}
        missing = [text for text, entry in found.items() if entry is None]
        self.metrics.cache_hits.inc(len(text_rows) - len(missing))
        self.metrics.cache_misses.inc(len(missing))
        with served.admission.reserve(len(image_rows) + len(missing)):
            computed, prepared = await _gather_first_error([
                self._encode_texts(served, missing, deadline=deadline),
                _gather_first_error(self._prepare_or_error(served, inputs[i], thumbnail_side) for i in image_rows),
            ])
            good = [(i, p) for i, p in zip(image_rows, prepared, strict=True) if not isinstance(p, SiglipServeError)]
            embeds = await self._submit_chunked(served.images, [p.prepared for _, p in good], deadline=deadline)
        found.update(computed)
        for i, error in zip(image_rows, prepared, strict=True):
            if isinstance(error, SiglipServeError):
                results[i] = error
        for (i, item), embedding in zip(good, embeds, strict=True):
            results[i] = l2_normalize(embedding).numpy()
            thumbnails[i] = item.thumbnail
        entries = [found[inputs[i].text] for i in text_rows]
        for i, entry in zip(text_rows, entries, strict=True):
            results[i] = l2_normalize(entry.embedding).numpy()
        usage = Usage(text_tokens=sum(entry.num_tokens for entry in entries), images=len(good),
                      image_tokens=len(good) * served.info.tokens_per_image)
        return ItemEmbeddings(results, usage, thumbnails)  # type: ignore[arg-type]  # every slot is filled above

    async def _prepare_or_error(self, served: ServedModel, item: Input,
                                thumbnail_side: int | None) -> PreparedItem | SiglipServeError:
        try:
            data = await self._fetch(item)
            prepared = await self._decode(served, item, data)
        except SiglipServeError as exc:
            return exc
        thumbnail = None
        if thumbnail_side is not None:
            try:  # the image decoded once already: a failure here costs the thumbnail, not the item
                thumbnail = await self._decoding(lambda budget: make_thumbnail(
                    data, side=thumbnail_side, max_pixels=self.config.max_decode_pixels, budget=budget))
            except SiglipServeError:
                thumbnail = None
        return PreparedItem(prepared, thumbnail)

    async def patch_features(self, served: ServedModel, images: Sequence[Input], *, layer: int,
                             deadline: float | None) -> tuple[list[PatchFeatures], Usage]:
        """Per image, its patch tokens of `layer` and the pooled output of the same forward, as
        `Model.encode_patches(..., pooled=True)`. The layer is checked and the images admitted before any work."""
        self._check_serving()
        if served.features is None or served.patch_layout is None:
            raise InvalidParameterError(f"model {served.name} does not serve vision features", param="model")
        index = served.patch_layout.resolve_layer(layer)
        if not images:
            raise EmptyInputError("at least one image is required", param="input")
        with served.admission.reserve(len(images)):
            prepared = await _gather_first_error(self._prepare(served, item) for item in images)
            results = await self._submit_chunked(served.features, [FeatureItem(p, index) for p in prepared],
                                                 deadline=deadline)
        return results, Usage(images=len(images), image_tokens=len(images) * served.info.tokens_per_image)

    async def classify(self, served: ServedModel, images: Sequence[Input], labels: Sequence[str], *,
                       templates: str | Sequence[str] | None, normalization: str = "sigmoid",
                       top_k: int | None = None, deadline: float | None
                       ) -> tuple[list[list[tuple[str, float]]], Usage]:
        """Per image, (label, probability) pairs best first, as `Model.classify`."""
        prompts = format_prompts(labels, templates)  # validates labels and templates first
        kind = check_classify_options(normalization, top_k)
        encoded = await self.encode(served, texts=[p for row in prompts for p in row], images=images,
                                    deadline=deadline)
        label_embeds = ensemble_templates(encoded.texts.reshape(len(prompts), len(labels), -1))
        probs = probabilities(logits(encoded.images, label_embeds, served.backend.temperature), kind)
        return [ranked_labels(labels, row, top_k) for row in probs], encoded.usage

    async def rerank(self, served: ServedModel, query: Input, documents: Sequence[Input], *,
                     top_n: int | None, deadline: float | None) -> tuple[list[tuple[int, float]], Usage]:
        """(document index, sigmoid relevance) pairs, best first."""
        embeds, usage = await self.embed(served, [query, *documents], normalize=False, deadline=deadline)
        embeds_t = torch.from_numpy(embeds)
        scores = probabilities(logits(embeds_t[:1], embeds_t[1:], served.backend.temperature),
                               Normalization.SIGMOID)[0]
        return ranked(scores, top_n), usage


async def _gather_first_error(coroutines: Any) -> list:
    """Run concurrently; on the first failure cancel the rest and raise that failure (not a group)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
