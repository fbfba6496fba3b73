"""How a collection's items look in its Lance table. A collection has one of two layouts:

- `ApiLayout`, collections made through the API (``POST /v1/collections``): ``id``, ``embedding``,
  ``thumbnail`` (a small JPEG of an image item, null for texts; absent from format-1 tables, made before it),
  ``metadata`` (the item's JSON object as text) and ``tags``, its top-level scalar entries as canonical
  ``["key", value]`` JSON strings, so that a metadata equality filter is ``array_has_all(tags, [...])``
  (LanceDB's SQL filters, https://lancedb.github.io/lancedb/sql/; a LABEL_LIST scalar index serves it).
- `EmbedJobLayout`, tables written by ``siglip-serve embed`` (`siglip_serve.jobs.writer.output_schema`):
  ``id, source, width, height, embedding, [text_embedding], [labels, scores], error`` and the manifest's
  columns. An item's metadata is every column but the vectors and ``error``; a filter compares columns;
  rows whose image failed (``error`` set, no embedding) are not items.

Both keep the description of the model that made the vectors as JSON in the Arrow schema metadata
under ``siglip_serve`` (`jobs.writer.INFO_KEY`). Filters are built from values only through
`sql_literal` (quotes doubled, numbers checked finite) and from column names that exist in the schema.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from siglip_serve.errors import InvalidParameterError, SiglipServeError, shown
from siglip_serve.jobs.writer import FORMAT_NAME as EMBED_JOB_FORMAT
from siglip_serve.jobs.writer import INFO_KEY, read_info
from siglip_serve.storage import NewItem, Scalar

COLLECTION_FORMAT = "siglip-serve-collection"
COLLECTION_FORMAT_VERSION = 2  # 2: a thumbnail column
VECTOR = "embedding"
THUMBNAIL = "thumbnail"


def sql_literal(value: Scalar, *, param: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str) and "\x00" not in value:
        return "'" + value.replace("'", "''") + "'"  # SQL's only escape in a string literal
    raise InvalidParameterError(f"filter values must be strings, numbers, booleans or null, not {shown(value)}",
                                param=param)


def tag(key: str, value: Scalar) -> str:
    """The canonical text of one metadata entry; 1 and 1.0 are the same value, as in JSON."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps([key, value], ensure_ascii=False, separators=(",", ":"))


