"""The `siglip-serve` command: classify, models and serve --help, in-process through `cli.main`
plus one real run of the installed console script."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flag_help import assert_flags_document_their_fields, help_entries
from sample_images import encode, photo_like

from siglip_serve import option_flags
from siglip_serve.cli import build_parser, main
from siglip_serve.command_options import ClassifyOptions, FeaturesOptions
from siglip_serve.config import Settings
from siglip_serve.demo import demo_model_dir
from siglip_serve.jobs import cli as jobs_cli
from siglip_serve.jobs.options import EmbedOptions
from siglip_serve.option_flags import from_args
from siglip_serve.training import cli as training_cli
from siglip_serve.training.cli import add_train_arguments, options_from_args
from siglip_serve.training.options import Architecture, ReportOptions, TrainOptions

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


def test_classify_with_top_k_zero_is_a_clean_error(capsys, siglip1_dir: Path, image_files: list[str]) -> None:
    """--top-k 0 is refused by the library's check (as the API refuses top_k=0), not with a traceback."""
    code, out, err = run(capsys, "classify", image_files[0], "--labels", "cat,dog", "--model", str(siglip1_dir),
                         "--top-k", "0")
    assert code == 2
    assert err == "error: top_k: top_k must be a positive integer, got 0\n"
    assert out == ""


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


def test_models_explains_every_mark_it_prints(capsys) -> None:
    code, out, _ = run(capsys, "models")
    assert code == 0
    table, legend = out.split("\n\n", 1)
    rows = table.splitlines()[1:]
    explained = [line.split()[0] for line in legend.splitlines() if line.strip()]
    assert any(" * " in f"{row} " for row in rows) and "*" in explained
    assert any("(default)" in row for row in rows) and "(default):" in explained
    assert any(" - " in f" {row} " for row in rows) and "-" in explained
    header = table.splitlines()[0]
    for column in ("format", "input", "embed", "params", "IN-1k 0-shot"):
        assert column in header and f"{column}:" in legend


# Architectures from each hub checkpoint's config.json (notes §6): width, depth, MLP, heads, patch, image, vocab.
SEED_ARCHITECTURES = {
    "google/siglip-base-patch16-512": (768, 12, 3072, 12, 16, 512, 32_000),
    "google/siglip-large-patch16-384": (1024, 24, 4096, 16, 16, 384, 32_000),
    "google/siglip-so400m-patch14-384": (1152, 27, 4304, 16, 14, 384, 32_000),
    "timm/ViT-B-16-SigLIP": (768, 12, 3072, 12, 16, 224, 32_000),
    "google/siglip2-so400m-patch14-384": (1152, 27, 4304, 16, 14, 384, 256_000),
}


@pytest.mark.parametrize("checkpoint", SEED_ARCHITECTURES)
def test_listed_parameter_counts_are_those_of_the_architecture(checkpoint: str) -> None:
    """Counted on the module tree built from the architecture (uninitialized: nothing is allocated for real)."""
    from siglip_serve.models.registry import find_known
    from siglip_serve.models.siglip_torch import SiglipConfig, SiglipModel

    width, depth, mlp, heads, patch, image, vocab = SEED_ARCHITECTURES[checkpoint]
    tower = {"hidden_size": width, "num_hidden_layers": depth, "intermediate_size": mlp, "num_attention_heads": heads}
    config = SiglipConfig.from_dict({"vision_config": {**tower, "patch_size": patch, "image_size": image},
                                     "text_config": {**tower, "vocab_size": vocab}})
    count = sum(p.numel() for p in SiglipModel(config).parameters())
    known = find_known(checkpoint)
    assert known is not None and known.params_m == round(count / 1e6, 1)


def test_the_demo_model_s_parameter_count_agrees_with_its_weights_and_the_readme() -> None:
    import siglip_serve
    from siglip_serve.models.registry import find_known

    module = siglip_serve.load("siglip-demo-shapes").checkpoint.towers.module
    count = sum(p.numel() for p in module.parameters())
    known = find_known("siglip-demo-shapes")
    assert known is not None and known.params_m == round(count / 1e6, 2)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    demo_section = readme.split("## The demo model", 1)[1].split("\n## ", 1)[0]
    stated = re.findall(r"([\d.]+)M parameters", demo_section)
    assert stated, "README's demo section states no parameter count"
    assert {float(m) for m in stated} == {round(count / 1e6, 1)}


