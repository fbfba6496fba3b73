"""`siglip-serve embed --ray`: the bulk job on Ray Data, writing what the local job writes.

The stages are the local job's (jobs/), scheduled by Ray instead of threads on one machine:

1. Here, on the driver: the same sources, ids and resume check (`jobs.embed.job_inputs`, `open_job`):
   only the ids missing from `--out` are sent to the cluster.
2. Decode and preprocess as CPU tasks (`map_batches(decode_batch)`): `jobs.decode.Decoder`, the same
   guarded URL fetch and the same error rows (a bad image is a row with its error, never a failed task).
3. The model in an actor pool (`map_batches(EmbedActor, concurrency=N)`): each actor loads the model once
   and runs `jobs.pipeline.Pipeline.embed` on full batches, as the local job does, so the vectors,
   labels and text embeddings are computed by the same code.
4. Back on the driver, streamed (`iter_batches`): the manifest metadata is joined by row and the rows
   are appended by `jobs.writer` in commits of --commit-every rows, exactly as the local job commits.
   A killed job loses only its uncommitted rows and a rerun embeds only the rest. The driver is the
   one writer: a commit is a few KB per row against milliseconds of model time per image, and one
   writer keeps Lance commits free of conflicts and Parquet parts in one place.

Prepared images travel between stages as pickled arrays in a binary column (a NaFlex input is a
dataclass of arrays, not a fixed-shape tensor).
"""

from __future__ import annotations

import pickle
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from siglip_serve.jobs.decode import Decoder, Outcome
from siglip_serve.jobs.embed import EmbedOptions, EmbedSummary, job_info, job_inputs, open_job
from siglip_serve.jobs.options import RayOptions
from siglip_serve.jobs.pipeline import MAX_FAILURES_KEPT, Counts, Pipeline, Rows
from siglip_serve.jobs.sources import Item
from siglip_serve.scaling.data_decode import ITEM_FIELDS, ImagePreparer, decode_batch

_INTERNAL = ("_metadata_row", "_skipped", "_node")
# The largest image allowed (64 MP as RGBA, 256 MB; --max-image-pixels' default) decoding, plus a batch of
# prepared inputs (32 x 1.7 MB at 384 px in float32).
DECODE_TASK_MEMORY_BYTES = 512 * 1024 * 1024


@dataclass
class RaySummary(EmbedSummary):
    nodes: set[str] = field(default_factory=set)  # the nodes whose actors embedded rows


def load_model(options: EmbedOptions, threads: int) -> Any:
    import torch

    import siglip_serve
    from siglip_serve.model import quiet_transformers

    torch.set_num_threads(threads)
    quiet_transformers()
    return siglip_serve.load(options.model, device=options.device, dtype=options.dtype,
                             batch_size=options.batch_size, jpeg_draft=options.jpeg_draft)


def describe(options: EmbedOptions, threads: int) -> tuple[dict[str, Any], int, ImagePreparer]:
    """Run where the actors run (same resources): the dataset's description, the embedding size, and the
    preprocessing the decode tasks use."""
    model = load_model(options, threads)
    preparer = ImagePreparer(model.checkpoint.image_transform, model.max_pixels, model.draft_size)
    return job_info(model, options), model.info.embed_dim, preparer


class EmbedActor:
    """One model per actor, loaded once; each call embeds one batch of decoded rows like the local job."""

    def __init__(self, options: EmbedOptions, threads: int) -> None:
        import ray

        model = load_model(options, threads)
        self.node = ray.get_runtime_context().get_node_id()
        self.pipeline = Pipeline(
            model=model, output=None, metadata=pa.table({}), batch_size=options.batch_size, workers=1,
            decoder_factory=lambda: Decoder(model, workers=1, policy=options.policy), half=options.half,
            text=options.text_column is not None, labels=options.labels,
            label_embeds=model.embed_labels(options.labels) if options.labels else None, top_k=options.top_k,
            quiet=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        ready: list[Outcome] = []
        skipped: list[bool] = []
        rows = self.pipeline.rows = Rows()
        self.pipeline.counts = Counts()
        for row in batch.to_pylist():
            metadata_row = row["metadata_row"]
            item = Item(**{name: row[name] for name in ITEM_FIELDS})
            item.metadata_row = metadata_row
            outcome = Outcome(item, width=row["width"], height=row["height"], error=row["error"],
                              skipped=row["skipped"])
            if outcome.skipped or outcome.error is not None:
                rows.add(outcome)  # an error row, or a skip the driver counts and drops
                skipped.append(outcome.skipped)
            else:
                outcome.prepared = pickle.loads(row["prepared"])
                ready.append(outcome)
        for start in range(0, len(ready), self.pipeline.batch_size):
            self.pipeline.embed(ready[start : start + self.pipeline.batch_size])
        skipped += [False] * (len(rows) - len(skipped))
        table = self.pipeline.table(rows)
        table = table.append_column("_metadata_row", pa.array(rows.metadata_rows, pa.int64()))
        table = table.append_column("_skipped", pa.array(skipped, pa.bool_()))
        return table.append_column("_node", pa.array([self.node] * len(rows), pa.string()))


def run_ray_embed(options: EmbedOptions, ray_options: RayOptions, *,
                  on_commit: Any = None) -> RaySummary:
    """The job on a Ray cluster (joined at `ray_options.address`, else a local one started for it)."""
    import ray

    inputs = job_inputs(options)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=ray_options.address, include_dashboard=False if ray_options.address is None else None,
                 logging_level="WARNING", log_to_driver=not options.quiet)
    try:
        return _run(options, ray_options, inputs, on_commit)
    finally:
        if started_ray:
            ray.shutdown()


