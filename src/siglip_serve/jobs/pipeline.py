"""The job's loop: keep the decode pool busy, feed the model full batches, commit rows in batches.

The model runs on this thread while the pool decodes the next batches (a window of twice the batch
plus the workers is in flight), so decoding overlaps the model instead of alternating with it.
Decoded images are collected as they finish, not in input order, so one slow URL holds up no batch;
row order in the output carries no meaning (ids do).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from siglip_serve.errors import SiglipServeError
from siglip_serve.jobs.decode import Decoder, Outcome
from siglip_serve.jobs.sources import Item

MAX_FAILURES_KEPT = 20  # failures listed in the summary; every one is in the output's error column


@dataclass
class Counts:
    embedded: int = 0
    failed: int = 0
    skipped: int = 0  # files found by walking or globbing that are not images
    failures: list[tuple[str, str]] = field(default_factory=list)

    def fail(self, item_id: str, message: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append((item_id, message))


@dataclass
class Rows:
    """Rows waiting for the next commit, column by column."""

    ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    widths: list[int | None] = field(default_factory=list)
    heights: list[int | None] = field(default_factory=list)
    embeddings: list[np.ndarray | None] = field(default_factory=list)
    text_embeddings: list[np.ndarray | None] = field(default_factory=list)
    labels: list[list[str] | None] = field(default_factory=list)
    scores: list[list[float] | None] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    metadata_rows: list[int | None] = field(default_factory=list)

    def add(self, outcome: Outcome, *, embedding: np.ndarray | None = None, text_embedding: np.ndarray | None = None,
            ranked: list[tuple[str, float]] | None = None, error: str | None = None) -> None:
        item = outcome.item
        self.ids.append(item.id)
        self.sources.append(item.reference)
        self.widths.append(outcome.width)
        self.heights.append(outcome.height)
        self.embeddings.append(embedding)
        self.text_embeddings.append(text_embedding)
        self.labels.append(None if ranked is None else [label for label, _ in ranked])
        self.scores.append(None if ranked is None else [score for _, score in ranked])
        self.errors.append(error or outcome.error)
        self.metadata_rows.append(item.metadata_row)

    def __len__(self) -> int:
        return len(self.ids)


def vector_array(vectors: Sequence[np.ndarray | None], dim: int, dtype: np.dtype) -> pa.FixedSizeListArray:
    """A fixed-size-list column with nulls for rows without a vector (error rows)."""
    flat = np.zeros((len(vectors), dim), dtype)
    missing = np.zeros(len(vectors), bool)
    for index, vector in enumerate(vectors):
        if vector is None:
            missing[index] = True
        else:
            flat[index] = vector
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim, mask=pa.array(missing))


@dataclass
class Pipeline:
    model: Any
    output: Any  # writer.LanceOutput | writer.ParquetOutput
    metadata: pa.Table
    batch_size: int
    workers: int
    decoder_factory: Callable[[], Decoder]
    half: bool = False
    text: bool = False
    labels: list[str] | None = None
    label_embeds: torch.Tensor | None = None
    top_k: int | None = None
    commit_rows: int = 1024
    commit_seconds: float = 60.0
    quiet: bool = False
    on_commit: Callable[[int], None] | None = None  # tests: called after each commit with the commit count
    counts: Counts = field(default_factory=Counts)
    commits: int = 0

    def __post_init__(self) -> None:
        self.dim = self.model.info.embed_dim
        self.rows = Rows()
        self.last_commit = time.monotonic()
        self.bar = tqdm(disable=True)  # `run` shows a real one; the Ray actors (scaling/data_job.py) none

    def run(self, pending: list[Item]) -> bool:
        """Embed `pending`; False when interrupted (Ctrl-C), after committing every row already embedded."""
        decoder = self.decoder_factory()
        self.bar = tqdm(total=len(pending), unit="img", disable=self.quiet, file=sys.stderr, dynamic_ncols=True,
                        smoothing=0.05)
        try:
            self._loop(decoder, iter(pending))
            return True
        except KeyboardInterrupt:
            self.commit()  # atomic like every commit: a second Ctrl-C cannot leave half a batch
            return False
        finally:
            decoder.close()
            self.bar.close()

    def _loop(self, decoder: Decoder, items: Iterator[Item]) -> None:
        window = 2 * self.batch_size + 2 * self.workers
        in_flight: set[Future[Outcome]] = set()
        ready: list[Outcome] = []
        exhausted = False

        def top_up() -> None:
            nonlocal exhausted
            while not exhausted and len(in_flight) < window:
                item = next(items, None)
                if item is None:
                    exhausted = True
                else:
                    in_flight.add(decoder.submit(item))

        while True:
            top_up()
            if in_flight:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    in_flight.remove(future)
                    self._arrived(future.result(), ready)
                top_up()  # before the model call, so that the pool decodes while it runs
            finished = exhausted and not in_flight
            while len(ready) >= self.batch_size or (finished and ready):
                self.embed(ready[: self.batch_size])
                del ready[: self.batch_size]
            if finished:
                self.commit()
                return
            self.maybe_commit()

    def _arrived(self, outcome: Outcome, ready: list[Outcome]) -> None:
        if outcome.skipped:
            self.counts.skipped += 1
            self.bar.update(1)
        elif outcome.error is not None:
            self.rows.add(outcome)
            self._failed(outcome.item.id, outcome.error)
        else:
            ready.append(outcome)

    def _failed(self, item_id: str, message: str) -> None:
        self.counts.fail(item_id, message)
        self.bar.set_postfix_str(f"failed={self.counts.failed}", refresh=False)
        self.bar.update(1)

    def embed(self, batch: list[Outcome]) -> None:
        """One model call on a full batch (the last one may be short), then its rows."""
        raw = self.model.encode_prepared_images([o.prepared for o in batch])
        embeds = torch.nn.functional.normalize(raw.float(), dim=-1)  # as the library's embed_images
        ranked = None
        if self.labels is not None and self.label_embeds is not None:
            ranked = self.model.classify_embeddings(embeds, self.label_embeds, self.labels, top_k=self.top_k)
        texts = self._text_embeddings(batch) if self.text else [(None, None)] * len(batch)
        stored = embeds.numpy().astype(np.float16 if self.half else np.float32)
        for index, outcome in enumerate(batch):
            text_embedding, text_error = texts[index]
            self.rows.add(outcome, embedding=stored[index], text_embedding=text_embedding,
                          ranked=None if ranked is None else ranked[index], error=text_error)
            if text_error is None:
                self.counts.embedded += 1
                self.bar.update(1)
            else:
                self._failed(outcome.item.id, text_error)
        self.bar.refresh()

    def _text_embeddings(self, batch: list[Outcome]) -> list[tuple[np.ndarray | None, str | None]]:
        """(embedding, error) per row; a row without text gets neither. One bad text fails only its row."""
        result: list[tuple[np.ndarray | None, str | None]] = [(None, None)] * len(batch)
        indexed = [(i, o.item.text.strip()) for i, o in enumerate(batch) if o.item.text and o.item.text.strip()]
        if not indexed:
            return result
        dtype = np.float16 if self.half else np.float32
        try:
            embeds = self.model.embed_texts([text for _, text in indexed]).numpy().astype(dtype)
            for (index, _), embedding in zip(indexed, embeds, strict=True):
                result[index] = (embedding, None)
        except SiglipServeError:
            for index, text in indexed:
                try:
                    result[index] = (self.model.embed_texts([text]).numpy().astype(dtype)[0], None)
                except SiglipServeError as exc:
                    result[index] = (None, f"text: {exc.message}")
        return result

    def maybe_commit(self) -> None:
        due = time.monotonic() - self.last_commit >= self.commit_seconds
        if len(self.rows) >= self.commit_rows or (len(self.rows) and due):
            self.commit()

    def commit(self) -> None:
        rows, self.rows = self.rows, Rows()
        self.last_commit = time.monotonic()
        if len(rows):
            self.output.append(self.table(rows))
            self.commits += 1
            if self.on_commit is not None:
                self.on_commit(self.commits)

    def table(self, rows: Rows) -> pa.Table:
        value_type = np.float16 if self.half else np.float32
        columns: dict[str, pa.Array] = {
            "id": pa.array(rows.ids, pa.string()),
            "source": pa.array(rows.sources, pa.string()),
            "width": pa.array(rows.widths, pa.int32()),
            "height": pa.array(rows.heights, pa.int32()),
            "embedding": vector_array(rows.embeddings, self.dim, value_type),
        }
        if self.text:
            columns["text_embedding"] = vector_array(rows.text_embeddings, self.dim, value_type)
        if self.labels is not None:
            columns["labels"] = pa.array(rows.labels, pa.list_(pa.string()))
            columns["scores"] = pa.array(rows.scores, pa.list_(pa.float32()))
        columns["error"] = pa.array(rows.errors, pa.string())
        table = pa.table(columns)
        if self.metadata.num_columns:
            carried = self.metadata.take(pa.array(rows.metadata_rows, pa.int64()))  # null index -> null row
            for name in carried.column_names:
                table = table.append_column(name, carried.column(name))
        return table
