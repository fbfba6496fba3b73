"""The ANN index of a collection: LanceDB's IVF_HNSW_SQ, with its build and search parameters.

IVF_HNSW_SQ (https://lancedb.github.io/lancedb/ann_indexes/, "HNSW index"): k-means splits the
vectors into `num_partitions` partitions, each searched through an HNSW graph (`m` links a node,
`ef_construction` candidates while linking) over 8-bit scalar-quantized vectors. A search walks the
graphs of the `nprobes` partitions nearest the query keeping `ef` candidates, then (`refine_factor`)
re-reads the full vectors of the best ``top_k * refine_factor`` to rank them by their exact distance.

Why not IVF_PQ, LanceDB's default: on 768-d clustered unit vectors it needed refine_factor 20 to
reach recall@10 0.95 and took 3x longer to build than IVF_HNSW_SQ, which gets 0.996-0.999 at ef 200 and
refine 5 from 10k to 1M vectors (bench/results/ann_search.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from siglip_serve.errors import InvalidParameterError

MIN_INDEX_ROWS = 256  # k-means and the quantizer need a sample to train on; below this, exact search is as fast


@dataclass(frozen=True)
class IndexParams:
    # Build: rows per IVF partition. One HNSW graph per partition: a query walks every probed graph,
    # and a walk costs about log(rows), so few large partitions answer fastest (one graph up to 1M rows).
    rows_per_partition: int = 1_000_000
    # Build: HNSW links per node and candidate list while linking (LanceDB's defaults: 20 and 300;
    # 150 halves the build time on 2 cores at no measurable recall cost at ef 100).
    m: int = 20
    ef_construction: int = 150
    # Search: partitions probed (every partition up to this many), candidates kept in the graph
    # walk, and candidates re-ranked by their exact distance as a multiple of top_k. ef 200, not 100:
    # at 1M vectors (one graph) ef 100 found recall@10 0.941, ef 200 0.999 at the same p50 (15 ms) and
    # a lower p99 (23 vs 34 ms), quiet, in one run (bench/results/ann_search.md); at 10k-100k both are >= 0.996.
    nprobes: int = 8
    ef: int = 200
    refine_factor: int = 5
    # Rebuild once the rows written since the build (each search scans them flat next to the
    # index) reach this fraction of the indexed rows.
    stale_fraction: float = 0.2


def index_config(params: IndexParams, *, rows: int) -> Any:
    from lancedb.index import IvfHnswSq

    if rows < MIN_INDEX_ROWS:
        raise InvalidParameterError(f"an ANN index needs at least {MIN_INDEX_ROWS} items, this collection has "
                                    f"{rows} (below that, exact search is as fast)", param="name")
    partitions = max(1, math.ceil(rows / params.rows_per_partition))
    return IvfHnswSq(distance_type="cosine", num_partitions=partitions, m=params.m,
                     ef_construction=params.ef_construction)
