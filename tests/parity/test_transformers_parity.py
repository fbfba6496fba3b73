"""Parity with transformers' SiglipModel, on inputs prepared independently by transformers.

The reference: `SiglipImageProcessorPil` for pixels, the checkpoint's own HF tokenizer with
padding="max_length", max_length=<text length>, truncation and no attention mask (shared
notes §2), and `SiglipModel.forward`. Tolerance 1e-4 in fp32, as the issue asks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sample_images import sample_images
from transformers import AutoTokenizer, SiglipImageProcessorPil, SiglipModel

import siglip_serve

TEXTS = [
    "a photo of a cat",
    "Hot_Dog on the BEACH!",
    "cat &amp; dog",
    "two  spaces\tand a tab",
    "a very long caption about a red car near the river " * 12,  # over 64 tokens: sticky EOS
]


def reference_inputs(directory: Path, family: str, texts: list[str]) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    # SigLIP 2: we lowercase on purpose to match training (transformers does not for
    # model_type "siglip" SigLIP 2 checkpoints, transformers#43054), so feed it lowercased text.
    texts = [t.lower() for t in texts] if family == "siglip2" else texts
    ids = tokenizer(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    processor = SiglipImageProcessorPil.from_pretrained(directory)
    pixels = processor(list(sample_images().values()), return_tensors="pt")["pixel_values"]
    return {"input_ids": ids["input_ids"], "pixel_values": pixels}


@pytest.fixture(scope="module", params=["siglip1", "siglip2"])
def case(request: pytest.FixtureRequest):
    directory = request.getfixturevalue(f"{request.param}_dir")
    family = "siglip" if request.param == "siglip1" else "siglip2"
    reference_model = SiglipModel.from_pretrained(directory, attn_implementation="eager").eval()
    return directory, family, reference_model, siglip_serve.load(str(directory), device="cpu", dtype="float32")


def test_token_ids_equal_the_checkpoint_tokenizer(case) -> None:
    directory, family, _, ours = case
    expected = reference_inputs(directory, family, TEXTS)["input_ids"]
    got = ours.checkpoint.tokenizer(TEXTS)
    assert got.shape == (len(TEXTS), 64)
    assert torch.equal(got, expected)


def test_pixels_equal_transformers_pil_processor(case) -> None:
    directory, family, _, ours = case
    expected = reference_inputs(directory, family, TEXTS)["pixel_values"].numpy()
    got = np.stack([ours.prepare_image(image) for image in sample_images().values()])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_logits_probabilities_and_embeddings_match_siglip_model(case) -> None:
    directory, family, reference_model, ours = case
    inputs = reference_inputs(directory, family, TEXTS)
    with torch.no_grad():
        ref = reference_model(**inputs)  # no attention_mask, as SigLIP was trained
    image_embeds = ours.embed_images(list(sample_images().values()))
    text_embeds = ours.embed_texts(TEXTS)
    logits = ours.logits(image_embeds, text_embeds)
    torch.testing.assert_close(image_embeds, ref.image_embeds, atol=1e-4, rtol=0)
    torch.testing.assert_close(text_embeds, ref.text_embeds, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, ref.logits_per_image, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.score(list(sample_images().values()), TEXTS),
                               ref.logits_per_image.sigmoid(), atol=1e-4, rtol=0)
    # The probabilities must not be saturated, or the comparison proves nothing (notes §1).
    assert 0.01 < float(ref.logits_per_image.sigmoid().mean()) < 0.99


def test_classify_matches_reference_zero_shot(case) -> None:
    directory, family, reference_model, ours = case
    labels = ["cat", "red car", "Hot_Dog"]
    prompts = [f"This is a photo of {label}." for label in labels]
    inputs = reference_inputs(directory, family, prompts)
    with torch.no_grad():
        expected = reference_model(**inputs).logits_per_image.sigmoid()
    results = ours.classify(list(sample_images().values()), labels)
    for row, ranked in zip(expected, results, strict=True):
        assert [label for label, _ in ranked] == [labels[i] for i in row.argsort(descending=True)]
        got = dict(ranked)
        for label, prob in zip(labels, row, strict=True):
            assert got[label] == pytest.approx(float(prob), abs=1e-4)
