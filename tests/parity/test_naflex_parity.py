"""Parity with transformers' Siglip2Model for SigLIP 2 NaFlex, on inputs prepared independently by transformers.

The reference: `Siglip2ImageProcessorPil` for patches, mask and spatial shapes
(image_processing_pil_siglip2.py), the checkpoint's own HF tokenizer with padding="max_length",
max_length=64, truncation and no attention mask (shared notes §2), and `Siglip2Model.forward`.
Tolerance 1e-4 in fp32, as for SigLIP (notes §5). The library's `load` does not dispatch
model_type "siglip2" yet, so the checkpoint is loaded with `load_naflex_checkpoint` directly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sample_images import photo_like
from tiny_naflex import build_naflex
from transformers import AutoTokenizer, Siglip2ImageProcessorPil, Siglip2Model
from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches

from siglip_serve.errors import InvalidCheckpointError, UnsupportedModelError
from siglip_serve.model import Model
from siglip_serve.models.naflex import load_naflex_checkpoint
from siglip_serve.preprocess.naflex import NaFlexPixels, NaFlexTransform, naflex_size

# (width, height): the aspect ratios and sizes NaFlex must handle, down- and upscaled.
IMAGES = {
    "tall": photo_like(30, 120, seed=1),
    "wide": photo_like(200, 40, seed=2),
    "tiny": photo_like(5, 7, seed=3),
    "huge": photo_like(1920, 1080, seed=4),
    "square": photo_like(100, 100, seed=5),
    "photo": photo_like(640, 480, seed=6),
}

TEXTS = [
    "a photo of a cat",
    "Hot_Dog on the BEACH!",
    "cat &amp; dog",
    "a very long caption about a red car near the river " * 12,  # over 64 tokens: sticky EOS
]


@pytest.fixture(scope="module")
def naflex_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_naflex(tmp_path_factory.mktemp("ckpt") / "tiny-siglip2-naflex")


@pytest.fixture(scope="module")
def ours(naflex_dir: Path) -> Model:
    checkpoint = load_naflex_checkpoint(
        naflex_dir, name=str(naflex_dir), device=torch.device("cpu"), dtype=torch.float32
    )
    return Model(checkpoint)


@pytest.fixture(scope="module")
def reference_model(naflex_dir: Path) -> Siglip2Model:
    return Siglip2Model.from_pretrained(naflex_dir, attn_implementation="eager").eval()


def reference_inputs(directory: Path, texts: list[str]) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    # We lowercase SigLIP 2 text on purpose (notes §2); feeding lowercased text keeps the reference
    # independent of whether transformers picks the lowercasing Siglip2Tokenizer.
    ids = tokenizer([t.lower() for t in texts], padding="max_length", max_length=64, truncation=True,
                    return_tensors="pt")
    pixels = Siglip2ImageProcessorPil.from_pretrained(directory)(list(IMAGES.values()), return_tensors="pt")
    return {"input_ids": ids["input_ids"], **pixels}  # no text attention_mask: trained without one


@pytest.mark.parametrize(("width", "height", "size", "grid"), [
    (640, 480, (224, 288), (14, 18)),
    (100, 100, (256, 256), (16, 16)),
    (1920, 1080, (192, 336), (12, 21)),
])
def test_sizes_of_the_notes_examples(width: int, height: int, size: tuple[int, int], grid: tuple[int, int]) -> None:
    """Notes §3, for the hub's patch 16 and 256 patches; sizes are (height, width)."""
    assert naflex_size(height, width, patch_size=16, max_num_patches=256) == size
    assert get_image_size_for_max_num_patches(height, width, patch_size=16, max_num_patches=256) == size
    pixels = NaFlexTransform(patch_size=16, max_num_patches=256)(photo_like(width, height))
    assert pixels.spatial_shape == grid
    assert pixels.patches.shape == (grid[0] * grid[1], 16 * 16 * 3)


