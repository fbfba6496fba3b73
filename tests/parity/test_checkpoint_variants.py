"""Sibling checkpoints with quirks: multilingual vocabularies and an identity text head (i18n).

References: transformers' SiglipTokenizer and SiglipModel, as in test_transformers_parity.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece
import tiny_checkpoints
import torch
from transformers import SiglipModel, SiglipTokenizer

import siglip_serve

MULTILINGUAL = ["Ein Foto einer Katze", "une photo d'un chien", "猫の写真です", "Фото собаки!", "ÇA VA_BIEN"]


@pytest.fixture(scope="module")
def multilingual_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """google/siglip-base-patch16-256-multilingual layout: a SentencePiece vocabulary over many scripts."""
    directory = tiny_checkpoints.build_siglip1(tmp_path_factory.mktemp("ckpt") / "multilingual")
    lines = [*tiny_checkpoints.corpus(), *(MULTILINGUAL * 50), "katze hund chat chien 犬 猫 собака кошка"]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(directory / "spiece"), vocab_size=96, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    (directory / "spiece.vocab").unlink()
    return directory


def test_multilingual_token_ids_equal_siglip_tokenizer(multilingual_dir: Path) -> None:
    expected = SiglipTokenizer.from_pretrained(multilingual_dir)(
        MULTILINGUAL, padding="max_length", max_length=64, truncation=True, return_tensors="pt"
    )["input_ids"]
    got = siglip_serve.load(str(multilingual_dir), device="cpu", dtype="float32").checkpoint.tokenizer(MULTILINGUAL)
    assert torch.equal(got, expected)
    assert (got == 2).sum() < (got != 1).sum() // 2  # mostly real pieces, not <unk>


@pytest.fixture(scope="module")
def identity_head_dir(tmp_path_factory: pytest.TempPathFactory, siglip1_dir: Path) -> Path:
    """google/siglip-so400m-patch16-256-i18n: the text head is the identity."""
    directory = tmp_path_factory.mktemp("ckpt") / "i18n"
    model = SiglipModel.from_pretrained(siglip1_dir)
    with torch.no_grad():
        model.text_model.head.weight.copy_(torch.eye(model.text_model.head.weight.shape[0]))
        model.text_model.head.bias.zero_()
    model.save_pretrained(directory)
    for name in ("spiece.model", "special_tokens_map.json", "tokenizer_config.json", "preprocessor_config.json"):
        (directory / name).write_bytes((siglip1_dir / name).read_bytes())
    return directory


def test_identity_text_head_gives_the_pooled_hidden_state(identity_head_dir: Path) -> None:
    texts = ["a photo of a cat", "a red car"]
    ids = SiglipTokenizer.from_pretrained(identity_head_dir)(
        texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt"
    )["input_ids"]
    reference = SiglipModel.from_pretrained(identity_head_dir).eval()
    with torch.no_grad():
        pooled = reference.text_model(input_ids=ids).last_hidden_state[:, -1]  # last position, no mask
    got = siglip_serve.load(str(identity_head_dir), device="cpu", dtype="float32").embed_texts(texts, normalize=False)
    torch.testing.assert_close(got, pooled, atol=1e-5, rtol=0)
