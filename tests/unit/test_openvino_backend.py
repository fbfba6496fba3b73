"""The OpenVINO backend (models/runtime_choice.py, openvino_backend.py, openvino_convert.py,
openvino_quantize.py): which runtime a request gets and why, float32 equivalence with torch on the
tiny checkpoints, the cache of converted models (conversions counted), quantization with its
check and fallback. The choice is tested without OpenVINO; the rest skips cleanly without it."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from sample_images import encode, sample_images

import siglip_serve
from siglip_serve.backend import serves_features
from siglip_serve.config import Settings
from siglip_serve.engine.engine import Engine
from siglip_serve.engine.inputs import Input
from siglip_serve.errors import InvalidParameterError, UnsupportedModelError
from siglip_serve.models import runtime_choice
from siglip_serve.models.calibration import MIN_IMAGES, calibration_set
from siglip_serve.models.runtime_choice import OpenVinoOptions, choose_backend
from siglip_serve.models.towers import SiglipTowers

MISSING = runtime_choice.openvino_missing()
needs_openvino = pytest.mark.skipif(MISSING is not None, reason=f"OpenVINO backend unavailable: {MISSING}")
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
TEXTS = ["a photo of a cat", "two dogs", "a red car on the street at night"]


# --- the choice (no OpenVINO needed) --------------------------------------------------------------


def test_auto_is_the_servers_default_torch_the_librarys_and_quantize_needs_openvino() -> None:
    assert Settings().backend == "auto" and Settings().quantize == "none"
    assert inspect.signature(siglip_serve.load).parameters["backend"].default == "torch"
    choice = choose_backend("torch", quantize="none", device=CPU, missing=None, naflex=False)
    assert (choice.backend, choice.reason) == ("torch", "--backend torch")
    with pytest.raises(InvalidParameterError, match="--quantize int8 needs --backend openvino"):
        choose_backend("torch", quantize="int8", device=CPU, missing=None, naflex=False)


@pytest.mark.parametrize("quantize", ["none", "int8-weights", "int8"])
def test_openvino_where_it_applies(quantize: str) -> None:
    for backend in ("openvino", "auto"):
        choice = choose_backend(backend, quantize=quantize, device=CPU, missing=None, naflex=False)
        assert (choice.backend, choice.quantize) == ("openvino", quantize)
        assert choice.reason.startswith(f"--backend {backend}")


@pytest.mark.parametrize(("device", "missing", "naflex", "error", "why"), [
    (CUDA, None, False, InvalidParameterError, "OpenVINO runs on the CPU here and the device is cuda"),
    (CPU, "openvino not installed (hint)", False, InvalidParameterError, "openvino not installed (hint)"),
    (CPU, None, True, UnsupportedModelError, "NaFlex checkpoints stay on torch"),
])
def test_openvino_is_refused_and_auto_falls_back_with_the_reason(device: torch.device, missing: str | None,
                                                                 naflex: bool, error: type, why: str) -> None:
    with pytest.raises(error, match=re.escape(f"--backend openvino: {why}")):
        choose_backend("openvino", quantize="none", device=device, missing=missing, naflex=naflex)
    choice = choose_backend("auto", quantize="none", device=device, missing=missing, naflex=naflex)
    assert choice.backend == "torch" and choice.reason.startswith(f"--backend auto: torch, since {why}")
    dropped = choose_backend("auto", quantize="int8", device=device, missing=missing, naflex=naflex)
    assert dropped.reason.endswith("; --quantize int8 not applied") and dropped.quantize == "none"


def test_unknown_names_are_refused() -> None:
    with pytest.raises(InvalidParameterError, match="unknown backend 'onnx'; choose one of torch, openvino, auto"):
        choose_backend("onnx", quantize="none", device=CPU, missing=None, naflex=False)
    with pytest.raises(InvalidParameterError, match="unknown quantize 'int4'; choose one of none, int8-weights"):
        choose_backend("auto", quantize="int4", device=CPU, missing=None, naflex=False)
    with pytest.raises(ValidationError):
        Settings(backend="onnx")
    with pytest.raises(ValidationError):
        Settings(quantize="int4")


def test_auto_without_openvino_loads_torch_and_says_why(monkeypatch: pytest.MonkeyPatch, siglip1_dir: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(runtime_choice, "openvino_missing", lambda: "openvino not installed (hint)")
    with caplog.at_level(logging.INFO, logger="siglip_serve"):
        model = siglip_serve.load(str(siglip1_dir), device="cpu", backend="auto", quantize="int8-weights")
    assert isinstance(model.checkpoint.towers, SiglipTowers)
    messages = [r.getMessage() for r in caplog.records]
    assert f"{siglip1_dir}: --backend auto: torch, since openvino not installed (hint); --quantize int8-weights " \
           "not applied" in messages
    assert any(m.startswith(f"{siglip1_dir}: torch on cpu in float32 (auto: float32 on the CPU") for m in messages)


def test_calibration_directory_is_split_and_checked(tmp_path: Path) -> None:
    image = sample_images()["wide"]
    for i in range(MIN_IMAGES):
        image.save(tmp_path / f"{i:02d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    found = calibration_set(tmp_path)
    assert (len(found.calibrate), len(found.held_out)) == (8, 2)
    assert found.source.startswith(f"{tmp_path.resolve()}: {MIN_IMAGES} images, sha256 ")
    (tmp_path / "00.png").unlink()
    with pytest.raises(InvalidParameterError, match=f"has {MIN_IMAGES - 1} images; at least {MIN_IMAGES}"):
        calibration_set(tmp_path)
    with pytest.raises(InvalidParameterError, match="does not exist"):
        calibration_set(tmp_path / "nope")
    synthetic = calibration_set(None)
    assert (len(synthetic.calibrate), len(synthetic.held_out), synthetic.source) == (64, 16, "synthetic-v1x80")


# --- OpenVINO itself ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("openvino-cache")


def openvino_model(directory: Path, cache: Path, **options: object) -> siglip_serve.Model:
    quantize = str(options.pop("quantize", "none"))
    return siglip_serve.load(str(directory), device="cpu", backend="openvino", quantize=quantize,
                             openvino=OpenVinoOptions(cache_dir=cache, **options))  # type: ignore[arg-type]


@needs_openvino
def test_openvino_fp32_matches_torch_fp32(checkpoint_dir: Path, shared_cache: Path) -> None:
    images = list(sample_images().values())
    reference = siglip_serve.load(str(checkpoint_dir), device="cpu", dtype="float32")
    model = openvino_model(checkpoint_dir, shared_cache)
    assert model.checkpoint.towers.dtype == torch.float32
    pairs = ((model.embed_images(images, normalize=False), reference.embed_images(images, normalize=False)),
             (model.embed_texts(TEXTS, normalize=False), reference.embed_texts(TEXTS, normalize=False)))
    for got, expected in pairs:
        assert got.dtype == torch.float32 and got.shape == expected.shape
        # The project's float32 bar; measured max |Δ| 2.4e-7 (embeddings) and 5.7e-7 (probabilities).
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert model.temperature == reference.temperature
    assert model.info == reference.info  # same facts, same device: it shares the CPU model thread


@needs_openvino
def test_the_engine_serves_an_openvino_model(siglip1_dir: Path, shared_cache: Path) -> None:
    model = openvino_model(siglip1_dir, shared_cache)
    reference = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32")
    # Patch features come from the float32 torch towers the conversion started from: the same numbers.
    assert serves_features(model) and model.patch_layout == reference.patch_layout
    images = list(sample_images().values())
    for got, want in zip(model.encode_patches(images, layer=-2),
                         reference.encode_patches(images, layer=-2), strict=True):
        assert torch.equal(torch.as_tensor(got.features), torch.as_tensor(want.features))
    engine = Engine({"ov": model})
    inputs = [Input("input[0]", image=encode(sample_images()["large"], "PNG"))]

    async def main() -> tuple:
        async with engine:
            return await engine.classify(engine.resolve(None), inputs, TEXTS, templates="{}", deadline=None)

    results, _ = asyncio.run(main())
    expected = reference.classify([sample_images()["large"]], TEXTS, templates="{}")
    assert [label for label, _ in results[0]] == [label for label, _ in expected[0]]
    for (_, got), (_, want) in zip(results[0], expected[0], strict=True):
        assert got == pytest.approx(want, abs=1e-5)


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every tower conversion, by tower name (the cache is what keeps this list short)."""
    from siglip_serve.models import openvino_backend

    seen: list[str] = []
    convert = openvino_backend.convert_tower

    def counting(module: torch.nn.Module, tower: str, **kwargs: int):
        seen.append(tower)
        return convert(module, tower, **kwargs)

    monkeypatch.setattr(openvino_backend, "convert_tower", counting)
    return seen


