"""Parity with open_clip itself, on a tiny random checkpoint in timm/ViT-B-16-SigLIP's hub layout.

`tests/golden/open_clip/make_golden.py` wrote the checkpoint with open_clip's own `save_for_hf` and saved
what open_clip computed with it (its tokenizer, transform and model, read back through `local-dir:`). It
runs by hand in a scratch venv: open_clip, timm and torchvision stay out of the project (notes §7). Here
the same files are loaded without any of them; fp32 results must agree to 1e-5. The golden model is
sensitive enough for that to mean something: the tanh GELU or LayerNorm eps 1e-5 in either tower moves
its embeddings by 1e-4 to 6e-4.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from siglip_serve.errors import InvalidCheckpointError, UnsupportedModelError
from siglip_serve.model import Model
from siglip_serve.models.checkpoint import Checkpoint
from siglip_serve.models.open_clip import load_open_clip_checkpoint
from siglip_serve.preprocess.text import TextCleaning, clean_text

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "open_clip"
CHECKPOINT_FILES = ("open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                    "tokenizer.json", "tokenizer_config.json")
SAFETENSORS, BIN = "open_clip_model.safetensors", "open_clip_pytorch_model.bin"
ATOL = 1e-5


def load(directory: Path, name: str | None = None) -> Checkpoint:
    return load_open_clip_checkpoint(
        directory, name=name or str(directory), device=torch.device("cpu"), dtype=torch.float32
    )


def copy_checkpoint(tmp_path: Path, *, without: tuple[str, ...] = ()) -> Path:
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    for filename in CHECKPOINT_FILES:
        if filename not in without:
            shutil.copy(GOLDEN / filename, directory / filename)
    return directory


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return {**np.load(GOLDEN / "golden.npz"), **json.loads((GOLDEN / "golden.json").read_text())}


@pytest.fixture(scope="module")
def model() -> Model:
    return Model(load(GOLDEN))


@pytest.fixture(scope="module")
def images(golden: dict[str, Any]) -> list[Path]:
    return [GOLDEN / name for name in golden["images"]]


def assert_close(got: torch.Tensor | np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got), expected, atol=ATOL, rtol=0)


# --- the same numbers as open_clip -------------------------------------------------------------


def test_token_ids_equal_open_clip_tokenizer(golden: dict[str, Any], model: Model) -> None:
    ids = model.checkpoint.tokenizer(golden["texts"])
    assert ids.shape == (len(golden["texts"]), 64)
    np.testing.assert_array_equal(ids.numpy(), golden["input_ids"])
    assert golden["input_ids"][golden["texts"].index("!!!")].tolist() == [1] * 64  # pad = eos = 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hot_Dog on the BEACH!", "hot dog on the beach"),  # '_' becomes a space (notes §2)
        ("cat &amp; dog", "cat dog"),  # unescaped, then '&' deleted as punctuation
        ("cat &amp;amp; dog", "cat dog"),  # unescaped twice
        ("  it's\ta (big)\n dog!  ", "its a big dog"),
    ],
)
def test_open_clip_canonicalize(text: str, expected: str) -> None:
    assert clean_text(text, TextCleaning.OPEN_CLIP) == expected


def test_cleaning_that_needs_ftfy_equals_open_clip(golden: dict[str, Any], model: Model) -> None:
    pytest.importorskip("ftfy")
    np.testing.assert_array_equal(model.checkpoint.tokenizer(golden["ftfy_texts"]).numpy(), golden["ftfy_input_ids"])


def test_pixels_equal_open_clip_transform(golden: dict[str, Any], model: Model, images: list[Path]) -> None:
    np.testing.assert_allclose(np.stack(model.prepare_images(images)), golden["pixel_values"], atol=1e-6, rtol=0)


def test_embeddings_logits_and_probabilities_equal_open_clip(
    golden: dict[str, Any], model: Model, images: list[Path]
) -> None:
    texts = golden["texts"]
    assert_close(model.embed_images(images, normalize=False), golden["image_embeds"])
    assert_close(model.embed_texts(texts, normalize=False), golden["text_embeds"])
    image_embeds, text_embeds = model.embed_images(images), model.embed_texts(texts)
    assert_close(image_embeds, golden["image_embeds_normalized"])
    assert_close(text_embeds, golden["text_embeds_normalized"])
    assert_close(model.logits(image_embeds, text_embeds), golden["logits"])
    assert_close(model.score(images, texts), golden["probabilities"])
    assert 0.05 < golden["probabilities"].mean() < 0.95  # not saturated, or the comparison proves little


def test_checkpoint_is_described_from_its_files(model: Model) -> None:
    checkpoint = model.checkpoint
    assert (checkpoint.format, checkpoint.family.value) == ("open_clip", "siglip")
    assert (checkpoint.image_size, checkpoint.patch_size, checkpoint.embed_dim) == (32, 8, 48)
    assert checkpoint.tokenizer.length == 64
    assert checkpoint.image_transform.resample == 3  # bicubic
    temperature = checkpoint.towers.temperature
    assert temperature.logit_scale == pytest.approx(math.log(10))
    assert temperature.logit_bias == pytest.approx(-1.0)
    config = checkpoint.towers.module.config
    # open_clip's SigLIP 1 towers use the exact GELU (notes §4); timm's ViT LayerNorm eps is 1e-6.
    assert (config.vision_config.hidden_act, config.text_config.hidden_act) == ("gelu", "gelu")
    assert (config.vision_config.num_attention_heads, config.vision_config.intermediate_size) == (3, 179)
    assert config.vision_config.layer_norm_eps == config.text_config.layer_norm_eps == 1e-6


def test_known_checkpoint_facts_are_cross_checked() -> None:
    with pytest.raises(InvalidCheckpointError, match="image_size: files say 32, table says 224"):
        load(GOLDEN, name="timm/ViT-B-16-SigLIP")


# --- weight files ------------------------------------------------------------------------------


def test_bin_only_directory_loads_the_same(tmp_path: Path, golden: dict[str, Any], images: list[Path]) -> None:
    model = Model(load(copy_checkpoint(tmp_path, without=(SAFETENSORS,))))
    assert_close(model.embed_images(images, normalize=False), golden["image_embeds"])
    assert_close(model.embed_texts(golden["texts"], normalize=False), golden["text_embeds"])


def test_safetensors_is_preferred_over_bin(tmp_path: Path) -> None:
    directory = copy_checkpoint(tmp_path)
    (directory / BIN).write_bytes(b"not a pickle")
    load(directory)


def test_a_directory_without_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidCheckpointError, match="has no open_clip weights"):
        load(copy_checkpoint(tmp_path, without=(SAFETENSORS, BIN)))


def missing_key(state: dict[str, torch.Tensor]) -> str:
    del state["visual.trunk.attn_pool.kv.weight"]
    return "is missing the weight 'visual.trunk.attn_pool.kv.weight'"


def extra_key(state: dict[str, torch.Tensor]) -> str:
    state["text.transformer.resblocks.0.attn.bias_k"] = torch.zeros(1, 1, 32)
    return "unexpected weight.*'text.transformer.resblocks.0.attn.bias_k'"


def extra_block(state: dict[str, torch.Tensor]) -> str:
    for key in [key for key in state if key.startswith("text.transformer.resblocks.1.")]:
        state[key.replace("resblocks.1.", "resblocks.2.")] = state[key].clone()
    return "unexpected weight.*'text.transformer.resblocks.2"


def wrong_shape(state: dict[str, torch.Tensor]) -> str:
    state["text.transformer.resblocks.1.mlp.c_fc.weight"] = torch.zeros(64, 32)
    return r"'text.transformer.resblocks.1.mlp.c_fc.weight' has shape \[64, 32\], expected \[128, 32\]"


def wrong_positions(state: dict[str, torch.Tensor]) -> str:
    state["visual.trunk.pos_embed"] = torch.zeros(1, 17, 48)
    return r"'visual.trunk.pos_embed' has shape \[1, 17, 48\], expected \[1, 16, 48\]"


@pytest.mark.parametrize("mutate", [missing_key, extra_key, extra_block, wrong_shape, wrong_positions])
@pytest.mark.parametrize("weights_file", [SAFETENSORS, BIN])
def test_state_dict_problems_are_named(tmp_path: Path, mutate, weights_file: str) -> None:
    directory = copy_checkpoint(tmp_path, without=(SAFETENSORS, BIN))
    state = load_file(GOLDEN / SAFETENSORS)
    message = mutate(state)
    if weights_file == SAFETENSORS:
        save_file(state, directory / SAFETENSORS)
    else:
        torch.save(state, directory / BIN)
    with pytest.raises(InvalidCheckpointError, match=message):
        load(directory)


class Payload:
    """Unpickling this would create `marker`: a stand-in for arbitrary code in a malicious .bin."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_bin_holding_more_than_tensors_is_refused_unexecuted(tmp_path: Path) -> None:
    directory = copy_checkpoint(tmp_path, without=(SAFETENSORS, BIN))
    marker = tmp_path / "code-ran"
    torch.save({**load_file(GOLDEN / SAFETENSORS), "payload": Payload(marker)}, directory / BIN)
    with pytest.raises(InvalidCheckpointError, match="refusing to unpickle"):
        load(directory)
    assert not marker.exists()


