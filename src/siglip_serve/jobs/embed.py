"""`siglip-serve embed` as a function: sources in, a Lance or Parquet dataset of embeddings out.

    from siglip_serve.jobs.embed import EmbedOptions, run_embed
    summary = run_embed(EmbedOptions(sources=["photos/"], out="data/photos"))
    print(summary.line())

Resumable: ids already in `out` are skipped, so rerunning the same command after a crash, a kill or
Ctrl-C embeds only the rest. A dataset made by another model or with other options is refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

import siglip_serve
from siglip_serve.jobs.decode import Decoder
from siglip_serve.jobs.options import EmbedOptions
from siglip_serve.jobs.pipeline import Pipeline
from siglip_serve.jobs.sources import Inputs, Item, JobInputError, collect_inputs
from siglip_serve.jobs.writer import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LanceOutput,
    ParquetOutput,
    check_compatible,
    open_output,
    output_paths,
    output_schema,
)

PROBE_TEXT = "a photo of a cat"


def default_workers() -> int:
    """Decoding threads: one per core, at most 8 (more only adds contention with the model's threads)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


@dataclass
class EmbedSummary:
    location: str
    embedded: int = 0
    failed: int = 0
    skipped: int = 0  # walked or globbed files that are not images
    already_present: int = 0
    duplicate_ids: int = 0
    pending: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        text = f"{self.embedded} embedded, {self.failed} failed, in {self.seconds:.1f} s, {self.rate:.1f} img/s"
        extras = [f"{count} {what}" for count, what in (
            (self.already_present, "already present"), (self.skipped, "skipped (not images)"),
            (self.duplicate_ids, "duplicate ids ignored")) if count]
        if extras:
            text += f" ({', '.join(extras)})"
        return text + (" - interrupted" if self.interrupted else "") + f" -> {self.location}"


def probe_image() -> Image.Image:
    """A fixed synthetic picture: its embedding identifies the model's vision tower."""
    y, x = np.mgrid[0:48, 0:64]
    pixels = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def job_info(model: Any, options: EmbedOptions) -> dict[str, Any]:
    """What the dataset's metadata says about how it was made (see writer.check_compatible)."""
    info = model.info
    text_probe = model.embed_texts([PROBE_TEXT])[0]
    image_probe = torch.nn.functional.normalize(
        model.encode_prepared_images([model.prepare_image(probe_image())]).float(), dim=-1)[0]
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created_by": f"siglip-serve {siglip_serve.__version__} embed",
        "model": info.name,
        "spec": options.model,
        "family": info.family,
        "image_size": info.image_size,
        "patch_size": info.patch_size,
        "embed_dim": info.embed_dim,
        "embedding_dtype": "float16" if options.half else "float32",
        "compute_dtype": compute_dtype(model, options.dtype),
        "device": getattr(info, "device", options.device),
        "jpeg_draft": options.jpeg_draft,
        "normalization": "l2",
        "text_column": options.text_column,
        "labels": options.labels,
        "top_k": options.top_k,
        "label_template": siglip_serve.DEFAULT_TEMPLATE if options.labels else None,
        "label_scores": "sigmoid" if options.labels else None,
        "probe": {"text_input": PROBE_TEXT, "text": [round(float(v), 6) for v in text_probe],
                  "image": [round(float(v), 6) for v in image_probe]},
    }


def compute_dtype(model: Any, requested: str) -> str:
    """The dtype the towers run in, where the model says; else what was asked for."""
    towers = getattr(getattr(model, "checkpoint", None), "towers", None)
    dtype = getattr(towers, "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else requested


def job_inputs(options: EmbedOptions) -> Inputs:
    """The job's items (refusing no inputs, or --labels without a label)."""
    inputs = collect_inputs(options.sources, image_column=options.image_column, id_column=options.id_column,
                            text_column=options.text_column, exclude=output_paths(options.out, options.format))
    if not inputs.items:
        raise JobInputError(f"no inputs found in {', '.join(options.sources)}")
    if options.labels is not None and not options.labels:
        raise JobInputError("--labels needs at least one label")
    return inputs


def open_job(options: EmbedOptions, inputs: Inputs, *, info: dict[str, Any],
             embed_dim: int) -> tuple[LanceOutput | ParquetOutput, list[Item], EmbedSummary]:
    """The output, created or checked against this run (`info`: `job_info`), the items it lacks, and the
    summary so far. Shared by the local job and the Ray one (scaling/data_job.py), so both write the same
    schema, ids and metadata and resume the same way."""
    schema = output_schema(embed_dim=embed_dim, half=options.half, text=options.text_column is not None,
                           labels=options.labels is not None, metadata=inputs.metadata.schema, info=info)
    output = open_output(options.out, options.format)
    existing = output.existing_schema
    if existing is not None:
        check_compatible(existing, schema, output.location)
        done = output.existing_ids()
    else:
        output.create(schema)
        done = set()
    pending = [item for item in inputs.items if item.id not in done]
    summary = EmbedSummary(location=output.location, already_present=len(inputs.items) - len(pending),
                           duplicate_ids=len(inputs.duplicate_ids), pending=len(pending))
    summary.notes += [f"manifest column {old!r} is stored as {new!r} ({old!r} is an output column)"
                      for old, new in inputs.renamed_columns.items()]
    if inputs.duplicate_ids:
        summary.notes.append(f"{len(inputs.duplicate_ids)} duplicate ids ignored (first kept), e.g. "
                             f"{inputs.duplicate_ids[0]!r}")
    return output, pending, summary


def run_embed(options: EmbedOptions, *, model: Any = None,
              on_commit: Callable[[int], None] | None = None) -> EmbedSummary:
    """Run the job. `model`: an already loaded `siglip_serve.Model` (else `options.model` is loaded);
    `on_commit(count)` runs after each commit (tests use it to kill the job at a known point)."""
    inputs = job_inputs(options)
    if model is None:
        model = siglip_serve.load(options.model, device=options.device, dtype=options.dtype,
                                  batch_size=options.batch_size, jpeg_draft=options.jpeg_draft)
    output, pending, summary = open_job(options, inputs, info=job_info(model, options),
                                        embed_dim=model.info.embed_dim)
    workers = options.workers or default_workers()
    pipeline = Pipeline(
        model=model, output=output, metadata=inputs.metadata, batch_size=options.batch_size,
        workers=workers, decoder_factory=lambda: Decoder(model, workers=workers, policy=options.policy),
        half=options.half, text=options.text_column is not None, labels=options.labels,
        label_embeds=model.embed_labels(options.labels) if options.labels else None, top_k=options.top_k,
        commit_rows=options.commit_rows, commit_seconds=options.commit_seconds, quiet=options.quiet,
        on_commit=on_commit,
    )
    started = time.perf_counter()
    try:
        summary.interrupted = not pipeline.run(pending)
    finally:
        output.close()  # Parquet: merge the parts, also after Ctrl-C
    summary.seconds = time.perf_counter() - started
    counts = pipeline.counts
    summary.embedded, summary.failed, summary.skipped = counts.embedded, counts.failed, counts.skipped
    summary.failures = counts.failures
    return summary