@needs_openvino
def test_a_second_load_hits_the_cache(siglip1_dir: Path, tmp_path: Path, conversions: list[str],
                                      monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from siglip_serve.models import openvino_convert

    hashed: list[Path] = []
    file_sha256 = openvino_convert.file_sha256
    monkeypatch.setattr(openvino_convert, "file_sha256", lambda path: hashed.append(path) or file_sha256(path))
    with caplog.at_level(logging.INFO, logger="siglip_serve"):
        first = openvino_model(siglip1_dir, tmp_path)
        assert conversions == ["vision", "text"]
        assert "model.safetensors" in {path.name for path in hashed}
        hashed.clear()
        second = openvino_model(siglip1_dir, tmp_path)
    assert conversions == ["vision", "text"]  # no conversion the second time
    assert hashed == []  # nor a read of the unchanged files: their hashes are remembered by size, mtime, inode
    assert "; converted in " in first.checkpoint.towers.description
    assert "; cached in " in second.checkpoint.towers.description
    assert any("OpenVINO" in r.getMessage() and "cached in" in r.getMessage() for r in caplog.records)
    images = list(sample_images().values())
    torch.testing.assert_close(second.embed_images(images), first.embed_images(images), atol=0, rtol=0)


@needs_openvino
def test_the_cache_key_is_the_checkpoint_content_not_its_path(siglip1_dir: Path, tmp_path: Path,
                                                              conversions: list[str]) -> None:
    openvino_model(siglip1_dir, tmp_path / "cache")
    copy = shutil.copytree(siglip1_dir, tmp_path / "elsewhere")
    openvino_model(copy, tmp_path / "cache")
    assert conversions == ["vision", "text"]  # same bytes elsewhere: a hit
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
    openvino_model(copy, tmp_path / "cache")
    assert conversions == ["vision", "text"] * 2  # one byte more: converted again


@needs_openvino
def test_int8_weights_are_checked_logged_and_cached_apart(siglip1_dir: Path, tmp_path: Path, conversions: list[str],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    reference = openvino_model(siglip1_dir, tmp_path)
    with caplog.at_level(logging.INFO, logger="siglip_serve"):
        model = openvino_model(siglip1_dir, tmp_path, quantize="int8-weights")
    assert conversions == ["vision", "text"] * 2  # other options, another entry
    applied = model.checkpoint.towers.quantization
    assert applied["requested"] == "int8-weights"
    for tower in ("vision", "text"):
        assert applied[tower]["applied"] == "int8-weights"
        assert applied[tower]["min_cosine"] >= runtime_choice.DEFAULT_MIN_COSINE
    logged = next(r.getMessage() for r in caplog.records if "--quantize int8-weights" in r.getMessage())
    assert "vision tower int8-weights (min cosine vs float32 0.9" in logged
    images = list(sample_images().values())
    cosine = torch.nn.functional.cosine_similarity(model.embed_images(images), reference.embed_images(images))
    assert float(cosine.min()) > 0.99
    assert not torch.equal(model.embed_images(images), reference.embed_images(images))


@needs_openvino
def test_quantization_below_the_threshold_falls_back_to_float32(siglip1_dir: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="siglip_serve"):
        model = openvino_model(siglip1_dir, tmp_path, quantize="int8", min_cosine=1.0)  # nothing quantized passes
    applied = model.checkpoint.towers.quantization
    assert [t["mode"] for t in applied["vision"]["tried"]] == ["int8", "int8-weights"]
    assert [t["mode"] for t in applied["text"]["tried"]] == ["int8-weights"]
    assert applied["vision"]["applied"] == applied["text"]["applied"] == "none"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("vision tower int8: min cosine") and m.endswith("falling back to int8-weights")
               for m in warnings)
    reference = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32")
    images = list(sample_images().values())
    torch.testing.assert_close(model.embed_images(images, normalize=False),
                               reference.embed_images(images, normalize=False), atol=1e-4, rtol=0)


@needs_openvino
def test_full_int8_is_kept_when_it_passes(siglip1_dir: Path, tmp_path: Path) -> None:
    model = openvino_model(siglip1_dir, tmp_path, quantize="int8", min_cosine=0.0)
    applied = model.checkpoint.towers.quantization
    assert (applied["vision"]["applied"], applied["text"]["applied"]) == ("int8", "int8-weights")
    assert applied["vision"]["checked_on"] == "16 held-out images of synthetic-v1x80"


@needs_openvino
def test_naflex_stays_on_torch(tmp_path: Path, shared_cache: Path) -> None:
    from tiny_naflex import build_naflex

    directory = build_naflex(tmp_path / "naflex")
    with pytest.raises(UnsupportedModelError, match="NaFlex checkpoints stay on torch"):
        openvino_model(directory, shared_cache)
    model = siglip_serve.load(str(directory), device="cpu", backend="auto", quantize="int8",
                              openvino=OpenVinoOptions(cache_dir=shared_cache))
    assert isinstance(model.checkpoint.towers, SiglipTowers)  # NaFlexTowers, a SiglipTowers
