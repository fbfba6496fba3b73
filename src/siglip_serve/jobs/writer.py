"""The job's output: a Lance table (LanceDB) or a Parquet file, appended in atomic commits.

Lance: `--out DIR/NAME` is table NAME of the LanceDB database DIR (stored as DIR/NAME.lance), so a
server whose data directory is DIR can open it as collection NAME, and `DIR` may be an object-store
URI (s3://, gs://, az://) as LanceDB allows. Every append is a new Lance version, committed by an
atomic manifest write: a killed job leaves the last committed version intact and loses only rows
not yet appended (https://lancedb.github.io/lance/format.html, "Transactions").

Parquet: `--out FILE.parquet`. Parquet files cannot be appended to, so each commit is a part file in
FILE.parquet.parts/, written under a temporary name and renamed (atomic on POSIX), and the job ends
by merging the file and the parts into FILE.parquet (again via a temporary file and a rename). A
killed job leaves parts that the next run reads as committed rows and merges.

Both keep the job's description (model, probe embeddings, options) as JSON in the Arrow schema
metadata under "siglip_serve", so a rerun or a server can tell which model made the vectors.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from siglip_serve.errors import SiglipServeError

INFO_KEY = b"siglip_serve"
FORMAT_NAME = "siglip-serve-embeddings"
FORMAT_VERSION = 1
# Probe embeddings of one model agree to >0.9999 across float32/bfloat16/float16 and devices (bench/model_only
# "Half precision vs fp32"); two different checkpoints are nowhere near this.
PROBE_MIN_COSINE = 0.99
# (key in the info, what a user changes to change it)
_OPTION_KEYS = (("embed_dim", "embedding size"), ("embedding_dtype", "stored dtype (--half)"),
                ("normalization", "normalization"), ("text_column", "--text-column"), ("labels", "--labels"),
                ("top_k", "--top-k"))


class OutputMismatchError(SiglipServeError):
    """--out holds a dataset from another model, other options, or not from this job at all."""


def output_schema(*, embed_dim: int, half: bool, text: bool, labels: bool, metadata: pa.Schema,
                  info: dict[str, Any]) -> pa.Schema:
    value = pa.float16() if half else pa.float32()
    fields = [pa.field("id", pa.string(), nullable=False), pa.field("source", pa.string()),
              pa.field("width", pa.int32()), pa.field("height", pa.int32()),
              pa.field("embedding", pa.list_(value, embed_dim))]
    if text:
        fields.append(pa.field("text_embedding", pa.list_(value, embed_dim)))
    if labels:
        fields += [pa.field("labels", pa.list_(pa.string())), pa.field("scores", pa.list_(pa.float32()))]
    fields.append(pa.field("error", pa.string()))
    fields += [f.with_nullable(True) for f in metadata]
    return pa.schema(fields, metadata={INFO_KEY: json.dumps(info).encode()})


def read_info(schema: pa.Schema) -> dict[str, Any] | None:
    raw = (schema.metadata or {}).get(INFO_KEY)
    return json.loads(raw) if raw else None


def _cosine(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return -1.0
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norm if norm else -1.0


def check_compatible(existing: pa.Schema, new: pa.Schema, out: str) -> None:
    """Refuse to append to `out` unless the same model (by its probe embeddings, whatever its name or
    path) and the same options made it, and every column this run writes is there with the same type."""
    old_info, new_info = read_info(existing), read_info(new) or {}
    if old_info is None or old_info.get("format") != FORMAT_NAME:
        raise OutputMismatchError(f"{out} exists and was not written by `siglip-serve embed`; choose another --out")
    problems = []
    if old_info.get("embed_dim") == new_info.get("embed_dim"):
        old_probe, new_probe = old_info.get("probe", {}), new_info.get("probe", {})
        similarity = min(_cosine(old_probe.get(k, []), new_probe.get(k, [])) for k in ("text", "image"))
        if similarity < PROBE_MIN_COSINE:
            problems.append(f"it was made by model {old_info.get('model')!r}, and {new_info.get('model')!r} "
                            f"is another model (probe embedding cosine {similarity:.3f})")
    for key, what in _OPTION_KEYS:
        if old_info.get(key) != new_info.get(key):
            problems.append(f"{what} is {old_info.get(key)!r} there and {new_info.get(key)!r} now")
    for field in new:
        if field.name not in existing.names:
            problems.append(f"it has no column {field.name!r}")
        elif existing.field(field.name).type != field.type:
            problems.append(f"column {field.name!r} is {existing.field(field.name).type} there and {field.type} now")
    if problems:
        raise OutputMismatchError(f"refusing to add to {out}: " + "; ".join(problems)
                                  + ". Use another --out for another model or other options.")


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` in the dataset's column order and types; columns it lacks (metadata of other sources) are null."""
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def split_lance_out(out: str) -> tuple[str, str]:
    """`DIR/NAME` (or `DIR/NAME.lance`, or a URI) -> (database DIR, table NAME)."""
    if "://" in out:
        database, _, name = out.rstrip("/").rpartition("/")
    else:
        path = Path(out).expanduser().absolute()
        database, name = str(path.parent), path.name
    name = name.removesuffix(".lance")
    if not name or not database:
        raise OutputMismatchError(f"--out {out!r} does not name a table: use DIR/NAME")
    return database, name


