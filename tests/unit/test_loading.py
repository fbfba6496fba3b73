"""`siglip_serve.load`: what it accepts (directories, hub ids from the local cache, prefixes) and
a typed error naming the problem for everything else. Nothing here reaches a network: the hub
cache is a fake one built under tmp_path, and huggingface_hub is forced offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from sample_images import encode, photo_like

import siglip_serve
from siglip_serve.errors import CheckpointNotFoundError, InvalidCheckpointError, UnsupportedModelError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def copy_checkpoint(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(source, target)
    return target


@pytest.fixture
def empty_offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache, offline. huggingface_hub reads its env vars once, at import, into
    `huggingface_hub.constants`, and `snapshot_download` reads those constants at call time."""
    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(cache.parent))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # so that "acme/tiny-siglip" is not also a relative directory
    return cache


def put_in_hub_cache(cache: Path, repo_id: str, source: Path) -> Path:
    """The layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/<commit>/...}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [encode(photo_like(40, 30, seed=s), "PNG") for s in range(2)]


# --- missing or inconsistent files -------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "filename"),
    [
        ("siglip1", "model.safetensors"),
        ("siglip1", "preprocessor_config.json"),
        ("siglip1", "config.json"),
        ("siglip1", "spiece.model"),
        ("siglip2", "model.safetensors"),
        ("siglip2", "preprocessor_config.json"),
        ("siglip2", "tokenizer.json"),
    ],
)
def test_missing_file_is_invalid_checkpoint_naming_it(
    request: pytest.FixtureRequest, tmp_path: Path, family: str, filename: str
) -> None:
    directory = copy_checkpoint(request.getfixturevalue(f"{family}_dir"), tmp_path)
    (directory / filename).unlink()
    with pytest.raises(InvalidCheckpointError) as info:
        siglip_serve.load(str(directory), device="cpu", dtype="float32")
    assert filename in str(info.value)


def test_missing_tokenizer_files_of_both_kinds_is_invalid(siglip1_dir: Path, tmp_path: Path) -> None:
    directory = copy_checkpoint(siglip1_dir, tmp_path)
    for name in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"):
        (directory / name).unlink()
    with pytest.raises(InvalidCheckpointError) as info:
        siglip_serve.load(str(directory), device="cpu", dtype="float32")
    assert "spiece.model" in str(info.value) or "tokenizer" in str(info.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_weights_are_invalid_checkpoint(siglip1_dir: Path, tmp_path: Path, damage: str) -> None:
    """A broken download must give InvalidCheckpointError naming the file, not a library's raw error."""
    directory = copy_checkpoint(siglip1_dir, tmp_path)
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"garbage": b"not a safetensors file", "truncated": data[: len(data) // 2],
                         "empty": b""}[damage])
    with pytest.raises(InvalidCheckpointError) as info:
        siglip_serve.load(str(directory), device="cpu", dtype="float32")
    assert "model.safetensors" in str(info.value) or str(directory) in str(info.value)


def test_weights_missing_a_tensor_are_invalid_not_randomly_initialized(siglip1_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    directory = copy_checkpoint(siglip1_dir, tmp_path)
    tensors = load_file(directory / "model.safetensors")
    missing = next(name for name in tensors if name.startswith("text_model.") and name.endswith("q_proj.weight"))
    del tensors[missing]
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InvalidCheckpointError) as info:
        siglip_serve.load(str(directory), device="cpu", dtype="float32")
    assert missing in str(info.value)


def test_weights_of_the_wrong_shape_are_invalid(siglip1_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    directory = copy_checkpoint(siglip1_dir, tmp_path)
    tensors = load_file(directory / "model.safetensors")
    name = "text_model.head.weight"
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1])
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InvalidCheckpointError):
        siglip_serve.load(str(directory), device="cpu", dtype="float32")


def test_unreadable_config_is_invalid_checkpoint(siglip1_dir: Path, tmp_path: Path) -> None:
    directory = copy_checkpoint(siglip1_dir, tmp_path)
    (directory / "config.json").write_text("{ not json")
    with pytest.raises(InvalidCheckpointError) as info:
        siglip_serve.load(str(directory), device="cpu", dtype="float32")
    assert "config.json" in str(info.value)


@pytest.mark.parametrize("model_type", ["clip", "siglip_vision_model", None])
def test_other_model_types_are_unsupported(siglip1_dir: Path, tmp_path: Path, model_type: str | None) -> None:
    directory = copy_checkpoint(siglip1_dir, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    if model_type is None:
        config.pop("model_type", None)
    else:
        config["model_type"] = model_type
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError) as info:
        siglip_serve.load(str(directory), device="cpu", dtype="float32")
    assert repr(model_type) in str(info.value)