class Layout:
    """What the store needs to know about one table's columns."""

    origin: str
    items_filter: str | None = None  # SQL selecting the rows that are items (None: every row)

    def __init__(self, schema: pa.Schema, info: dict[str, Any]) -> None:
        self.schema = schema
        self.info = info
        vector_type = schema.field(VECTOR).type
        self.dim: int = vector_type.list_size
        self.value_type: pa.DataType = vector_type.value_type
        self.has_thumbnails = THUMBNAIL in schema.names

    def thumbnails(self, items: Sequence[NewItem]) -> pa.Array:
        return pa.array([item.thumbnail for item in items], pa.binary())

    def vectors(self, items: Sequence[NewItem]) -> pa.Array:
        if not items:
            return pa.nulls(0, self.schema.field(VECTOR).type)
        flat = np.concatenate([np.asarray(item.embedding, dtype=np.float32).reshape(-1) for item in items])
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()).cast(self.value_type), self.dim)

    def columns(self) -> list[str]:
        """Columns a search returns (besides the vector, always read to compute the exact cosine)."""
        raise NotImplementedError

    def metadata_of(self, row: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def rows(self, items: Sequence[NewItem]) -> tuple[pa.Table, list[SiglipServeError | None]]:
        """The rows of the items that can be stored, and per item None or why it cannot be."""
        raise NotImplementedError

    def where(self, equal: Mapping[str, Scalar] | None) -> str | None:
        """SQL for items whose metadata has every (key, value) of `equal`."""
        raise NotImplementedError

    @staticmethod
    def of(schema: pa.Schema) -> Layout | None:
        """The layout of a table, or None when the table is not a siglip-serve collection."""
        info = read_info(schema)
        if info is None or VECTOR not in schema.names or not pa.types.is_fixed_size_list(schema.field(VECTOR).type):
            return None
        if info.get("format") == COLLECTION_FORMAT:
            return ApiLayout(schema, info)
        if info.get("format") == EMBED_JOB_FORMAT:
            return EmbedJobLayout(schema, info)
        return None


class ApiLayout(Layout):
    origin = "api"

    @staticmethod
    def schema(embed_dim: int, info: dict[str, Any]) -> pa.Schema:
        fields = [pa.field("id", pa.string(), nullable=False), pa.field(VECTOR, pa.list_(pa.float32(), embed_dim)),
                  pa.field("metadata", pa.string()), pa.field("tags", pa.list_(pa.string())),
                  pa.field(THUMBNAIL, pa.binary())]
        return pa.schema(fields, metadata={INFO_KEY: json.dumps(info).encode()})

    def columns(self) -> list[str]:
        return ["id", "metadata"]

    def metadata_of(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return json.loads(row["metadata"]) if row.get("metadata") else {}

    def rows(self, items: Sequence[NewItem]) -> tuple[pa.Table, list[SiglipServeError | None]]:
        texts, tags, errors = [], [], []
        for item in items:
            try:
                texts.append(json.dumps(dict(item.metadata), ensure_ascii=False, allow_nan=False))
            except (TypeError, ValueError) as exc:
                texts.append(None)
                errors.append(InvalidParameterError(f"metadata is not a JSON object: {exc}", param="metadata"))
                continue
            tags.append([tag(k, v) for k, v in item.metadata.items() if isinstance(v, Scalar)])
            errors.append(None)
        kept = [item for item, error in zip(items, errors, strict=True) if error is None]
        columns = {"id": pa.array([item.id for item in kept], pa.string()), VECTOR: self.vectors(kept),
                   "metadata": pa.array([t for t in texts if t is not None], pa.string()),
                   "tags": pa.array(tags, pa.list_(pa.string()))}
        if self.has_thumbnails:
            columns[THUMBNAIL] = self.thumbnails(kept)
        return pa.Table.from_pydict(columns, schema=self.schema), errors

    def where(self, equal: Mapping[str, Scalar] | None) -> str | None:
        if not equal:
            return None
        for key, value in equal.items():
            if not isinstance(value, Scalar) or (isinstance(value, float) and not math.isfinite(value)):
                raise InvalidParameterError(f"filter values must be strings, numbers, booleans or null, not "
                                            f"{shown(value)}", param=f"filter.{key}")
        wanted = ", ".join(sql_literal(tag(k, v), param="filter") for k, v in equal.items())
        return f"array_has_all(tags, [{wanted}])"


class EmbedJobLayout(Layout):
    origin = "embed"
    items_filter = "error IS NULL"
    _NOT_METADATA = ("id", VECTOR, "text_embedding", "error", THUMBNAIL)

    def __init__(self, schema: pa.Schema, info: dict[str, Any]) -> None:
        super().__init__(schema, info)
        self.metadata_fields = [f for f in schema if f.name not in self._NOT_METADATA]

    def columns(self) -> list[str]:
        return ["id", *(f.name for f in self.metadata_fields)]

    def metadata_of(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {f.name: row.get(f.name) for f in self.metadata_fields}

    def rows(self, items: Sequence[NewItem]) -> tuple[pa.Table, list[SiglipServeError | None]]:
        meta_schema = pa.schema(self.metadata_fields)
        names = set(meta_schema.names)
        records, errors = [], []
        for item in items:
            unknown = [key for key in item.metadata if key not in names]
            if unknown:
                errors.append(InvalidParameterError(
                    f"this collection was made by `siglip-serve embed`; metadata keys are its columns "
                    f"({', '.join(meta_schema.names)}), not {shown(unknown[0])}", param="metadata"))
                continue
            record = {name: item.metadata.get(name) for name in meta_schema.names}
            try:
                pa.Table.from_pylist([record], schema=meta_schema)  # the types fit, or this item fails
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                errors.append(InvalidParameterError(f"does not fit the collection's columns: {exc}",
                                                    param="metadata"))
                continue
            records.append(record)
            errors.append(None)
        kept = [item for item, error in zip(items, errors, strict=True) if error is None]
        meta = pa.Table.from_pylist(records, schema=meta_schema)
        columns = []
        for field in self.schema:
            if field.name == "id":
                columns.append(pa.array([item.id for item in kept], pa.string()))
            elif field.name == VECTOR:
                columns.append(self.vectors(kept))
            elif field.name in names:
                columns.append(meta.column(field.name))
            elif field.name == THUMBNAIL:
                columns.append(self.thumbnails(kept).cast(field.type))
            else:  # text_embedding, error
                columns.append(pa.nulls(len(kept), field.type))
        return pa.Table.from_arrays(columns, schema=self.schema), errors

    def where(self, equal: Mapping[str, Scalar] | None) -> str | None:
        clauses = [self.items_filter or "true"]
        for key, value in (equal or {}).items():
            param = f"filter.{key}"
            names = [f.name for f in self.metadata_fields]
            if key not in names or "`" in key:
                raise InvalidParameterError(f"no such metadata column; this collection's are: {', '.join(names)}",
                                            param=param)
            kind = self.schema.field(key).type
            if value is None:
                clauses.append(f"`{key}` IS NULL")
                continue
            fits = ((pa.types.is_string(kind) or pa.types.is_large_string(kind)) and isinstance(value, str)) or (
                (pa.types.is_integer(kind) or pa.types.is_floating(kind))
                and isinstance(value, int | float) and not isinstance(value, bool)) or (
                pa.types.is_boolean(kind) and isinstance(value, bool))
            if not fits:
                raise InvalidParameterError(f"column {shown(key)} holds {kind}; cannot compare it with {shown(value)}",
                                            param=param)
            clauses.append(f"`{key}` = {sql_literal(value, param=param)}")
        return " AND ".join(clauses)
