"""`siglip-serve embed` (issue #14 §1): folders and manifests with bad inputs, the library's vectors and
labels, resume after SIGKILL, refusing another model, exit statuses, and a light `--help`."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiny_checkpoints
from embed_job_inputs import BAD, GOOD, NOT_IMAGES, make_folder, serve_directory, unused_port, write_manifests
from flag_help import assert_flags_document_their_fields, help_entries
from sample_images import encode, photo_like

import siglip_serve
from siglip_serve.cli import main
from siglip_serve.jobs.embed import EmbedOptions, run_embed
from siglip_serve.jobs.sources import collect_inputs
from siglip_serve.jobs.writer import OutputMismatchError, read_info
from siglip_serve.preprocess.fetch import FetchPolicy

LABELS = ["red circle", "blue square", "green tree"]
SUMMARY = re.compile(r"^\d+ embedded, \d+ failed, in [\d.]+ s, [\d.]+ img/s")


@pytest.fixture(scope="module")
def model(siglip1_dir: Path) -> siglip_serve.Model:
    return siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32", batch_size=4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("embed") / "folder")


def embed(model: siglip_serve.Model, sources: list[Path | str], out: Path, **options: object):
    defaults = {"batch_size": 4, "workers": 2, "quiet": True}
    return run_embed(EmbedOptions(sources=[str(s) for s in sources], out=str(out), model=model.info.name,
                                  **{**defaults, **options}), model=model)


def read_lance(out: Path) -> pa.Table:
    return lancedb.connect(out.parent).open_table(out.name).to_arrow()


def rows_by_id(table: pa.Table) -> dict[str, dict]:
    return {row["id"]: row for row in table.to_pylist()}


def test_folder_rows_vectors_and_metadata(model: siglip_serve.Model, folder: Path, tmp_path: Path) -> None:
    summary = embed(model, [folder], tmp_path / "db" / "photos")
    assert (summary.embedded, summary.failed, summary.skipped) == (len(GOOD), len(BAD), len(NOT_IMAGES))
    table = read_lance(tmp_path / "db" / "photos")
    rows = rows_by_id(table)
    assert sorted(rows) == sorted([*GOOD, *BAD])  # non-images and hidden files are not rows
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), model.info.embed_dim)
    expected = model.embed_images([str(folder / name) for name in GOOD]).numpy()
    for name, vector in zip(GOOD, expected, strict=True):
        row = rows[name]
        assert row["error"] is None and (row["width"], row["height"]) == GOOD[name]
        assert row["source"] == str((folder / name).resolve())
        np.testing.assert_allclose(np.asarray(row["embedding"], np.float32), vector, atol=1e-6, rtol=0)
    assert "empty" in rows["empty.png"]["error"] and "truncated" in rows["truncated.jpg"]["error"]
    for name in BAD:
        assert rows[name]["embedding"] is None and rows[name]["error"]
    info = read_info(table.schema)
    assert info["model"] == model.info.name and info["embed_dim"] == model.info.embed_dim
    assert (info["embedding_dtype"], info["compute_dtype"], info["normalization"]) == ("float32", "float32", "l2")


def test_labels_equal_classify(model: siglip_serve.Model, folder: Path, tmp_path: Path) -> None:
    embed(model, [folder], tmp_path / "db" / "tags", labels=LABELS, top_k=2)
    rows = rows_by_id(read_lance(tmp_path / "db" / "tags"))
    expected = model.classify([str(folder / name) for name in GOOD], LABELS, top_k=2)
    for name, ranked in zip(GOOD, expected, strict=True):
        assert rows[name]["labels"] == [label for label, _ in ranked]
        np.testing.assert_allclose(rows[name]["scores"], [score for _, score in ranked], atol=1e-6, rtol=0)
    assert rows["corrupt.jpg"]["labels"] is None


def test_manifests_metadata_text_and_urls(model: siglip_serve.Model, folder: Path, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{unused_port()}/gone.jpg"
    with serve_directory(folder) as base:
        manifests = write_manifests(tmp_path / "manifests", folder, down, f"{base}/b.png")
        summary = embed(model, list(manifests.values()), tmp_path / "items.parquet", text_column="caption",
                        policy=FetchPolicy(allow_private=True, timeout_s=10))
    assert (summary.embedded, summary.failed) == (9, 6), summary.failures
    table = pq.read_table(tmp_path / "items.parquet")
    rows = rows_by_id(table)
    assert len(rows) == table.num_rows == 15
    files = model.embed_images([str(folder / "a.jpg"), str(folder / "b.png")]).numpy()
    captions = model.embed_texts(["a red circle", "served"]).numpy()
    for fmt in manifests:
        m1, m2, m3, gone, web = (rows[f"{fmt}-{k}"] for k in ("m1", "m2", "m3", "down", "web"))
        assert (m1["shop"], m1["price"], m3["shop"], web["price"]) == ("north", 3, "east", 7)
        np.testing.assert_allclose(m1["embedding"], files[0], atol=1e-6, rtol=0)
        np.testing.assert_allclose(web["embedding"], files[1], atol=1e-6, rtol=0)  # fetched over loopback
        np.testing.assert_allclose(m1["text_embedding"], captions[0], atol=1e-6, rtol=0)
        np.testing.assert_allclose(web["text_embedding"], captions[1], atol=1e-6, rtol=0)
        assert m3["text_embedding"] is None and m3["error"] is None  # no caption: no text, no error
        assert m2["error"] and "cannot fetch" in gone["error"] and gone["embedding"] is None
        assert gone["source"] == down and (web["width"], web["height"]) == GOOD["b.png"]


def test_parquet_resume_and_growth(model: siglip_serve.Model, folder: Path, tmp_path: Path) -> None:
    source = tmp_path / "grow"
    shutil.copytree(folder, source)
    out = tmp_path / "grow.parquet"
    first = embed(model, [source], out, commit_rows=2)
    assert first.embedded == len(GOOD) and not out.with_name("grow.parquet.parts").exists()
    again = embed(model, [source], out)
    assert (again.embedded, again.failed, again.already_present) == (0, 0, len(GOOD) + len(BAD))
    shutil.copy(folder / "a.jpg", source / "new.jpg")
    grown = embed(model, [source], out)
    assert (grown.embedded, grown.already_present) == (1, len(GOOD) + len(BAD))
    ids = pq.read_table(out, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted([*GOOD, *BAD, "new.jpg"])


KILL_AFTER_FIRST_COMMIT = """
import os, signal, sys
import siglip_serve
from siglip_serve.jobs.embed import EmbedOptions, run_embed
checkpoint, source, out = sys.argv[1:]
model = siglip_serve.load(checkpoint, device="cpu", dtype="float32", batch_size=2)
def kill(commits):
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: as a crash or `kill -9`
run_embed(EmbedOptions(sources=[source], out=out, batch_size=2, workers=1, commit_rows=3, quiet=True),
          model=model, on_commit=kill)