def test_a_bin_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    directory = copy_checkpoint(tmp_path, without=(SAFETENSORS, BIN))
    torch.save([torch.zeros(1)], directory / BIN)
    with pytest.raises(InvalidCheckpointError, match="is not a state dict"):
        load(directory)


# --- configurations we cannot reproduce exactly are refused --------------------------------------


def edit_config(directory: Path, edit) -> None:
    path = directory / "open_clip_config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (lambda c: c["model_cfg"]["vision_cfg"].update(timm_model_name="vit_tiny_patch8_siglip_gap_32"),
         UnsupportedModelError, "not a supported SigLIP tower"),
        (lambda c: c["model_cfg"]["text_cfg"].update(act_kwargs={"approximate": "tanh"}),
         UnsupportedModelError, "SigLIP 2"),
        (lambda c: c["model_cfg"]["text_cfg"].update(pool_type="argmax"), UnsupportedModelError, "pool_type"),
        (lambda c: c["model_cfg"]["text_cfg"]["tokenizer_kwargs"].update(clean="whitespace"),
         UnsupportedModelError, "cleaning 'whitespace'"),
        # open_clip's fallback without a preprocess_cfg: OpenAI CLIP mean/std and a center crop (notes §7)
        (lambda c: c["preprocess_cfg"].pop("resize_mode"), UnsupportedModelError, "resize_mode 'shortest'"),
        (lambda c: c["preprocess_cfg"].pop("mean"), InvalidCheckpointError, "mean must be 3 numbers"),
        (lambda c: c["model_cfg"]["text_cfg"].update(width=64), InvalidCheckpointError,
         r"'text.token_embedding.weight' has shape \[96, 32\], expected \[96, 64\]"),
        (lambda c: c["model_cfg"]["vision_cfg"].update(image_size=40), InvalidCheckpointError,
         r"'visual.trunk.pos_embed' has shape \[1, 16, 48\], expected \[1, 25, 48\]"),
    ],
    ids=["gap-pooling", "siglip2-text", "text-pool", "cleaning", "no-squash", "no-mean", "text-width",
         "image-size"],
)
def test_config_problems_are_refused(tmp_path: Path, edit, error: type[Exception], message: str) -> None:
    directory = copy_checkpoint(tmp_path)
    edit_config(directory, edit)
    with pytest.raises(error, match=message):
        load(directory)
