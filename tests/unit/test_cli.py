"""The `siglip-serve` command: classify, models and serve --help, in-process through `cli.main`
plus one real run of the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sample_images import encode, photo_like

from siglip_serve.cli import main

SEEDS = [
    "google/siglip-base-patch16-512",
    "google/siglip-large-patch16-384",
    "google/siglip-so400m-patch14-384",
    "timm/ViT-B-16-SigLIP",
    "google/siglip2-so400m-patch14-384",
]
LABELS = ["cat", "dog", "car"]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    directory = tmp_path_factory.mktemp("images")
    paths = []
    for index, (fmt, suffix) in enumerate([("PNG", "png"), ("JPEG", "jpg")]):
        path = directory / f"picture{index}.{suffix}"
        path.write_bytes(encode(photo_like(48, 36, seed=index), fmt))
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def bad_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("bad") / "broken.jpg"
    path.write_bytes(b"this is not a jpeg")
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    if argv[0] == "classify" and "--dtype" not in argv:  # compared with the float32 library
        argv = (*argv, "--dtype", "float32")
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_predictions(predictions: list[dict], labels: list[str], *, count: int | None = None) -> None:
    assert len(predictions) == (len(labels) if count is None else count)
    assert {p["label"] for p in predictions} <= set(labels)
    assert len({p["label"] for p in predictions}) == len(predictions)
    scores = [p["score"] for p in predictions]
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores, reverse=True)


# --- classify ----------------------------------------------------------------------------------


def test_classify_json(capsys, checkpoint_dir: Path, image_files: list[str]) -> None:
    code, out, _ = run(capsys, "classify", *image_files, "--labels", "cat,dog,car", "--model",
                       str(checkpoint_dir), "--json")
    assert code == 0
    results = json.loads(out)
    assert isinstance(results, list) and len(results) == len(image_files)
    for path, result in zip(image_files, results, strict=True):
        assert result["image"] == path  # as given on the command line
        assert "error" not in result
        check_predictions(result["predictions"], LABELS)
        assert set(result["predictions"][0]) == {"label", "score"}


def test_classify_json_matches_the_library(capsys, siglip1_dir: Path, image_files: list[str]) -> None:
    import siglip_serve

    code, out, _ = run(capsys, "classify", *image_files, "--labels", "cat, dog ,car", "--model",
                       str(siglip1_dir), "--json")
    assert code == 0
    expected = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32").classify(image_files, LABELS)
    for result, ranked in zip(json.loads(out), expected, strict=True):
        assert [p["label"] for p in result["predictions"]] == [label for label, _ in ranked]
        assert [p["score"] for p in result["predictions"]] == pytest.approx([s for _, s in ranked], abs=1e-5)


def test_classify_softmax_and_top_k(capsys, siglip1_dir: Path, image_files: list[str]) -> None:
    code, out, _ = run(capsys, "classify", *image_files, "--labels", "cat,dog,car", "--model",
                       str(siglip1_dir), "--json", "--softmax")
    assert code == 0
    for result in json.loads(out):
        assert sum(p["score"] for p in result["predictions"]) == pytest.approx(1.0, abs=1e-5)
    code, out, _ = run(capsys, "classify", image_files[0], "--labels", "cat,dog,car", "--model",
                       str(siglip1_dir), "--json", "--top-k", "2")
    assert code == 0
    [result] = json.loads(out)
    check_predictions(result["predictions"], LABELS, count=2)


def test_classify_with_templates(capsys, siglip1_dir: Path, image_files: list[str]) -> None:
    code, out, _ = run(capsys, "classify", image_files[0], "--labels", "cat,dog", "--model", str(siglip1_dir),
                       "--json", "--template", "a photo of {}.", "--template", "a drawing of {}.")
    assert code == 0
    check_predictions(json.loads(out)[0]["predictions"], ["cat", "dog"])
    code, _, err = run(capsys, "classify", image_files[0], "--labels", "cat,dog", "--model", str(siglip1_dir),
                       "--template", "no placeholder")
    assert code == 2
    assert "error" in err and "template" in err


def test_classify_table(capsys, siglip2_dir: Path, image_files: list[str]) -> None:
    code, out, _ = run(capsys, "classify", *image_files, "--labels", "cat,dog,car", "--model", str(siglip2_dir))
    assert code == 0
    for path in image_files:
        assert path in out
    for label in LABELS:
        assert out.count(label) == len(image_files)
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_classify_table_with_top_k_zero_does_not_crash(capsys, siglip1_dir: Path, image_files: list[str]) -> None:
    """--top-k 0 must give a clean answer or a clean usage error, not a Python traceback."""
    try:
        code, _, _ = run(capsys, "classify", image_files[0], "--labels", "cat,dog", "--model", str(siglip1_dir),
                         "--top-k", "0")
    except SystemExit as exc:  # argparse rejecting the value is fine too
        code = exc.code
    assert code in (0, 2)


def test_a_bad_image_fails_only_its_own_line(capsys, siglip1_dir: Path, image_files: list[str],
                                             bad_file: str) -> None:
    missing = str(Path(bad_file).parent / "missing.png")
    argv = [image_files[0], bad_file, missing, image_files[1]]
    code, out, _ = run(capsys, "classify", *argv, "--labels", "cat,dog,car", "--model", str(siglip1_dir), "--json")
    assert code == 1
    results = json.loads(out)
    assert [r["image"] for r in results] == argv
    for good in (results[0], results[3]):
        assert "error" not in good
        check_predictions(good["predictions"], LABELS)
    for bad in (results[1], results[2]):
        assert "predictions" not in bad
        assert isinstance(bad["error"], str) and bad["error"]
    assert missing in results[2]["error"]

    code, out, _ = run(capsys, "classify", image_files[0], bad_file, "--labels", "cat,dog,car", "--model",
                       str(siglip1_dir))
    assert code == 1
    assert "error" in out and bad_file in out
    for label in LABELS:
        assert label in out


def test_classify_with_a_missing_model_is_a_clean_error(capsys, tmp_path: Path, image_files: list[str]) -> None:
    code, out, err = run(capsys, "classify", image_files[0], "--labels", "cat", "--model", str(tmp_path / "nope"))
    assert code == 2
    assert err.startswith("error:") and str(tmp_path / "nope") in err
    assert out == ""


def test_classify_with_no_labels_is_a_clean_error(capsys, siglip1_dir: Path, image_files: list[str]) -> None:
    code, _, err = run(capsys, "classify", image_files[0], "--labels", " , ,", "--model", str(siglip1_dir))
    assert code == 2
    assert "labels" in err


def test_classify_requires_labels_and_model(capsys, image_files: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["classify", image_files[0], "--model", "x"])
    assert info.value.code == 2
    assert "--labels" in capsys.readouterr().err


# --- models ------------------------------------------------------------------------------------


def test_models_lists_the_seed_checkpoints(capsys) -> None:
    code, out, _ = run(capsys, "models")
    assert code == 0
    for seed in SEEDS:
        assert seed in out
        assert f"{seed} *" in out  # marked as a seed


def test_models_json(capsys) -> None:
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    rows = json.loads(out)
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows)  # no duplicate ids
    assert {row["id"] for row in rows if row["seed"]} == set(SEEDS)
    for seed in SEEDS:
        assert isinstance(by_id[seed]["imagenet_zero_shot"], float)
        assert 50 < by_id[seed]["imagenet_zero_shot"] < 100
        assert by_id[seed]["text_length"] == 64
    # facts from the notes §6 table
    assert by_id["google/siglip2-so400m-patch14-384"]["imagenet_zero_shot"] == pytest.approx(84.1)
    assert by_id["google/siglip-base-patch16-512"]["embed_dim"] == 768
    assert by_id["google/siglip-so400m-patch14-224"]["text_length"] == 16


# --- serve --help ------------------------------------------------------------------------------


def test_serve_help_shows_flags_and_env_vars(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag, env in [("--max-batch-size", "SIGLIP_SERVE_MAX_BATCH_SIZE"), ("--port", "SIGLIP_SERVE_PORT"),
                      ("--model", "SIGLIP_SERVE_MODEL"), ("--max-wait-ms", "SIGLIP_SERVE_MAX_WAIT_MS")]:
        assert flag in out
        assert env in out


def test_the_demo_model_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from siglip_serve.cli import build_parser, settings_from_args

    monkeypatch.delenv("SIGLIP_SERVE_MODEL", raising=False)
    assert settings_from_args(build_parser().parse_args(["serve"])).model == ["siglip-demo-shapes"]
    assert build_parser().parse_args(["classify", "x.png", "--labels", "a,b"]).model == "siglip-demo-shapes"


# --- train ---------------------------------------------------------------------------------------


def test_train_subcommand_trains_and_saves_a_loadable_checkpoint(tmp_path: Path, capsys) -> None:
    out = tmp_path / "trained"
    code, stdout, _ = run(capsys, "train", "--out", str(out), "--steps", "2", "--batch-size", "8",
                          "--pool-size", "48", "--threads", "2", "--device", "cpu", "--no-progress",
                          "--eval-images", "48", "--image-size", "32", "--patch-size", "8", "--vision-width", "32",
                          "--vision-layers", "1", "--text-width", "32", "--text-layers", "1", "--head-dim", "16")
    assert code == 0
    assert "2 steps" in stdout and "held-out zero-shot top-1 on 48 images" in stdout
    record = json.loads((out / "training.json").read_text())
    assert record["command"].startswith(f"siglip-serve train --out {out} --steps 2")
    assert record["steps_done"] == 2
    import siglip_serve

    assert siglip_serve.load(str(out), device="cpu", dtype="float32").info.image_size == 32


def test_no_command_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


# --- the installed console script --------------------------------------------------------------


def test_console_script_classify(siglip1_dir: Path, image_files: list[str], bad_file: str) -> None:
    script = shutil.which("siglip-serve", path=str(Path(sys.executable).parent)) or shutil.which("siglip-serve")
    assert script is not None, "the siglip-serve console script is not installed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [script, "classify", image_files[0], bad_file, "--labels", "cat,dog,car", "--dtype", "float32", "--model",
         str(siglip1_dir),
         "--json"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert completed.returncode == 1, completed.stderr
    good, bad = json.loads(completed.stdout)
    assert good["image"] == image_files[0]
    check_predictions(good["predictions"], LABELS)
    assert bad["image"] == bad_file and bad["error"]


def test_listing_models_and_asking_for_help_do_not_import_torch() -> None:
    """torch takes seconds to import; only commands that run a model should pay for it."""
    code = ("import sys, contextlib, io\n"
            "from siglip_serve.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['models', '--json']) == 0\n"
            "    with contextlib.suppress(SystemExit):\n"
            "        main(['train', '--help'])\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