"""


@pytest.mark.parametrize("fmt", ["lance", "parquet"])
def test_resume_after_sigkill(model: siglip_serve.Model, folder: Path, siglip1_dir: Path, tmp_path: Path,
                              fmt: str) -> None:
    out = tmp_path / ("db/photos" if fmt == "lance" else "photos.parquet")
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_COMMIT, str(siglip1_dir), str(folder), str(out)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if fmt == "lance":
        committed = read_lance(out).num_rows
    else:
        assert not out.exists()
        committed = sum(pq.read_metadata(p).num_rows for p in out.with_name("photos.parquet.parts").iterdir())
    total = len(GOOD) + len(BAD)
    assert 3 <= committed < total  # the first commit, and nothing after it
    resumed = embed(model, [folder], out, batch_size=2)
    assert resumed.already_present == committed and resumed.embedded + resumed.failed == total - committed
    table = read_lance(out) if fmt == "lance" else pq.read_table(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == total


def test_another_model_or_other_options_refused(model: siglip_serve.Model, folder: Path, siglip1_dir: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "db" / "photos"
    embed(model, [folder], out)
    other = siglip_serve.load(str(tiny_checkpoints.build_siglip1(tmp_path / "other", seed=3)), device="cpu",
                              dtype="float32")
    with pytest.raises(OutputMismatchError, match="another model"):
        embed(other, [folder], out)
    with pytest.raises(OutputMismatchError, match="--half"):
        embed(model, [folder], out, half=True)
    # The same weights from another path (another name) are the same model: accepted.
    moved = siglip_serve.load(str(shutil.copytree(siglip1_dir, tmp_path / "moved")), device="cpu", dtype="float32")
    assert embed(moved, [folder], out).already_present == len(GOOD) + len(BAD)
    assert read_lance(out).num_rows == len(GOOD) + len(BAD)


def test_interrupt_keeps_committed_rows(model: siglip_serve.Model, folder: Path, tmp_path: Path) -> None:
    def ctrl_c(commits: int) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "db" / "photos"
    stopped = run_embed(EmbedOptions(sources=[str(folder)], out=str(out), batch_size=2, workers=1, commit_rows=3,
                                     quiet=True), model=model, on_commit=ctrl_c)
    assert stopped.interrupted and 3 <= read_lance(out).num_rows < len(GOOD) + len(BAD)
    rest = embed(model, [folder], out)
    assert not rest.interrupted and rest.already_present + rest.embedded + rest.failed == len(GOOD) + len(BAD)
    assert sorted(read_lance(out).column("id").to_pylist()) == sorted([*GOOD, *BAD])


@pytest.mark.parametrize("out_name", ["db/photos", "photos.parquet"])
def test_output_inside_source_and_oversized_files(model: siglip_serve.Model, tmp_path: Path, out_name: str) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "small.png").write_bytes(encode(photo_like(6, 5), "PNG"))
    (source / "video.bin").write_bytes(bytes(range(256)) * 8)  # not an image, over the limit: skipped
    (source / "huge.jpg").write_bytes(encode(photo_like(300, 200), "JPEG"))  # an image over the limit: error
    policy = FetchPolicy(max_bytes=1500)
    assert (source / "small.png").stat().st_size < 1500 < (source / "huge.jpg").stat().st_size
    first = embed(model, [source], source / out_name, policy=policy)
    assert (first.embedded, first.failed, first.skipped) == (1, 1, 1), first.failures
    assert "over the limit" in first.failures[0][1]
    again = embed(model, [source], source / out_name, policy=policy)  # the output's own files are never inputs
    assert (again.already_present, again.skipped, again.embedded) == (2, 1, 0)


def test_sources_ids(folder: Path, tmp_path: Path) -> None:
    globbed = collect_inputs([str(folder / "**" / "*.jpg")])
    assert sorted(i.id for i in globbed.items) == ["a.jpg", "corrupt.jpg", "rotated.jpg", "truncated.jpg"]
    doubled = collect_inputs([str(folder), str(folder)])
    assert len(doubled.duplicate_ids) == len(doubled.items) == len(GOOD) + len(BAD) + len(NOT_IMAGES)
    manifest = tmp_path / "ids.csv"
    manifest.write_text("id,image,width\n007,x.jpg,5\n,y.jpg,6\n")
    inputs = collect_inputs([str(manifest)])
    assert [i.id for i in inputs.items] == ["007", "y.jpg"]  # a CSV id stays a string; no id: the image value
    assert inputs.metadata.column_names == ["manifest_width"]  # "width" is an output column


def cli(capsys: pytest.CaptureFixture[str], checkpoint: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["embed", *argv, "--model", str(checkpoint), "--dtype", "float32", "--device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_progress_summary_and_exit_status(capsys: pytest.CaptureFixture[str], siglip1_dir: Path, folder: Path,
                                              tmp_path: Path) -> None:
    code, out, err = cli(capsys, siglip1_dir, str(folder), "--out", str(tmp_path / "db" / "a"), "--batch-size", "4")
    assert code == 0 and SUMMARY.match(out) and out.startswith(f"{len(GOOD)} embedded, {len(BAD)} failed")
    assert "img/s" in err and "failed=" in err and "failed: corrupt.jpg" in err  # progress bar, then failures
    code, out, _ = cli(capsys, siglip1_dir, str(folder), "--out", str(tmp_path / "db" / "b"), "--strict", "--quiet")
    assert code == 1 and SUMMARY.match(out)
    bad_only = tmp_path / "bad"
    bad_only.mkdir()
    for name in BAD:
        shutil.copy(folder / name, bad_only / name)
    code, out, _ = cli(capsys, siglip1_dir, str(bad_only), "--out", str(tmp_path / "db" / "c"), "--quiet")
    assert code == 1 and out.startswith(f"0 embedded, {len(BAD)} failed")  # nothing could be read
    code, _, err = cli(capsys, siglip1_dir, str(tmp_path / "missing"), "--out", str(tmp_path / "db" / "d"))
    assert code == 2 and "missing" in err


def test_help_imports_nothing_heavy() -> None:
    code = ("import sys; from siglip_serve.cli import build_parser; "
            "build_parser().parse_args(['embed', 'x', '--out', 'y']); "
            "print(sorted(m for m in ('torch', 'lancedb', 'pyarrow', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stderr


def embed_parser():
    from siglip_serve.cli import build_parser

    return build_parser("embed")


def test_every_existing_embed_flag_spelling_still_parses_to_the_job_s_options() -> None:
    """The flags are generated from EmbedOptions, UrlOptions and RayOptions; each spelling users have
    typed since issue #14 still parses, and to the option it always set."""
    from siglip_serve.jobs.options import RayOptions, UrlOptions
    from siglip_serve.option_flags import from_args

    argv = ["embed", "a/", "b.jsonl", "--out", "db/t", "--format", "parquet", "--model", "m", "--device", "cpu",
            "--dtype", "float32", "--batch-size", "8", "--workers", "3", "--image-column", "img", "--id-column", "key",
            "--text-column", "caption", "--labels", "cat, dog,,car", "--top-k", "2", "--half", "--jpeg-draft",
            "--commit-every", "5", "--commit-seconds", "1.5", "--allow-private-urls", "--fetch-timeout", "2.5",
            "--quiet", "--strict", "--ray", "--ray-address", "auto", "--actors", "4", "--gpus-per-actor", "0.5",
            "--cpus-per-actor", "2", "--decode-cpus", "0.5"]
    args = embed_parser().parse_args(argv)
    options = from_args(EmbedOptions, args, policy=from_args(UrlOptions, args).policy())
    assert options == EmbedOptions(
        sources=["a/", "b.jsonl"], out="db/t", model="m", device="cpu", dtype="float32", batch_size=8, workers=3,
        format="parquet", image_column="img", id_column="key", text_column="caption", labels=["cat", "dog", "car"],
        top_k=2, half=True, jpeg_draft=True, quiet=True, commit_rows=5, commit_seconds=1.5,
        policy=FetchPolicy(allow_private=True, timeout_s=2.5))
    assert from_args(RayOptions, args) == RayOptions(address="auto", actors=4, gpus_per_actor=0.5,
                                                     cpus_per_actor=2.0, decode_cpus=0.5)
    assert args.strict and args.ray
    # Nothing given: the flags' defaults are the dataclasses' own (the library's and the command's agree).
    bare = embed_parser().parse_args(["embed", "x", "--out", "y"])
    assert from_args(EmbedOptions, bare, policy=from_args(UrlOptions, bare).policy()) == EmbedOptions(["x"], "y")
    assert from_args(UrlOptions, bare).policy() == FetchPolicy()  # the server's defaults
    assert from_args(RayOptions, bare) == RayOptions()
    assert not bare.strict and not bare.ray


