"""Collection search at scale: ingest rate, exact and ANN search latency, recall@10 of the ANN index.

    python bench/ann_search.py                      # 10k, 100k and 1M vectors of 768 dimensions
    python bench/ann_search.py --sizes 10000,100000 # a subset
    python bench/ann_search.py --quick              # smoke run: 2k vectors of 64 dimensions
    python bench/ann_search.py --sizes 1000000 --work-dir /tmp/ann --keep   # build once, time again later

With `--keep`, each size's table and its index stay in `--work-dir` with a note of how long the ingest
and the build took (and at what load); a later run with `--keep` reuses them and only searches again,
so that the search figures can be taken on a quiet machine after a long build on a shared one.

Everything goes through `storage.collections.LanceCollectionStore`, the code the server runs:
ingest is `upsert` (LanceDB merge_insert on id) in batches, search is `search` (with the default
`IndexParams`), the index is `build_index`. The vectors are synthetic: random unit vectors with
clustered structure (centres drawn uniformly on the sphere, one per 1,000 vectors; each vector its
centre plus isotropic Gaussian noise of the same norm, normalized, so cosine to its centre is ~0.7).
Queries are drawn the same way and are not in the collection. Ground truth is numpy's exact top 10
by cosine; recall@10 is the fraction of it an answer holds. This shows the index's behaviour, not
that of real SigLIP embeddings, whose neighbourhoods are more uneven.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("LANCE_LOG", "error")  # Lance's Rust warnings (k-means on near-duplicates) to silence

from common import Report, markdown_table, stage, summarize  # noqa: E402

from siglip_serve.storage import NewItem  # noqa: E402
from siglip_serve.storage.collections import LanceCollectionStore  # noqa: E402
from siglip_serve.storage.index import IndexParams  # noqa: E402

BATCH = 5000  # items per upsert (the HTTP API takes up to --max-collection-items per request; 256 by default)
TOP_K = 10
GROUPS = 10  # metadata {"group": i % 10}, for the filtered search figures


def clustered(n: int, dim: int, *, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        x = centres[rng.integers(0, len(centres), stop - start)]
        x = x + rng.standard_normal((stop - start, dim), dtype=np.float32) / np.float32(dim**0.5)
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top(points: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[set[int]]:
    scores = queries @ points.T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return [set(row.tolist()) for row in top]


def search_run(store: LanceCollectionStore, queries: np.ndarray, truth: list[set[int]],
               where: dict | None = None) -> dict:
    store.search("bench", queries[0], top_k=TOP_K, where=where)  # warm: open the table, read the index
    seconds, recalls = [], []
    for query, expected in zip(queries, truth, strict=True):
        started = time.perf_counter()
        hits = store.search("bench", query, top_k=TOP_K, where=where)
        seconds.append(time.perf_counter() - started)
        recalls.append(len(expected & {int(h.id) for h in hits}) / TOP_K)
    stats = summarize([s * 1000 for s in seconds])
    return {"p50_ms": stats["p50"], "p99_ms": stats["p99"], "mean_ms": stats["mean"], "queries": len(queries),
            "recall_at_10": float(np.mean(recalls))}


def run_size(n: int, dim: int, n_queries: int, exact_queries: int, root: Path, *, index: bool,
             keep: bool = False, efs: tuple[int, ...] = (IndexParams().ef,)) -> list[dict]:
    rng = np.random.default_rng(n)
    centres = rng.standard_normal((max(10, n // 1000), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    with stage(f"{n}: vectors"):
        points = clustered(n, dim, seed=1, centres=centres)
        queries = clustered(n_queries, dim, seed=2, centres=centres)
        truth = exact_top(points, queries, TOP_K)
        group_mask = (np.arange(n) % GROUPS) == 3
        truth_filtered = exact_top(points, queries, TOP_K, group_mask)
    data = root / f"n{n}"
    built_note = data / "built.json"
    store = LanceCollectionStore(str(data), ann_index_threshold=0)
    built = json.loads(built_note.read_text()) if keep and built_note.exists() else None
    if built is None:
        shutil.rmtree(data, ignore_errors=True)
        store = LanceCollectionStore(str(data), ann_index_threshold=0)
        store.create("bench", model="synthetic", spec=None, embed_dim=dim)
        with stage(f"{n}: ingest"):
            started = time.perf_counter()
            for start in range(0, n, BATCH):
                stop = min(n, start + BATCH)
                store.upsert("bench", [NewItem(str(i), points[i], {"group": i % GROUPS}) for i in range(start, stop)])
            ingest_s = time.perf_counter() - started
        built = {"ingest_s": ingest_s, "ingest_load_average": list(os.getloadavg()), "index": None,
                 "index_build_s": None, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if keep:
            built_note.write_text(json.dumps(built))
    assert store.count("bench") == n
    if built.get("exact") is None:  # timed once, before any index (a kept table's figure is from its first run)
        with stage(f"{n}: exact search ({exact_queries} queries)"):
            built["exact"] = search_run(store, queries[:exact_queries], truth[:exact_queries])
            built["exact_load_average"] = list(os.getloadavg())
        if keep:
            built_note.write_text(json.dumps(built))
    if index and built["index"] is None:
        with stage(f"{n}: build the index"):
            started = time.perf_counter()
            built["index"] = store.build_index("bench").index
            built["index_build_s"] = time.perf_counter() - started
            built["build_load_average"] = list(os.getloadavg())
        if keep:
            built_note.write_text(json.dumps(built))
    rows = []
    for ef in efs if index else (IndexParams().ef,):
        row = {"n": n, "dim": dim, "clusters": len(centres), "ingest_rows_per_s": n / built["ingest_s"], **built,
               "ef": ef, "ann": {}, "ann_filtered": {}, "search_load_average": list(os.getloadavg())}
        if index:
            searcher = LanceCollectionStore(str(data), ann_index_threshold=0, index=replace(IndexParams(), ef=ef))
            with stage(f"{n}: ANN search, ef {ef} ({n_queries} queries)"):
                row["ann"] = search_run(searcher, queries, truth)
                row["ann_filtered"] = search_run(searcher, queries, truth_filtered, where={"group": 3})
        row["disk_mb"] = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) / 2**20
        rows.append(row)
    if not keep:
        shutil.rmtree(data, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=20, help="Queries timed without the index.")
    parser.add_argument("--work-dir", default=None, help="Where the tables go (default: a temporary directory).")
    parser.add_argument("--index-max", type=int, default=None,
                        help="Build no index above this many vectors (ingest and exact search only).")
    parser.add_argument("--keep", action="store_true",
                        help="Keep each size's table and index in --work-dir, and reuse them when already there.")
    parser.add_argument("--ef", default=str(IndexParams().ef),
                        help="Comma-separated search ef values to time on each index (default: the store's).")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.dim, args.queries, args.exact_queries = "2000", 64, 20, 5
    sizes = [int(s) for s in args.sizes.split(",")]
    report = Report("ann_search", smoke=args.quick, args=vars(args))
    report.add("index_params", vars(IndexParams()))
    root = Path(args.work_dir or tempfile.mkdtemp(prefix="siglip-ann-"))
    rows = []
    for n in sizes:
        found = run_size(n, args.dim, args.queries, min(args.exact_queries, args.queries), root,
                         index=args.index_max is None or n <= args.index_max, keep=args.keep,
                         efs=tuple(int(e) for e in args.ef.split(",")))
        rows.extend(found)
        print(found, file=sys.stderr, flush=True)
    report.add("results", rows)
    flat = [{"n": r["n"], "ef": r["ef"], "ingest": r["ingest_rows_per_s"], "exact_p50": r["exact"]["p50_ms"],
             "exact_p99": r["exact"]["p99_ms"], "build": r["index_build_s"], "index": r["index"],
             "p50": r["ann"].get("p50_ms"), "p99": r["ann"].get("p99_ms"), "recall": r["ann"].get("recall_at_10"),
             "f_p50": r["ann_filtered"].get("p50_ms"), "f_p99": r["ann_filtered"].get("p99_ms"),
             "f_recall": r["ann_filtered"].get("recall_at_10"), "disk": r["disk_mb"]} for r in rows]
    report.section(f"Search over {args.dim}-d vectors (top {TOP_K})", markdown_table(flat, [
        ("n", "vectors", ","), ("ef", "ef", "d"), ("ingest", "ingest rows/s", ",.0f"),
        ("exact_p50", "exact p50 ms", ".1f"),
        ("exact_p99", "exact p99 ms", ".1f"), ("index", "index", ""), ("build", "index build s", ".0f"),
        ("p50", "ANN p50 ms", ".1f"), ("p99", "ANN p99 ms", ".1f"), ("recall", "recall@10", ".3f"),
        ("f_p50", "filtered p50 ms", ".1f"), ("f_p99", "filtered p99 ms", ".1f"),
        ("f_recall", "filtered recall@10", ".3f"), ("disk", "disk MB", ",.0f")]))
    report.note("Synthetic data: random unit vectors with clustered structure (one centre per 1,000 vectors, "
                "cosine ~0.7 to it); queries drawn the same way, not in the collection. Ground truth: numpy's "
                "exact top 10.")
    report.note(f"Ingest: LanceCollectionStore.upsert (merge_insert on id) in batches of {BATCH}, "
                f"with metadata {{'group': i % {GROUPS}}}. Filtered: the same queries with filter "
                "{'group': 3} (a tenth of the items), prefiltered, against the exact filtered top 10.")
    report.note(f"Exact = the flat scan the store runs before an index exists, timed on the first "
                f"{min(args.exact_queries, args.queries)} queries.")
    report.write()


if __name__ == "__main__":
    main()
