"""Collections of embeddings in an embedded vector database (issue #14, section 2).

`storage.collections.CollectionStore` is what the server needs; `LanceCollectionStore` implements it
on LanceDB and is the only code that imports LanceDB. The HTTP layer gets a store through
``app.state.collections`` and imports only this module's plain types (no LanceDB, no pyarrow, no torch).

A collection is a Lance table in the data directory (``--data-dir``): ``DIR/NAME.lance`` is collection
NAME, whether the server made it or ``siglip-serve embed ... --out DIR/NAME`` did (storage.layout).
Lance is also what a cluster job can write and what several replicas can read from object storage
(``--data-dir s3://bucket/prefix``; LanceDB opens object-store URIs the same way).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

Scalar = str | int | float | bool | None  # a metadata value a filter can compare


@dataclass(frozen=True)
class NewItem:
    """An item to store: its id, its L2-normalized [D] float32 embedding, its metadata (a JSON object),
    and for an image its small JPEG thumbnail (preprocess.thumbnails), shown by the playground's search."""

    id: str
    embedding: np.ndarray
    metadata: Mapping[str, Any]
    thumbnail: bytes | None = None


__all__ = ["NewItem", "Scalar"]