# --- specs that resolve to nothing -------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    ["/definitely/not/a/checkpoint", "not-a-dir-and-no-slash", "./relative/missing/dir", "~/no/such/ckpt",
     "a/b/c"],
)
def test_nonexistent_path_is_checkpoint_not_found(spec: str, empty_offline_hub: Path) -> None:
    with pytest.raises(CheckpointNotFoundError) as info:
        siglip_serve.load(spec, device="cpu", dtype="float32")
    assert spec in str(info.value)


def test_missing_local_dir_prefix_is_checkpoint_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(CheckpointNotFoundError) as info:
        siglip_serve.load(f"local-dir:{missing}", device="cpu", dtype="float32")
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("spec", ["google/siglip-base-patch16-224", "hf-hub:google/siglip-base-patch16-224"])
def test_hub_id_not_in_an_offline_cache_says_what_to_do(spec: str, empty_offline_hub: Path) -> None:
    with pytest.raises(CheckpointNotFoundError) as info:
        siglip_serve.load(spec, device="cpu", dtype="float32")
    message = str(info.value)
    assert "google/siglip-base-patch16-224" in message
    assert "offline" in message.lower() or "HF_HUB_OFFLINE" in message
    assert "download" in message  # how to fix it


# --- hub ids from the local cache, and prefixes ------------------------------------------------


def test_hub_id_loads_from_the_offline_cache(
    siglip1_dir: Path, empty_offline_hub: Path, images: list[bytes]
) -> None:
    put_in_hub_cache(empty_offline_hub, "acme/tiny-siglip", siglip1_dir)
    from_hub = siglip_serve.load("acme/tiny-siglip", device="cpu", dtype="float32")
    from_dir = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32")
    assert from_hub.info.name == "acme/tiny-siglip"
    texts = ["a photo of a cat", "a dog"]
    torch.testing.assert_close(from_hub.embed_images(images), from_dir.embed_images(images), atol=0, rtol=0)
    torch.testing.assert_close(from_hub.embed_texts(texts), from_dir.embed_texts(texts), atol=0, rtol=0)
    with_prefix = siglip_serve.load("hf-hub:acme/tiny-siglip", device="cpu", dtype="float32")
    torch.testing.assert_close(with_prefix.embed_images(images), from_dir.embed_images(images), atol=0, rtol=0)


def test_local_dir_prefix_loads_the_directory(siglip2_dir: Path, images: list[bytes]) -> None:
    prefixed = siglip_serve.load(f"local-dir:{siglip2_dir}", device="cpu", dtype="float32")
    plain = siglip_serve.load(str(siglip2_dir), device="cpu", dtype="float32")
    assert prefixed.info.family == "siglip2"
    torch.testing.assert_close(prefixed.embed_images(images), plain.embed_images(images), atol=0, rtol=0)


