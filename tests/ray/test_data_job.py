"""`siglip-serve embed --ray` on a local Ray cluster: the same dataset as the local job (schema, ids,
metadata, errors, vectors), resumable, and started by the command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cluster import WAIT_S
from embed_job_inputs import BAD, GOOD, NOT_IMAGES, make_folder, serve_directory, unused_port, write_manifests

from siglip_serve.jobs.embed import EmbedOptions, run_embed
from siglip_serve.jobs.writer import read_info
from siglip_serve.scaling.data_job import RayOptions, run_ray_embed

VECTOR_TOL = 1e-6  # fp32 on the CPU: batch composition changes results by ~1e-7 (shared notes §5)
VECTOR_COLUMNS = ("embedding", "text_embedding")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images"))


def options(sources: list[str], out: Path, checkpoint: Path, **extra: object) -> EmbedOptions:
    return EmbedOptions(sources=sources, out=str(out), model=str(checkpoint), device="cpu", dtype="float32",
                        batch_size=4, quiet=True, **extra)


def read(out: Path) -> pa.Table:
    if out.suffix == ".parquet":
        table = pq.read_table(out)
    else:
        table = lancedb.connect(str(out.parent)).open_table(out.name).to_arrow()
    return table.sort_by("id")


def assert_same_dataset(ray_table: pa.Table, local_table: pa.Table) -> None:
    assert ray_table.schema.remove_metadata() == local_table.schema.remove_metadata()
    ray_info, local_info = read_info(ray_table.schema), read_info(local_table.schema)
    assert ray_info == local_info  # model, options and probe embeddings
    assert ray_table.num_rows == local_table.num_rows
    for name in ray_table.column_names:
        if name in VECTOR_COLUMNS:
            ray_rows, local_rows = ray_table.column(name).to_pylist(), local_table.column(name).to_pylist()
            assert [r is None for r in ray_rows] == [r is None for r in local_rows], name
            pairs = [(r, loc) for r, loc in zip(ray_rows, local_rows, strict=True) if r is not None]
            assert pairs, f"no {name} to compare"
            np.testing.assert_allclose(np.array([r for r, _ in pairs]), np.array([loc for _, loc in pairs]),
                                       rtol=0, atol=VECTOR_TOL)
        elif name == "scores":
            for r, loc in zip(ray_table.column(name).to_pylist(), local_table.column(name).to_pylist(), strict=True):
                assert (r is None) == (loc is None)
                if r is not None:
                    np.testing.assert_allclose(r, loc, rtol=0, atol=VECTOR_TOL)
        else:
            assert ray_table.column(name).to_pylist() == local_table.column(name).to_pylist(), name


def test_ray_job_writes_what_the_local_job_writes(ray_driver: str, siglip1_dir: Path, folder: Path,
                                                  tmp_path: Path) -> None:
    """A folder with corrupt, empty and truncated images and non-images, plus a manifest with metadata,
    texts, a URL and an unreachable URL; zero-shot labels on top."""
    with serve_directory(folder) as base_url:
        manifests = write_manifests(tmp_path / "manifests", folder, f"http://127.0.0.1:{unused_port()}/x.jpg",
                                    f"{base_url}/a.jpg")
        sources = [str(folder), str(manifests["jsonl"])]
        extra = {"text_column": "caption", "labels": ["red", "blue", "dog"], "top_k": 2}
        from siglip_serve.preprocess.fetch import FetchPolicy

        policy = FetchPolicy(allow_private=True)  # the served URL is on loopback
        local = run_embed(options(sources, tmp_path / "out" / "local", siglip1_dir, policy=policy, **extra))
        on_ray = run_ray_embed(options(sources, tmp_path / "out" / "ray", siglip1_dir, policy=policy, **extra),
                               RayOptions(address=ray_driver))
    assert (on_ray.embedded, on_ray.failed, on_ray.skipped) == (local.embedded, local.failed, local.skipped)
    # The folder's good images and the manifest's good rows (a.jpg, c.webp, the served URL) embed; its
    # corrupt image, the unreachable URL and the folder's bad files are error rows; non-images are skipped.
    assert on_ray.embedded == len(GOOD) + 3 and on_ray.failed == len(BAD) + 2 and on_ray.skipped == len(NOT_IMAGES)
    assert len(on_ray.nodes) == 1
    ray_table, local_table = read(tmp_path / "out" / "ray"), read(tmp_path / "out" / "local")
    assert_same_dataset(ray_table, local_table)
    rows = {row["id"]: row for row in ray_table.to_pylist()}
    assert rows["jsonl-m1"]["shop"] == "north" and rows["jsonl-m1"]["price"] == 3  # metadata joined by row
    assert rows["corrupt.jpg"]["error"] and rows["corrupt.jpg"]["embedding"] is None


def test_ray_job_resumes_and_runs_from_the_command_line(ray_driver: str, siglip1_dir: Path, folder: Path,
                                                        tmp_path: Path) -> None:
    """Interrupted after its first commit, then finished by `siglip-serve embed --ray`: every id once, equal
    to the local job's Parquet file."""
    out = tmp_path / "ray.parquet"

    def interrupt(commits: int) -> None:
        raise KeyboardInterrupt

    first = run_ray_embed(options([str(folder)], out, siglip1_dir, commit_rows=2), RayOptions(address=ray_driver),
                          on_commit=interrupt)
    assert first.interrupted
    committed = read(out).num_rows
    assert 0 < committed < len(GOOD) + len(BAD)
    command = [sys.executable, "-m", "siglip_serve.cli", "embed", str(folder), "--out", str(out), "--ray",
               "--ray-address", ray_driver, "--model", str(siglip1_dir), "--device", "cpu", "--dtype", "float32",
               "--batch-size", "4", "--quiet"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGLIP_SERVE_", "RAY_ADDRESS"))}
    done = subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S, env=env)
    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    counts = re.match(r"(\d+) embedded, (\d+) failed", summary)
    assert counts is not None, summary
    assert int(counts[1]) + int(counts[2]) == len(GOOD) + len(BAD) - committed, summary
    assert f"{committed} already present" in summary, summary
    ray_table = read(out)
    assert sorted(ray_table.column("id").to_pylist()) == sorted(set(ray_table.column("id").to_pylist()))
    run_embed(options([str(folder)], tmp_path / "local.parquet", siglip1_dir))
    assert_same_dataset(ray_table, read(tmp_path / "local.parquet"))