def _run(options: EmbedOptions, ray_options: RayOptions, inputs: Any, on_commit: Any) -> RaySummary:
    import ray
    from ray.data import DataContext
    from tqdm import tqdm

    threads = max(1, int(ray_options.cpus_per_actor))
    info, embed_dim, preparer = ray.get(ray.remote(describe).options(
        num_cpus=ray_options.cpus_per_actor, num_gpus=ray_options.gpus_per_actor).remote(options, threads))
    output, pending, base = open_job(options, inputs, info=info, embed_dim=embed_dim)
    summary = RaySummary(**{name: getattr(base, name) for name in base.__dataclass_fields__})
    started = time.perf_counter()
    if not pending:
        output.close()
        return summary
    context = DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows one bar of committed rows, as the local job
    rows = [{"id": i.id, "reference": i.reference, "is_url": i.is_url, "must_be_image": i.must_be_image,
             "text": i.text, "metadata_row": -1 if i.metadata_row is None else i.metadata_row} for i in pending]
    dataset = (
        ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // options.batch_size, 512)))
        .map_batches(decode_batch, batch_size=options.batch_size, batch_format="pyarrow",
                     num_cpus=ray_options.decode_cpus,
                     # Reserved so that a node runs no more decode tasks than its memory holds. Also, as the
                     # actors reserve none, Ray Data keeps decoding in tasks of its own instead of fusing it
                     # into the actors (fusion needs equal remote args: ray.data's rules/operator_fusion.py):
                     # decoding runs on other CPUs, overlapped with the model.
                     memory=DECODE_TASK_MEMORY_BYTES,
                     fn_kwargs={"preparer": preparer, "policy": options.policy,
                                "workers": max(1, int(ray_options.decode_cpus))})
        .map_batches(EmbedActor, batch_size=options.batch_size, batch_format="pyarrow",
                     fn_constructor_kwargs={"options": options, "threads": threads},
                     compute=ray.data.ActorPoolStrategy(size=ray_options.actors), num_cpus=ray_options.cpus_per_actor,
                     num_gpus=ray_options.gpus_per_actor)
    )
    writer = _Committer(output, inputs.metadata, options, on_commit, summary)
    bar = tqdm(total=len(pending), unit="img", disable=options.quiet, file=sys.stderr, dynamic_ncols=True,
               smoothing=0.05)
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(batch)
            bar.update(batch.num_rows)
            bar.set_postfix_str(f"failed={summary.failed}", refresh=False)
        writer.commit()
    except KeyboardInterrupt:
        writer.commit()  # atomic like every commit
        summary.interrupted = True
    finally:
        bar.close()
        output.close()  # Parquet: merge the parts, also after Ctrl-C
    summary.seconds = time.perf_counter() - started
    return summary


class _Committer:
    """The driver's side: counts, joins metadata, and appends in commits of `commit_rows` (or every
    `commit_seconds`), as `Pipeline.maybe_commit` does for the local job."""

    def __init__(self, output: Any, metadata: pa.Table, options: EmbedOptions, on_commit: Any,
                 summary: RaySummary) -> None:
        self.output, self.metadata, self.options = output, metadata, options
        self.on_commit, self.summary = on_commit, summary
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.commits = 0
        self.last_commit = time.monotonic()

    def add(self, batch: pa.Table) -> None:
        skipped = batch.column("_skipped")
        self.summary.skipped += pc.sum(skipped.cast(pa.int64())).as_py() or 0
        kept = batch.filter(pc.invert(skipped))
        errors = kept.column("error")
        failed = kept.num_rows - pc.count(errors, mode="only_null").as_py()
        self.summary.failed += failed
        self.summary.embedded += kept.num_rows - failed
        for item_id, message in zip(kept.column("id").to_pylist(), errors.to_pylist(), strict=True):
            if message is not None and len(self.summary.failures) < MAX_FAILURES_KEPT:
                self.summary.failures.append((item_id, message))
        self.summary.nodes.update(n for n in pc.unique(kept.column("_node")).to_pylist() if n)
        if self.metadata.num_columns:
            indices = pc.if_else(pc.less(kept.column("_metadata_row"), 0), None, kept.column("_metadata_row"))
            carried = self.metadata.take(indices)  # null index -> null row
            for name in carried.column_names:
                kept = kept.append_column(name, carried.column(name))
        self.buffer.append(kept.drop_columns(list(_INTERNAL)))
        self.buffered += kept.num_rows
        due = time.monotonic() - self.last_commit >= self.options.commit_seconds
        if self.buffered >= self.options.commit_rows or (self.buffered and due):
            self.commit()

    def commit(self) -> None:
        self.last_commit = time.monotonic()
        if not self.buffered:
            return
        table = pa.concat_tables(self.buffer, promote_options="permissive")
        self.buffer, self.buffered = [], 0
        self.output.append(table)
        self.commits += 1
        if self.on_commit is not None:
            self.on_commit(self.commits)
