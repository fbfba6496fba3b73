"""The decode stage of `siglip-serve embed --ray` (scaling/data_job.py), in a module of its own so that a
decode task's worker imports no torch: Ray imports the module of the function it runs, and the job's
module imports the model code (about 0.5 GB per worker process, measured by Ray Data's memory check)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from siglip_serve.jobs.decode import Decoder
from siglip_serve.jobs.sources import Item
from siglip_serve.preprocess.fetch import FetchPolicy
from siglip_serve.preprocess.images import prepare_image

ITEM_FIELDS = ("id", "reference", "is_url", "must_be_image", "text", "metadata_row")


@dataclass(frozen=True)
class ImagePreparer:
    """`Model.prepare_image` without the model: the checkpoint's transform and the same limits, so that
    decode tasks need no weights (`Decoder` only calls `prepare_image`)."""

    transform: Any
    max_pixels: int
    draft_size: int | None

    def prepare_image(self, source: Any) -> Any:
        return prepare_image(source, self.transform, max_pixels=self.max_pixels, draft_size=self.draft_size)


def decode_batch(batch: pa.Table, *, preparer: ImagePreparer, policy: FetchPolicy, workers: int) -> pa.Table:
    """Items in, `Outcome`s as columns out; every item gets its row (errors and skips included)."""
    items = [Item(**{name: row[name] for name in ITEM_FIELDS}) for row in batch.to_pylist()]
    for item in items:
        item.metadata_row = None if item.metadata_row is None or item.metadata_row < 0 else item.metadata_row
    decoder = Decoder(preparer, workers=workers, policy=policy)
    try:
        outcomes = [future.result() for future in [decoder.submit(item) for item in items]]
    finally:
        decoder.close()
    columns: dict[str, Any] = {name: [getattr(o.item, name) for o in outcomes] for name in ITEM_FIELDS}
    columns["metadata_row"] = [-1 if value is None else value for value in columns["metadata_row"]]
    columns["width"] = pa.array([o.width for o in outcomes], pa.int32())
    columns["height"] = pa.array([o.height for o in outcomes], pa.int32())
    columns["error"] = pa.array([o.error for o in outcomes], pa.string())
    columns["skipped"] = [o.skipped for o in outcomes]
    columns["prepared"] = pa.array([None if o.prepared is None else pickle.dumps(o.prepared, protocol=5)
                                    for o in outcomes], pa.large_binary())
    return pa.table(columns)
