"""Parity at the real google/siglip-base-patch16-224 dimensions (random weights, ~203M parameters).

Slow: building, saving and loading the full-size model takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tiny_checkpoints
import torch
from sample_images import sample_images
from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipTokenizer

import siglip_serve

pytestmark = pytest.mark.slow

TEXTS = ["a photo of a cat", "Hot_Dog on the BEACH!", "a red car near the river " * 20]


@pytest.fixture(scope="module")
def base_224_dir(tmp_path_factory: pytest.TempPathFactory, siglip1_dir: Path) -> Path:
    directory = tmp_path_factory.mktemp("ckpt") / "siglip-base-patch16-224-random"
    directory.mkdir()
    config = SiglipConfig()  # transformers' defaults are google/siglip-base-patch16-224's dimensions
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers,
            config.vision_config.image_size, config.text_config.vocab_size) == (768, 12, 224, 32000)
    model = tiny_checkpoints.random_siglip_model(config.to_dict(), seed=3)
    assert 200e6 < sum(p.numel() for p in model.parameters()) < 210e6
    model.save_pretrained(directory)
    for name in ("spiece.model", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(siglip1_dir / name, directory / name)
    tiny_checkpoints.write_json(directory / "preprocessor_config.json",
                                tiny_checkpoints.preprocessor_config(image_size=224, resample=3))
    return directory


def test_full_size_logits_match_transformers(base_224_dir: Path) -> None:
    images = list(sample_images().values())[:4]
    tokenizer = SiglipTokenizer.from_pretrained(base_224_dir)
    input_ids = tokenizer(TEXTS, padding="max_length", max_length=64, truncation=True,
                          return_tensors="pt")["input_ids"]
    pixels = SiglipImageProcessorPil.from_pretrained(base_224_dir)(images, return_tensors="pt")["pixel_values"]
    reference = SiglipModel.from_pretrained(base_224_dir).eval()
    with torch.no_grad():
        expected = reference(input_ids=input_ids, pixel_values=pixels)
    del reference

    ours = siglip_serve.load(str(base_224_dir), device="cpu", dtype="float32")
    image_embeds, text_embeds = ours.embed_images(images), ours.embed_texts(TEXTS)
    logits = ours.logits(image_embeds, text_embeds)
    torch.testing.assert_close(image_embeds, expected.image_embeds, atol=1e-4, rtol=0)
    torch.testing.assert_close(text_embeds, expected.text_embeds, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, expected.logits_per_image, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits.sigmoid(), expected.logits_per_image.sigmoid(), atol=1e-4, rtol=0)
