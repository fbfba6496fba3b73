"""The serving engine: per-request image preparation, one batcher per model and tower, the label cache.

No HTTP here; usable from Python directly (``async with Engine(...) as engine``).
Request path (style notes): fetch and decode per request in a worker pool, submit
tensors to the tower's batcher with a deadline, score with pure functions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np
import torch

from siglip_serve.config import Settings, default
from siglip_serve.engine.batcher import BatcherConfig, DynamicBatcher, ModelWorker
from siglip_serve.engine.inputs import Input
from siglip_serve.engine.label_cache import LabelCache
from siglip_serve.engine.scoring import Normalization, ensemble_templates, l2_normalize, probabilities, ranked
from siglip_serve.errors import EngineUnavailableError, SiglipServeError, UnknownModelError
from siglip_serve.metrics import Metrics
from siglip_serve.model import Model, format_prompts
from siglip_serve.preprocess.fetch import FetchPolicy, make_client, read_image_reference
from siglip_serve.preprocess.text import check_text


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


class ServedModel:
    """A library `Model` with its two batchers."""

    def __init__(self, name: str, model: Model, config: EngineConfig, metrics: Metrics,
                 worker: ModelWorker | None = None) -> None:
        self.name = name
        self.model = model
        model.batch_size = config.max_batch_size
        towers = model.checkpoint.towers

        # Rows are cloned: a view would keep its whole batch alive, in the label cache for instance.
        def run_images(pixels: list[np.ndarray]) -> list[torch.Tensor]:
            return [row.clone() for row in model.encode_prepared_images(pixels)]

        def run_texts(ids: list[torch.Tensor]) -> list[torch.Tensor]:
            return [row.clone() for row in towers.encode_texts(torch.stack(ids))]

        def batcher_config(tower: str) -> BatcherConfig:
            return BatcherConfig(max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
                                 max_queue_size=config.max_queue_size, name=f"{name}/{tower}")

        self.images: DynamicBatcher[np.ndarray, torch.Tensor] = DynamicBatcher(
            run_images, batcher_config("image"), observer=metrics, worker=worker)
        self.texts: DynamicBatcher[torch.Tensor, torch.Tensor] = DynamicBatcher(
            run_texts, batcher_config("text"), observer=metrics, worker=worker)

    @property
    def tokens_per_image(self) -> int:
        return self.model.checkpoint.towers.tokens_per_image


class Engine:
    """Owns batching for every served model. Start it before use; `healthy` says whether it can serve."""

    def __init__(self, models: Mapping[str, Model], config: EngineConfig | None = None,
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
            for device in {str(m.checkpoint.towers.device) for m in models.values()}
        }
        self.models = {name: ServedModel(name, m, self.config, self.metrics,
                                         self._workers[str(m.checkpoint.towers.device)])
                       for name, m in models.items()}
        self.cache = LabelCache(self.config.label_cache_size)
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
            await served.images.start()
            await served.texts.start()

    async def stop(self, *, drain: bool = True) -> None:
        for served in self.models.values():
            await served.images.stop(drain=drain)
            await served.texts.stop(drain=drain)
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
            s.images.healthy and s.texts.healthy for s in self.models.values()
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
            raise UnknownModelError(f"model {name!r} is not served; served: {', '.join(self.models)}",
                                    param="model")
        return served

    # --- towers -----------------------------------------------------------

    async def encode_images(self, served: ServedModel, images: Sequence[Input], *,
                            deadline: float | None) -> torch.Tensor:
        """Raw image embeddings [N, D]; each item is fetched and decoded concurrently in the pool."""
        self._check_serving()
        pixels = await _gather_first_error(self._prepare(served, item) for item in images)
        return torch.stack(await self._submit_chunked(served.images, pixels, deadline=deadline))

    async def _prepare(self, served: ServedModel, item: Input) -> np.ndarray:
        assert self._pool is not None and item.image is not None
        try:
            data = item.image
            if isinstance(data, str):
                started = time.perf_counter()
                data = await read_image_reference(data, policy=self.config.fetch, client=self._client)
                self.metrics.stage_seconds.labels("fetch").observe(time.perf_counter() - started)
            started = time.perf_counter()
            pixels = await asyncio.get_running_loop().run_in_executor(self._pool, served.model.prepare_image, data)
            self.metrics.stage_seconds.labels("decode").observe(time.perf_counter() - started)
            return pixels
        except SiglipServeError as exc:
            raise exc.at(item.param) from None

    async def encode_texts(self, served: ServedModel, texts: Sequence[str], *,
                           deadline: float | None) -> torch.Tensor:
        """Raw text embeddings [N, D], served from the label cache when possible."""
        self._check_serving()
        found = {text: self.cache.get(served.name, text) for text in dict.fromkeys(texts)}
        missing = [text for text, embedding in found.items() if embedding is None]
        self.metrics.cache_hits.inc(len(texts) - len(missing))
        self.metrics.cache_misses.inc(len(missing))
        if missing:
            ids = served.model.checkpoint.tokenizer(missing)
            computed = await self._submit_chunked(served.texts, list(ids), deadline=deadline)
            pairs = list(zip(missing, computed, strict=True))
            self.cache.put_many(served.name, pairs)
            found.update(pairs)
        return torch.stack([found[text] for text in texts])

    async def encode_inputs(self, served: ServedModel, inputs: Sequence[Input], *,
                            deadline: float | None) -> tuple[torch.Tensor, Usage]:
        """Raw embeddings of a mixed list of texts and images, in input order."""
        text_rows = [i for i, item in enumerate(inputs) if item.text is not None]
        image_rows = [i for i, item in enumerate(inputs) if item.image is not None]
        for i in text_rows:
            check_text(inputs[i].text, param=inputs[i].param)
        jobs = []
        if text_rows:
            jobs.append(self.encode_texts(served, [inputs[i].text for i in text_rows], deadline=deadline))
        if image_rows:
            jobs.append(self.encode_images(served, [inputs[i] for i in image_rows], deadline=deadline))
        encoded = await _gather_first_error(jobs)
        out = torch.empty(len(inputs), served.model.info.embed_dim)
        for rows, embeds in zip([r for r in (text_rows, image_rows) if r], encoded, strict=True):
            out[rows] = embeds
        usage = Usage(
            text_tokens=sum(served.model.checkpoint.tokenizer.num_tokens(inputs[i].text) for i in text_rows),
            images=len(image_rows),
            image_tokens=len(image_rows) * served.tokens_per_image,
        )
        return out, usage

    # --- tasks ------------------------------------------------------------

    async def embed(self, served: ServedModel, inputs: Sequence[Input], *, normalize: bool = True,
                    deadline: float | None) -> tuple[np.ndarray, Usage]:
        """[N, D] float32 embeddings of mixed texts and images, L2-normalized unless asked."""
        embeds, usage = await self.encode_inputs(served, inputs, deadline=deadline)
        return (l2_normalize(embeds) if normalize else embeds).numpy(), usage

    async def classify(self, served: ServedModel, images: Sequence[Input], labels: Sequence[str], *,
                       templates: str | Sequence[str] | None, normalization: str = "sigmoid",
                       top_k: int | None = None, deadline: float | None
                       ) -> tuple[list[list[tuple[str, float]]], Usage]:
        prompts = format_prompts(labels, templates)  # validates labels and templates first
        flat = [p for row in prompts for p in row]
        text_embeds, image_embeds = await _gather_first_error([
            self.encode_texts(served, flat, deadline=deadline),
            self.encode_images(served, images, deadline=deadline),
        ])
        label_embeds = ensemble_templates(text_embeds.reshape(len(prompts), len(labels), -1))
        results = served.model.classify_embeddings(image_embeds, label_embeds, labels,
                                                   normalization=normalization, top_k=top_k)
        tokenizer = served.model.checkpoint.tokenizer
        usage = Usage(text_tokens=sum(tokenizer.num_tokens(p) for p in flat), images=len(images),
                      image_tokens=len(images) * served.tokens_per_image)
        return results, usage

    async def rerank(self, served: ServedModel, query: Input, documents: Sequence[Input], *,
                     top_n: int | None, deadline: float | None) -> tuple[list[tuple[int, float]], Usage]:
        """(document index, sigmoid relevance) pairs, best first."""
        embeds, usage = await self.encode_inputs(served, [query, *documents], deadline=deadline)
        scores = probabilities(served.model.logits(embeds[:1], embeds[1:]), Normalization.SIGMOID)[0]
        order = ranked([str(i) for i in range(len(documents))], scores, top_n)
        return [(int(index), score) for index, score in order], usage

    async def _submit_chunked(self, batcher: DynamicBatcher, items: list, *, deadline: float | None) -> list:
        """Submit a large request a few batches at a time.

        A request may hold more items (1,000 labels, say) than the queue admits at once; it
        must not be refused as overload for that. Queueing four batches ahead keeps the model
        busy while other requests still get their turn between the chunks.
        """
        chunk = max(1, min(self.config.max_queue_size, 4 * self.config.max_batch_size))
        results: list = []
        for start in range(0, len(items), chunk):
            results.extend(await batcher.submit(items[start : start + chunk], deadline=deadline))
        return results

    def _check_serving(self) -> None:
        if not self.healthy:
            raise EngineUnavailableError("the engine is not serving (starting, stopping or failed)")


async def _gather_first_error(coroutines) -> list:
    """Run concurrently; on the first failure cancel the rest and raise that failure (not a group)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