def test_every_embed_option_has_a_flag_with_help_and_its_default(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from siglip_serve.jobs.options import RayOptions, UrlOptions
    from siglip_serve.option_flags import is_flag

    monkeypatch.setenv("COLUMNS", "1000")  # no help is wrapped
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    entries = help_entries(capsys.readouterr().out)
    fields = [f for kind in (EmbedOptions, UrlOptions, RayOptions) for f in dataclasses.fields(kind) if is_flag(f)]
    assert len(fields) == 25  # 19 of the job (not its fetch policy), 2 URL limits, 5 of Ray (sources positional)
    assert_flags_document_their_fields(entries, fields)
    assert entries["--fetch-timeout"] == ("--fetch-timeout SECONDS",
                                          "Timeout for fetching one image URL, in seconds; the server's "
                                          "fetch_timeout_s setting. [default: 10.0]")
    assert entries["--commit-every"][0] == "--commit-every ROWS" and entries["--commit-every"][1].endswith(
        "[default: 1024]")


@pytest.mark.parametrize("argv", [["--batch-size", "0"], ["--fetch-timeout", "0"], ["--format", "csv"],
                                  ["--actors", "0"], ["--gpus-per-actor", "-1"], ["--top-k", "x"], []])
def test_bad_embed_flags_are_usage_errors(capsys, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        embed_parser().parse_args(["embed", "x", *argv] + (["--out", "y"] if argv else []))
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err