def test_the_license_file_is_the_apache_2_text_that_pyproject_declares() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["license"]
    assert (declared.get("text") if isinstance(declared, dict) else declared) == "Apache-2.0"
    text = (root / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    # The full text, not a notice: all nine sections and the appendix.
    for heading in ("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", "1. Definitions.",
                    "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS",
                    "APPENDIX: How to apply the Apache License to your work."):
        assert heading in text


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


# Every flag classify and features had before their flags were generated from the option fields.
CLASSIFY_FLAGS = ("--labels", "--model", "--template", "--softmax", "--top-k", "--device", "--dtype", "--json")
FEATURES_FLAGS = ("--out", "--layer", "--pooled", "--float16", "--model", "--batch-size", "--device", "--dtype")


@pytest.mark.parametrize(("command", "options", "flags"), [
    ("classify", ClassifyOptions, CLASSIFY_FLAGS), ("features", FeaturesOptions, FEATURES_FLAGS)])
def test_every_classify_and_features_option_has_a_flag_with_help_and_its_default(
        capsys, monkeypatch: pytest.MonkeyPatch, command: str, options: type, flags: tuple[str, ...]) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no help is wrapped
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    entries = help_entries(capsys.readouterr().out)
    assert set(flags) <= set(entries)
    assert_flags_document_their_fields(entries, dataclasses.fields(options))
    # The model choice is the server's: the same words and default as `serve --help` shows.
    assert entries["--device"][1] == f"{Settings.model_fields['device'].description} [default: auto]"
    assert entries["--dtype"][1].startswith(Settings.model_fields["dtype"].description)
    assert entries["--model"][1].endswith("[default: siglip-demo-shapes]")


def test_classify_flags_parse_to_the_options_they_name() -> None:
    parser = build_parser("classify")
    args = parser.parse_args(["classify", "a.png", "b.jpg", "--labels", "cat, dog,,car", "--model", "m",
                              "--template", "a {}", "--template", "a photo of {}.", "--softmax", "--top-k", "2",
                              "--device", "cpu", "--dtype", "bfloat16", "--json"])
    assert from_args(ClassifyOptions, args) == ClassifyOptions(
        images=["a.png", "b.jpg"], labels=["cat", "dog", "car"], model="m", template=["a {}", "a photo of {}."],
        softmax=True, top_k=2, device="cpu", dtype="bfloat16", json=True)
    bare = from_args(ClassifyOptions, parser.parse_args(["classify", "a.png", "--labels", "cat"]))
    assert bare == ClassifyOptions(images=["a.png"], labels=["cat"], model="siglip-demo-shapes", template=None,
                                   softmax=False, top_k=None, device="auto", dtype="auto", json=False)


def test_features_flags_parse_to_the_options_they_name() -> None:
    parser = build_parser("features")
    args = parser.parse_args(["features", "d", "e.png", "--out", "f.npz", "--layer", "-2", "--pooled", "--float16",
                              "--model", "m", "--batch-size", "4", "--device", "cpu", "--dtype", "float16"])
    assert from_args(FeaturesOptions, args) == FeaturesOptions(
        images=["d", "e.png"], out="f.npz", layer=-2, pooled=True, float16=True, model="m", batch_size=4,
        device="cpu", dtype="float16")
    bare = from_args(FeaturesOptions, parser.parse_args(["features", "d", "--out", "f.npz"]))
    assert bare == FeaturesOptions(images=["d"], out="f.npz", layer=-1, pooled=False, float16=False,
                                   model="siglip-demo-shapes", batch_size=None, device="auto", dtype="auto")


@pytest.mark.parametrize("argv", [["classify", "--labels", "a"], ["classify", "x.png"],
                                  ["classify", "x.png", "--labels", "a", "--top-k", "two"],
                                  ["features", "x.png"], ["features", "x.png", "--out", "f.npz", "--batch-size", "0"],
                                  ["features", "x.png", "--out", "f.npz", "--layer", "last"]])
def test_bad_classify_and_features_flags_are_usage_errors(capsys, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser(argv[0]).parse_args(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_a_repeated_option_must_default_to_none() -> None:
    """argparse's append action appends to a list default, so `--template x` would keep the default's items."""
    with pytest.raises(ValueError, match="repeated option"):
        option_flags.option(["a {}"], repeat=True, help="Templates.")


def test_every_command_that_runs_a_model_declares_the_model_choice_once() -> None:
    """classify, features, embed and train: one declaration of --device (the server's), and of --model and
    --dtype where the command has them."""
    fields = {cls: {f.name: f for f in dataclasses.fields(cls)}
              for cls in (ClassifyOptions, FeaturesOptions, EmbedOptions, TrainOptions)}
    for name, commands in (("model", 3), ("device", 4), ("dtype", 3)):  # train has --init, and no --dtype
        declared = [f[name] for f in fields.values() if name in f]
        assert len(declared) == commands, name
        assert len({(f.default, f.metadata["help"]) for f in declared}) == 1, name
    assert fields[TrainOptions]["device"].metadata["help"] == Settings.model_fields["device"].description


def test_the_demo_model_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from siglip_serve.cli import build_parser, settings_from_args

    monkeypatch.delenv("SIGLIP_SERVE_MODEL", raising=False)
    assert settings_from_args(build_parser().parse_args(["serve"])).model == ["siglip-demo-shapes"]
    assert build_parser().parse_args(["classify", "x.png", "--labels", "a,b"]).model == "siglip-demo-shapes"


# --- train ---------------------------------------------------------------------------------------


AVX2_ONLY = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
TINY_TRAIN = ("--steps", "1", "--batch-size", "8", "--pool-size", "48", "--easy-pool-size", "48",
              "--middle-pool-size", "48", "--threads", "1",
              "--device", "cpu", "--no-progress", "--eval-images", "0", "--image-size", "32", "--patch-size", "8",
              "--vision-width", "32", "--vision-layers", "1", "--text-width", "32", "--text-layers", "1",
              "--head-dim", "16")


@pytest.mark.parametrize(("flags", "bf16_flag", "warned"), [
    (AVX2_ONLY, "--bf16", True),  # emulated there: 17x slower (README, The demo model)
    (AVX2_ONLY, "--no-bf16", False),
    ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n", "--bf16", False),  # Zen 4
])
def test_train_warns_when_bf16_is_asked_of_a_cpu_without_bf16_instructions(
        tmp_path: Path, capsys, cpuinfo: Path, flags: str, bf16_flag: str, warned: bool) -> None:
    cpuinfo.write_text(flags)
    code, _, stderr = run(capsys, "train", "--out", str(tmp_path / "m"), bf16_flag, *TINY_TRAIN)
    assert code == 0
    assert ("--bf16 on a CPU that lists no bf16 instructions" in stderr) is warned, stderr
    assert json.loads((tmp_path / "m" / "training.json").read_text())["options"]["bf16"] is (bf16_flag == "--bf16")


def test_train_subcommand_trains_and_saves_a_loadable_checkpoint(tmp_path: Path, capsys) -> None:
    out = tmp_path / "trained"
    code, stdout, _ = run(capsys, "train", "--out", str(out), "--steps", "2", "--batch-size", "8",
                          "--pool-size", "48", "--easy-pool-size", "48", "--middle-pool-size", "48", "--threads", "2",
                          "--device", "cpu", "--no-progress",
                          "--eval-images", "48", "--image-size", "32", "--patch-size", "8", "--vision-width", "32",
                          "--vision-layers", "1", "--text-width", "32", "--text-layers", "1", "--head-dim", "16")
    assert code == 0
    assert "2 steps" in stdout and "held-out zero-shot top-1 on 48 images" in stdout
    record = json.loads((out / "training.json").read_text())
    assert record["command"].startswith(f"siglip-serve train --out {out} --steps 2")
    assert record["steps_done"] == 2
    import siglip_serve

    assert siglip_serve.load(str(out), device="cpu", dtype="float32").info.image_size == 32


README = Path(__file__).resolve().parents[2] / "README.md"
DEMO_COMMAND = "siglip-serve train --out src/siglip_serve/demo/siglip-demo-shapes --threads 2 --seed 0 --bf16"
# Every flag `siglip-serve train` had before its flags were generated from the option fields.
TRAIN_FLAGS = (
    "--out", "--data", "--init", "--from-scratch", "--pool-size", "--no-label-bank", "--steps", "--batch-size", "--lr",
    "--weight-decay", "--temperature-lr-scale", "--warmup-steps", "--seed", "--threads", "--device", "--bf16",
    "--save-dtype", "--eval-images", "--no-progress", "--image-size", "--patch-size", "--vision-width",
    "--vision-layers", "--text-width", "--text-layers", "--head-dim", "--text-length", "--vocab-size", "--hidden-act",
    "--curriculum-steps", "--easy-pool-size",  # added with the curriculum (issue 16)
    "--easy-steps", "--label-loss",  # added with the patch-8 recipe (issue 16)
    "--middle-pool-size", "--middle-share",  # added with the middle pool (issue 16, session 12)
)


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siglip-serve train")
    add_train_arguments(parser)
    return parser


def option_fields() -> list[dataclasses.Field]:
    return [f for cls in (TrainOptions, Architecture, ReportOptions) for f in dataclasses.fields(cls)
            if f.name != "architecture"]


def test_every_train_option_has_a_flag_with_help_and_its_default(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no help is wrapped
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    entries = help_entries(capsys.readouterr().out)
    fields = option_fields()
    assert len(fields) == 35  # 24 TrainOptions fields besides the architecture, 10 Architecture, 1 ReportOptions
    assert_flags_document_their_fields(entries, fields)
    # A few spelled out rather than computed from the fields.
    assert entries["--lr"][1].endswith(" [default: 0.001]")
    assert entries["--pool-size"][1].endswith(" [default: 20000]")
    assert entries["--threads"] == ("--threads THREADS", "torch threads. [default: torch's choice]")
    assert entries["--out"] == ("--out OUT", "Directory to write the checkpoint to. (required)")
    assert entries["--label-bank"][0] == "--label-bank, --no-label-bank"
    assert entries["--progress"][0] == "--progress, --no-progress"
    assert entries["--bf16"][0] == "--bf16, --no-bf16"
    assert entries["--bf16"][1].endswith("17x slower on an AVX2-only one. [default: False]")
    assert entries["--hidden-act"][0] == "--hidden-act {gelu,gelu_pytorch_tanh}"
    assert entries["--save-dtype"][0] == "--save-dtype {float32,float16}"
    assert entries["--init"][0] == "--init SPEC"
    assert "--init" in entries["--from-scratch"][1]


def test_every_existing_train_flag_spelling_still_parses() -> None:
    parser = train_parser()
    argv = [
        "--out", "o", "--data", "d.jsonl", "--init", "google/x", "--pool-size", "96", "--no-label-bank",
        "--curriculum-steps", "5", "--easy-pool-size", "48", "--easy-steps", "2", "--label-loss", "0.5",
        "--middle-pool-size", "24", "--middle-share", "0.25",
        "--steps", "7", "--batch-size", "16", "--lr", "2e-4", "--weight-decay", "0.5", "--temperature-lr-scale", "3",
        "--warmup-steps", "2", "--seed", "5", "--threads", "3", "--device", "cpu", "--bf16", "--save-dtype", "float16",
        "--eval-images", "0", "--no-progress", "--image-size", "32", "--patch-size", "8", "--vision-width", "48",
        "--vision-layers", "1", "--text-width", "24", "--text-layers", "3", "--head-dim", "8", "--text-length", "16",
        "--vocab-size", "100", "--hidden-act", "gelu",
    ]
    assert {a for a in argv if a.startswith("--")} | {"--from-scratch"} == set(TRAIN_FLAGS)  # parsed here or below
    args = parser.parse_args(argv)
    assert options_from_args(args) == TrainOptions(
        out=Path("o"), steps=7, batch_size=16, lr=2e-4, weight_decay=0.5, warmup_steps=2, grad_clip=1.0, seed=5,
        data=Path("d.jsonl"), pool_size=96, label_bank=False, curriculum_steps=5, easy_pool_size=48, easy_steps=2,
        middle_pool_size=24, middle_share=0.25, label_loss=0.5, temperature_lr_scale=3.0, init="google/x",
        architecture=Architecture(image_size=32, patch_size=8, vision_width=48, vision_layers=1, text_width=24,
                                  text_layers=3, head_dim=8, text_length=16, vocab_size=100, hidden_act="gelu"),
        save_dtype="float16", threads=3, device="cpu", bf16=True, progress=False,
    )
    assert from_args(ReportOptions, args) == ReportOptions(eval_images=0)
    assert options_from_args(parser.parse_args(["--out", "o", "--from-scratch", "--grad-clip", "0.5"])).init is None
    assert options_from_args(parser.parse_args(["--out", "o", "--grad-clip", "0.5"])).grad_clip == 0.5


@pytest.mark.parametrize("argv", [["--out", "o", "--init", "x", "--from-scratch"], ["--steps", "3"],
                                  ["--out", "o", "--save-dtype", "bfloat16"], ["--out", "o", "--hidden-act", "relu"],
                                  ["--out", "o", "--steps", "many"]])
def test_bad_train_flags_are_usage_errors(capsys, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        train_parser().parse_args(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_the_readme_command_gives_the_shipped_demo_options() -> None:
    assert DEMO_COMMAND in README.read_text()
    args = build_parser().parse_args(shlex.split(DEMO_COMMAND)[1:])
    expected = TrainOptions(
        out=Path("src/siglip_serve/demo/siglip-demo-shapes"), steps=7000, batch_size=64, lr=1e-3,
        weight_decay=0.2, warmup_steps=656, grad_clip=1.0, seed=0, data=None, pool_size=20_000, label_bank=True,
        curriculum_steps=4812, easy_pool_size=8000, easy_steps=2406, middle_pool_size=12_000, middle_share=0.8,
        label_loss=10.0,
        temperature_lr_scale=None, init=None,
        architecture=Architecture(image_size=96, patch_size=12, vision_width=128, vision_layers=4, text_width=32,
                                  text_layers=2, head_dim=64, text_length=64, vocab_size=256,
                                  hidden_act="gelu"),
        save_dtype="float32", threads=2, device="auto", bf16=True, progress=True,
    )
    assert options_from_args(args) == expected
    assert from_args(ReportOptions, args) == ReportOptions(eval_images=240)
    # The shipped model's record: made by this command, with these options (training.json omits `progress`).
    record = json.loads((demo_model_dir() / "training.json").read_text())
    assert record["command"] == DEMO_COMMAND
    recorded = {**dataclasses.asdict(expected), "out": str(expected.out)}
    del recorded["progress"]
    assert record["options"] == recorded


@pytest.mark.parametrize("module", [training_cli, jobs_cli, option_flags])
def test_no_generated_flag_s_default_or_choice_is_written_in_a_cli_module(module) -> None:
    """Defaults and choices of train's and embed's options live on the option fields only: the modules that
    turn the fields into flags must not repeat any. (cli.py's serve flags default to None, "not given", on
    purpose; its classify and features flags are generated.)"""
    source = Path(module.__file__).read_text()
    calls = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)]
    keywords = [k for call in calls for k in call.keywords if k.arg in ("default", "choices")]
    if module is option_flags:
        assert keywords  # the flags are declared in this module
    for keyword in keywords:
        assert not isinstance(keyword.value, ast.Constant | ast.Tuple | ast.List | ast.Set | ast.UnaryOp), \
            f"literal {keyword.arg}= on line {keyword.lineno}: {ast.unparse(keyword.value)}"
    assert not re.search(r"default\s*=\s*[-\d\"']", source)  # the plain-text check, for what the AST walk misses


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
            "    for command in ('train', 'classify', 'embed'):\n"
            "        try:\n"
            "            main([command, '--help'])\n"
            "        except SystemExit as exc:\n"
            "            assert exc.code == 0, exc.code\n"
            "        else:\n"
            "            raise AssertionError('--help returned instead of exiting')\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