def test_pathlib_style_home_and_relative_directories_load(
    siglip1_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = copy_checkpoint(siglip1_dir, tmp_path)
    monkeypatch.chdir(tmp_path)
    assert siglip_serve.load("copy", device="cpu", dtype="float32").info.embed_dim == 32
    monkeypatch.setenv("HOME", str(tmp_path))
    loaded = siglip_serve.load("~/copy", device="cpu", dtype="float32")
    assert loaded.checkpoint.directory.resolve() == directory.resolve()


def test_model_info_reflects_the_files(siglip1_dir: Path, siglip2_dir: Path) -> None:
    one = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32")
    two = siglip_serve.load(str(siglip2_dir), device="cpu", dtype="float32")
    assert (one.info.family, two.info.family) == ("siglip", "siglip2")
    for model in (one, two):
        assert (model.info.image_size, model.info.patch_size, model.info.embed_dim, model.info.text_length) == (
            32, 8, 32, 64)
    assert one.checkpoint.image_transform.resample == 3  # bicubic, from preprocessor_config.json
    assert two.checkpoint.image_transform.resample == 2  # bilinear


def test_temperature_is_read_from_the_checkpoint(siglip1_dir: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(siglip1_dir / "model.safetensors")
    temperature = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32").checkpoint.towers.temperature
    assert temperature.logit_scale == pytest.approx(float(tensors["logit_scale"].reshape(())))
    assert temperature.logit_bias == pytest.approx(float(tensors["logit_bias"].reshape(())))


# --- known checkpoints are cross-checked -------------------------------------------------------


def test_files_disagreeing_with_the_known_table_are_invalid(siglip1_dir: Path, empty_offline_hub: Path) -> None:
    put_in_hub_cache(empty_offline_hub, "google/siglip-base-patch16-224", siglip1_dir)
    with pytest.raises(InvalidCheckpointError) as info:
        siglip_serve.load("google/siglip-base-patch16-224", device="cpu", dtype="float32")
    message = str(info.value)
    assert "google/siglip-base-patch16-224" in message
    assert "embed_dim" in message and "32" in message and "768" in message


def test_unknown_hub_ids_are_not_cross_checked(siglip2_dir: Path, empty_offline_hub: Path) -> None:
    put_in_hub_cache(empty_offline_hub, "acme/tiny-siglip2", siglip2_dir)
    assert siglip_serve.load("acme/tiny-siglip2", device="cpu", dtype="float32").info.family == "siglip2"


# --- our SigLIP modules (models/siglip_torch.py) against transformers' SiglipModel ----------------


@pytest.fixture(scope="module", params=["siglip1", "siglip2", "erf-gelu"])
def module_pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(our module, transformers' module) loaded from the same files: both families, and the exact-GELU
    variant that open_clip-style SigLIP 1 towers use (notes §4)."""
    import tiny_checkpoints
    from transformers import SiglipConfig, SiglipModel

    from siglip_serve.models.siglip_torch import load_siglip_model

    if request.param == "erf-gelu":
        directory = tmp_path_factory.mktemp("erf") / "ckpt"
        config = tiny_checkpoints.tiny_config(vocab_size=96, hidden_act="gelu")
        tiny_checkpoints.random_siglip_model(config, seed=3).save_pretrained(directory)
        assert SiglipConfig.from_pretrained(directory).vision_config.hidden_act == "gelu"
    else:
        directory = request.getfixturevalue(f"{request.param}_dir")
    reference = SiglipModel.from_pretrained(directory, attn_implementation="sdpa").eval()
    return load_siglip_model(directory), reference


def test_our_modules_give_transformers_outputs_at_every_layer(module_pair) -> None:
    ours, reference = module_pair
    vision, text = reference.config.vision_config, reference.config.text_config
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, vision.image_size, vision.image_size, generator=generator)
    ids = torch.randint(0, text.vocab_size, (3, text.max_position_embeddings), generator=generator)
    with torch.inference_mode():
        for tower, inputs in (("vision_model", {"pixel_values": pixels}), ("text_model", {"input_ids": ids})):
            got = getattr(ours, tower)(**inputs, output_hidden_states=True)
            expected = getattr(reference, tower)(**inputs, output_hidden_states=True)
            assert len(got.hidden_states) == len(expected.hidden_states)
            for layer, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states, strict=True)):
                torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=f"{tower} hidden_states[{layer}]")
            torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-6, rtol=0)
            torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-6, rtol=0)
    assert ours.logit_scale.item() == reference.logit_scale.item()
    assert ours.logit_bias.item() == reference.logit_bias.item()
    assert ours.state_dict().keys() == reference.state_dict().keys() - {
        "vision_model.embeddings.position_ids", "text_model.embeddings.position_ids"}


def test_one_selected_hidden_state_is_the_same_tensor_and_the_others_are_not_kept(module_pair) -> None:
    ours, _ = module_pair
    size = ours.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        every = ours.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
        one = ours.vision_model(pixel_values=pixels, output_hidden_states=[1]).hidden_states
    assert torch.equal(one[1], every[1])
    assert [state is None for state in one] == [index != 1 for index in range(len(every))]


def test_config_defaults_are_transformers_defaults() -> None:
    """google/siglip-* config.json files leave many fields out: a missing field must mean what it means to
    transformers."""
    from dataclasses import fields

    from transformers import SiglipTextConfig, SiglipVisionConfig

    from siglip_serve.models.siglip_torch import TextConfig, VisionConfig

    for ours, theirs in ((VisionConfig(), SiglipVisionConfig()), (TextConfig(), SiglipTextConfig())):
        for field in fields(ours):
            value = getattr(ours, field.name)
            expected = getattr(theirs, field.name)
            if field.name == "projection_size":  # None means hidden_size to both
                value = ours.embed_dim
            assert value == expected, (type(ours).__name__, field.name)


@pytest.mark.parametrize(("tower", "change"), [
    ("vision_config", {"hidden_act": "relu"}),
    ("text_config", {"hidden_act": "quick_gelu"}),
    ("vision_config", {"vision_use_head": False}),
])
def test_configs_our_modules_do_not_implement_are_unsupported(siglip1_dir: Path, tmp_path: Path, tower: str,
                                                              change: dict) -> None:
    directory = copy_checkpoint(siglip1_dir, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config[tower].update(change)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=next(iter(change))):
        siglip_serve.load(str(directory), device="cpu")


def test_extra_weights_are_ignored_with_a_warning_and_position_ids_silently(
        siglip1_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from safetensors.torch import load_file, save_file

    directory = copy_checkpoint(siglip1_dir, tmp_path)
    weights = load_file(directory / "model.safetensors")
    reference = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32").embed_texts(["a cat"])
    weights["text_model.embeddings.position_ids"] = torch.arange(64)[None]  # as older transformers saved them
    weights["classifier.weight"] = torch.zeros(3, 3)
    save_file(weights, directory / "model.safetensors")
    with caplog.at_level("WARNING", logger="siglip_serve"):
        model = siglip_serve.load(str(directory), device="cpu", dtype="float32")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "classifier.weight" in warned[0] and "position_ids" not in warned[0]
    assert torch.equal(model.embed_texts(["a cat"]), reference)
