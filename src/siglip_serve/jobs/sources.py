"""What `siglip-serve embed` reads: directories, globs and manifests, each item with a stable id.

- A directory is walked recursively (symlinked files followed, symlinked directories not, so no
  loops; hidden files and directories skipped). Every file is offered to the decoder, not only those
  with an image suffix; one that Pillow cannot identify and whose suffix is not an image suffix (a
  README, a .DS_Store-like file) is skipped, while a corrupt, empty or truncated file with an image
  suffix, or one Pillow identifies but cannot decode, becomes an error row (see `decode.py`).
- A glob (`photos/**/*.jpg`, recursive `**` allowed) works like a directory rooted at the glob's
  literal prefix.
- A manifest (.jsonl, .csv, .parquet) has an image column (a path relative to the manifest, or an
  http(s) URL), optionally an id column and a text column; every other column is carried through as
  metadata. Every manifest row becomes a row of the output, an error row if its image is bad.

Ids are the manifest's id, else the path relative to the source's root (or the manifest's image
value), so a rerun finds the same ids and resumes.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from siglip_serve.errors import SiglipServeError
from siglip_serve.preprocess.fetch import is_url

# Suffixes of the formats the library decodes (preprocess/images.py ALLOWED_FORMATS): a file with one
# of them that fails to decode is a broken image and gets an error row rather than being skipped.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".apng", ".webp", ".gif", ".bmp",
                            ".dib", ".tif", ".tiff"})
MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")
# Columns the job writes itself; a manifest column of the same name is renamed "manifest_<name>".
OUTPUT_COLUMNS = frozenset({"id", "source", "width", "height", "embedding", "text_embedding", "labels", "scores",
                            "error"})
RENAMED_PREFIX = "manifest_"


class JobInputError(SiglipServeError):
    """A source that cannot be used at all: missing, unreadable manifest, missing column."""


@dataclass(slots=True)
class Item:
    id: str
    reference: str  # an absolute file path, or the URL as written
    is_url: bool = False
    must_be_image: bool = True  # False: found by walking or globbing, without an image suffix
    text: str | None = None
    metadata_row: int | None = None  # row of `Inputs.metadata`, for manifest rows


@dataclass
class Inputs:
    items: list[Item]
    metadata: pa.Table  # the manifests' metadata columns, unified; one row per manifest row
    duplicate_ids: list[str] = field(default_factory=list)  # seen again after the first (later ones dropped)
    renamed_columns: dict[str, str] = field(default_factory=dict)


def collect_inputs(sources: Sequence[str], *, image_column: str = "image", id_column: str = "id",
                   text_column: str | None = None, exclude: Sequence[Path] = ()) -> Inputs:
    """Every item of every source, in a deterministic order, first occurrence of each id kept.

    `exclude`: paths never read from a directory or a glob (the job's own output, when it lies inside a source).
    """
    excluded = {p.resolve() for p in exclude}
    items: list[Item] = []
    tables: list[pa.Table] = []
    renamed: dict[str, str] = {}
    row_offset = 0
    for source in sources:
        path = Path(source).expanduser()
        if glob.has_magic(source):
            items += glob_items(source, excluded)
        elif path.is_dir():
            items += directory_items(path, excluded)
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            manifest_rows, table, names = manifest_items(path, image_column=image_column, id_column=id_column,
                                                         text_column=text_column, row_offset=row_offset)
            items += manifest_rows
            tables.append(table)
            renamed.update(names)
            row_offset += table.num_rows
        elif path.is_file():
            items.append(Item(id=path.name, reference=str(path.resolve())))
        else:
            raise JobInputError(f"source {source!r} is not a directory, a file or a glob that exists")
    unique: dict[str, Item] = {}
    duplicates = []
    for item in items:
        if item.id in unique:
            duplicates.append(item.id)
        else:
            unique[item.id] = item
    return Inputs(list(unique.values()), unify_metadata(tables), duplicates, renamed)


def directory_items(root: Path, excluded: Set[Path] = frozenset()) -> list[Item]:
    items = []
    for directory, subdirs, files in os.walk(root):  # followlinks=False: a symlinked directory cannot loop
        subdirs[:] = sorted(d for d in subdirs
                            if not d.startswith(".") and (Path(directory) / d).resolve() not in excluded)
        for name in sorted(files):
            path = Path(directory) / name
            resolved = path.resolve()
            if not name.startswith(".") and resolved not in excluded and resolved.is_file():
                items.append(file_item(path, root, resolved))
    return items


def glob_items(pattern: str, excluded: Set[Path] = frozenset()) -> list[Item]:
    parts = Path(pattern).expanduser().parts
    literal = parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]
    root = Path(*literal) if literal else Path(".")
    items = []
    for match in sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True)):
        resolved = Path(match).resolve()
        if resolved.is_file() and not any(p in excluded for p in (resolved, *resolved.parents)):
            items.append(file_item(Path(match), root, resolved))
    return items


def file_item(path: Path, root: Path, resolved: Path) -> Item:
    return Item(id=path.relative_to(root).as_posix(), reference=str(resolved),
                must_be_image=path.suffix.lower() in IMAGE_SUFFIXES)


def read_manifest(path: Path, string_columns: Sequence[str]) -> pa.Table:
    """The manifest as an Arrow table; id, image and text columns read as strings (CSV "007" stays "007")."""
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            types = {name: pa.string() for name in string_columns}
            # An empty CSV field is a missing value (null), as an absent key is in JSON.
            options = pyarrow.csv.ConvertOptions(column_types=types, strings_can_be_null=True)
            return pyarrow.csv.read_csv(path, convert_options=options)
        if suffix == ".jsonl":
            if path.stat().st_size == 0:
                return pa.table({})
            return pyarrow.json.read_json(path)
        return pyarrow.parquet.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise JobInputError(f"cannot read manifest {path}: {exc}") from None


def manifest_items(path: Path, *, image_column: str, id_column: str, text_column: str | None,
                   row_offset: int) -> tuple[list[Item], pa.Table, dict[str, str]]:
    """The manifest's items, its metadata columns (renamed where they collide) and the renames."""
    wanted = [c for c in (image_column, id_column, text_column) if c]
    table = read_manifest(path, wanted)
    if table.num_rows == 0:
        return [], pa.table({}), {}
    if image_column not in table.column_names:
        raise JobInputError(f"manifest {path} has no {image_column!r} column (columns: {table.column_names})")
    if text_column and text_column not in table.column_names:
        raise JobInputError(f"manifest {path} has no text column {text_column!r} (columns: {table.column_names})")
    images = _strings(table, image_column)
    ids = _strings(table, id_column) if id_column in table.column_names else [None] * table.num_rows
    texts = _strings(table, text_column) if text_column else [None] * table.num_rows
    base = path.resolve().parent
    items = []
    for row, (image, given_id, text) in enumerate(zip(images, ids, texts, strict=True)):
        reference = (image or "").strip()
        url = is_url(reference)
        resolved = reference if url or not reference else str((base / Path(reference).expanduser()).resolve())
        items.append(Item(id=given_id if given_id and given_id.strip() else reference, reference=resolved, is_url=url,
                          text=text, metadata_row=row_offset + row))
    metadata = table.drop_columns([c for c in (image_column, id_column) if c in table.column_names])
    renames = {c: RENAMED_PREFIX + c for c in metadata.column_names if c in OUTPUT_COLUMNS}
    metadata = metadata.rename_columns([renames.get(c, c) for c in metadata.column_names])
    return items, metadata, renames


def _strings(table: pa.Table, column: str) -> list[str | None]:
    return pc.cast(table.column(column), pa.string()).to_pylist()


def unify_metadata(tables: list[pa.Table]) -> pa.Table:
    """One table over all manifests: a column missing from one manifest is null in its rows."""
    if not tables:
        return pa.table({})
    if not any(t.num_columns for t in tables):
        return pa.table({})
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise JobInputError(f"manifests disagree on the type of a metadata column: {exc}") from None