class LanceOutput:
    def __init__(self, out: str) -> None:
        import lancedb

        self.database, self.name = split_lance_out(out)
        self.location = f"{self.database.rstrip('/')}/{self.name}.lance"
        self.db = lancedb.connect(self.database)
        try:
            self.table: Any = self.db.open_table(self.name)
        except ValueError:  # lancedb: "Table 'NAME' was not found"
            self.table = None

    @property
    def existing_schema(self) -> pa.Schema | None:
        return None if self.table is None else self.table.schema

    def existing_ids(self) -> set[str]:
        if self.table is None:
            return set()
        return set(self.table.search().select(["id"]).limit(None).to_arrow().column("id").to_pylist())

    def create(self, schema: pa.Schema) -> None:
        self.table = self.db.create_table(self.name, schema=schema)

    def append(self, rows: pa.Table) -> None:
        self.table.add(conform(rows, self.table.schema))

    def close(self) -> None:
        """Nothing to finalize: every append is already a committed version."""

    def row_count(self) -> int:
        return 0 if self.table is None else self.table.count_rows()


class ParquetOutput:
    def __init__(self, out: str) -> None:
        self.path = Path(out).expanduser().absolute()
        self.location = str(self.path)
        self.parts = self.path.with_name(self.path.name + ".parts")
        # Writes killed before their rename were never committed.
        for stale in [*self.parts.glob("*.tmp"), *self.path.parent.glob(self.path.name + ".merging-*.tmp")]:
            stale.unlink(missing_ok=True)
        self.schema: pa.Schema | None = None

    def _committed(self) -> list[Path]:
        parts = sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []
        return ([self.path] if self.path.is_file() else []) + parts

    @property
    def existing_schema(self) -> pa.Schema | None:
        committed = self._committed()
        return pq.read_schema(committed[0]) if committed else None

    def existing_ids(self) -> set[str]:
        return {i for path in self._committed() for i in pq.read_table(path, columns=["id"]).column("id").to_pylist()}

    def create(self, schema: pa.Schema) -> None:
        self.schema = schema

    def append(self, rows: pa.Table) -> None:
        if self.schema is None:
            self.schema = self.existing_schema
        assert self.schema is not None, "create() or an existing dataset comes first"
        self.parts.mkdir(parents=True, exist_ok=True)
        # time_ns and pid order the parts and keep two runs' names apart
        final = self.parts / f"part-{time.time_ns():020d}-{os.getpid()}.parquet"
        _write_atomically(conform(rows, self.schema), final)

    def close(self) -> None:
        """Merge the file and its parts into one file (deduplicating ids, first kept), then drop the parts."""
        committed = self._committed()
        if not any(p != self.path for p in committed):
            return
        schema = self.schema or self.existing_schema
        assert schema is not None
        tmp = self.path.with_name(self.path.name + f".merging-{os.getpid()}.tmp")
        seen: set[str] = set()
        with pq.ParquetWriter(tmp, schema) as writer:
            for path in committed:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
                    keep = []
                    for row_id in batch.column(batch.schema.get_field_index("id")).to_pylist():
                        keep.append(row_id not in seen)
                        seen.add(row_id)
                    writer.write_table(conform(pa.Table.from_batches([batch]).filter(pa.array(keep)), schema))
        _fsync(tmp)
        os.replace(tmp, self.path)
        for path in committed:
            if path != self.path:
                path.unlink()
        with contextlib.suppress(OSError):  # not empty: someone else's files; leave them
            self.parts.rmdir()

    def row_count(self) -> int:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self._committed())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(table: pa.Table, final: Path) -> None:
    tmp = final.with_name(final.name + ".tmp")
    pq.write_table(table, tmp)
    _fsync(tmp)
    os.replace(tmp, final)


def chosen_format(out: str, fmt: str | None) -> str:
    """`fmt` None: Parquet when --out ends in .parquet, else Lance."""
    return fmt or ("parquet" if out.lower().endswith(".parquet") else "lance")


def output_paths(out: str, fmt: str | None) -> list[Path]:
    """The local paths the output occupies, so that a source directory around them does not read them."""
    if "://" in out:
        return []
    if chosen_format(out, fmt) == "parquet":
        path = Path(out).expanduser().absolute()
        return [path, path.with_name(path.name + ".parts")]
    database, name = split_lance_out(out)
    return [Path(database) / f"{name}.lance"]


def open_output(out: str, fmt: str | None) -> LanceOutput | ParquetOutput:
    chosen = chosen_format(out, fmt)
    if chosen == "parquet":
        return ParquetOutput(out)
    if chosen == "lance":
        return LanceOutput(out)
    raise OutputMismatchError(f"unknown --format {fmt!r}: choose lance or parquet")