def test_sizes_equal_transformers_helper_for_many_shapes() -> None:
    rng = np.random.default_rng(0)
    sides = [1, 2, 3, 7, 16, 17, 100, 333, 1000, 4000] + rng.integers(1, 3000, 30).tolist()
    for patch_size, budget in [(16, 256), (14, 729), (16, 1024), (4, 16), (16, 1)]:
        for height in sides:
            for width in sides[::3]:
                expected = get_image_size_for_max_num_patches(height, width, patch_size, budget)
                got = naflex_size(height, width, patch_size=patch_size, max_num_patches=budget)
                assert got == expected, (height, width, patch_size, budget)
                assert (got[0] // patch_size) * (got[1] // patch_size) <= budget


@pytest.mark.parametrize(("patch_size", "max_num_patches"), [(4, 16), (16, 256)])
def test_patches_equal_transformers_pil_processor(naflex_dir: Path, patch_size: int, max_num_patches: int) -> None:
    processor = Siglip2ImageProcessorPil.from_pretrained(
        naflex_dir, patch_size=patch_size, max_num_patches=max_num_patches
    )
    transform = NaFlexTransform(patch_size=patch_size, max_num_patches=max_num_patches)
    for name, image in IMAGES.items():
        expected = processor([image], return_tensors="np")
        got = transform(image)
        count = int(expected["pixel_attention_mask"][0].sum())
        assert got.spatial_shape == tuple(expected["spatial_shapes"][0]), name
        assert got.patches.shape == (count, patch_size * patch_size * 3), name
        assert got.patches.dtype == np.float32
        np.testing.assert_allclose(got.patches, expected["pixel_values"][0][:count], atol=1e-6, rtol=0, err_msg=name)


def test_library_prepares_what_the_checkpoint_says(ours: Model) -> None:
    prepared = ours.prepare_image(IMAGES["photo"])
    assert isinstance(prepared, NaFlexPixels)
    assert prepared.spatial_shape == (3, 4)  # 640x480 -> 12x16 pixels at patch 4, 16 patches
    info = ours.info
    assert (info.family, info.format, info.image_size, info.patch_size, info.text_length) == (
        "siglip2", "hf-naflex", None, 4, 64
    )
    assert ours.checkpoint.towers.tokens_per_image == 16


def test_token_ids_equal_the_checkpoint_tokenizer(ours: Model, naflex_dir: Path) -> None:
    expected = reference_inputs(naflex_dir, TEXTS)["input_ids"]
    assert torch.equal(ours.checkpoint.tokenizer(TEXTS), expected)


def test_embeddings_logits_and_probabilities_match_siglip2_model(
    ours: Model, naflex_dir: Path, reference_model: Siglip2Model
) -> None:
    inputs = reference_inputs(naflex_dir, TEXTS)
    assert int(inputs["pixel_attention_mask"].sum(1).min()) < 16, "some image must be padded"
    with torch.no_grad():
        ref = reference_model(**inputs)
    image_embeds = ours.embed_images(list(IMAGES.values()))
    text_embeds = ours.embed_texts(TEXTS)
    logits = ours.logits(image_embeds, text_embeds)
    torch.testing.assert_close(image_embeds, ref.image_embeds, atol=1e-4, rtol=0)
    torch.testing.assert_close(text_embeds, ref.text_embeds, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, ref.logits_per_image, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits.sigmoid(), ref.logits_per_image.sigmoid(), atol=1e-4, rtol=0)
    # Saturated probabilities would hide errors (notes §1).
    assert 0.01 < float(ref.logits_per_image.sigmoid().mean()) < 0.99


def test_an_image_embeds_the_same_alone_and_in_a_mixed_batch(ours: Model) -> None:
    batch = ours.embed_images(list(IMAGES.values()))
    for row, image in enumerate(IMAGES.values()):
        torch.testing.assert_close(ours.embed_images([image])[0], batch[row], atol=1e-5, rtol=0)


def test_the_padding_mask_matters(ours: Model) -> None:
    """Without the mask the padding is attended to and the embedding changes (notes §3)."""
    prepared = ours.prepare_image(IMAGES["photo"])  # 12 of 16 patches: 4 padded
    towers = ours.checkpoint.towers
    pixel_values, mask, shapes = (
        torch.zeros(1, 16, prepared.patches.shape[1]), torch.zeros(1, 16, dtype=torch.int32), torch.tensor([[3, 4]])
    )
    pixel_values[0, :12] = torch.from_numpy(prepared.patches)
    mask[0, :12] = 1
    masked = towers.encode_patches(pixel_values, mask, shapes)
    unmasked = towers.encode_patches(pixel_values, torch.ones_like(mask), shapes)
    torch.testing.assert_close(masked, towers.encode_prepared([prepared]), atol=1e-6, rtol=0)
    assert float((masked - unmasked).abs().max()) > 1e-2


def test_a_preprocessor_patch_size_unlike_the_towers_is_refused(naflex_dir: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(naflex_dir, tmp_path / "broken"))
    config = json.loads((broken / "preprocessor_config.json").read_text())
    (broken / "preprocessor_config.json").write_text(json.dumps({**config, "patch_size": 16}))
    with pytest.raises(InvalidCheckpointError, match="patch_size"):
        load_naflex_checkpoint(broken, name=str(broken), device=torch.device("cpu"), dtype=torch.float32)


def test_a_siglip_config_is_not_taken_for_naflex(naflex_dir: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(naflex_dir, tmp_path / "siglip"))
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "siglip"}))
    with pytest.raises(UnsupportedModelError, match="siglip2"):
        load_naflex_checkpoint(broken, name=str(broken), device=torch.device("cpu"), dtype=torch.float32)


def test_truncated_weights_are_an_invalid_checkpoint(naflex_dir: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(naflex_dir, tmp_path / "truncated"))
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(InvalidCheckpointError, match="cannot load weights"):
        load_naflex_checkpoint(broken, name=str(broken), device=torch.device("cpu"), dtype=torch.float32)
