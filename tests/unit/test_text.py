"""Text cleaning per family and the fixed-length tokenizer (shared notes §2).

Expected ids come from the checkpoint's own vocabulary files, read here with
sentencepiece / tokenizers directly, and from the layout rules in the notes:
real tokens, then EOS (1), then pad to exactly the text length, EOS kept last
when a text is too long, and no attention mask.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny_checkpoints
import torch

import siglip_serve
from siglip_serve.errors import EmptyInputError
from siglip_serve.preprocess.text import FixedLengthTokenizer, TextCleaning, clean_text

EOS = 1
LONG_TEXT = "a very long caption about a red car near the river " * 12  # far over 64 tokens


# --- clean_text -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hot_Dog!", "hotdog"),  # '_' deleted with no space in its place (HF SiglipTokenizer)
        ("cat &amp; dog", "cat amp dog"),  # no HTML unescape: '&' and ';' are just punctuation
        ("  Two\tspaces\n\nAND  lines  ", "two spaces and lines"),
        ("A photo of a CAT.", "a photo of a cat"),
        ("it's a (big) dog, isn't it?", "its a big dog isnt it"),
    ],
)
def test_siglip_cleaning_lowercases_drops_punctuation_and_collapses_whitespace(text: str, expected: str) -> None:
    assert clean_text(text, TextCleaning.SIGLIP) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hot_Dog!", "hot_dog!"),
        ("Cat &amp; DOG.", "cat &amp; dog."),
        ("A Photo, of a Cat?", "a photo, of a cat?"),
    ],
)
def test_lowercase_cleaning_keeps_punctuation(text: str, expected: str) -> None:
    assert clean_text(text, TextCleaning.LOWERCASE) == expected


def test_no_cleaning_leaves_text_untouched() -> None:
    assert clean_text("Hot_Dog!  X", TextCleaning.NONE) == "Hot_Dog!  X"


# --- the tokenizers of loaded checkpoints -----------------------------------------------------


@pytest.fixture(scope="module")
def siglip1_tokenizer(siglip1_dir: Path) -> FixedLengthTokenizer:
    return siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32").checkpoint.tokenizer


@pytest.fixture(scope="module")
def siglip2_tokenizer(siglip2_dir: Path) -> FixedLengthTokenizer:
    return siglip_serve.load(str(siglip2_dir), device="cpu", dtype="float32").checkpoint.tokenizer


@pytest.fixture(scope="module", params=["siglip1", "siglip2"])
def family_case(request: pytest.FixtureRequest):
    """(tokenizer, raw vocabulary encoder without special tokens, expected pad id, expected cleaning)."""
    directory: Path = request.getfixturevalue(f"{request.param}_dir")
    if request.param == "siglip1":
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=str(directory / "spiece.model"))
        return request.getfixturevalue("siglip1_tokenizer"), processor.encode, 1, TextCleaning.SIGLIP
    from tokenizers import Tokenizer

    vocabulary = Tokenizer.from_file(str(directory / "tokenizer.json"))
    vocabulary.no_padding()
    vocabulary.no_truncation()

    def encode(text: str) -> list[int]:
        return vocabulary.encode(text, add_special_tokens=False).ids

    return request.getfixturevalue("siglip2_tokenizer"), encode, 0, TextCleaning.LOWERCASE


def test_special_ids_per_family(family_case) -> None:
    tokenizer, _, pad_id, cleaning = family_case
    assert tokenizer.eos_id == EOS
    assert tokenizer.pad_id == pad_id  # SigLIP: pad "</s>" == eos == 1; SigLIP 2 (Gemma): <pad> == 0
    assert tokenizer.cleaning is cleaning
    assert tokenizer.length == 64


def test_every_row_is_exactly_the_text_length_and_no_mask_is_returned(family_case) -> None:
    tokenizer, *_ = family_case
    texts = ["cat", "a photo of a dog", "This is a photo of a red car near the river.", LONG_TEXT]
    ids = tokenizer(texts)
    assert isinstance(ids, torch.Tensor)  # one tensor: deliberately no attention mask
    assert ids.dtype == torch.long
    assert ids.shape == (len(texts), 64)


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [("a photo of a cat", "a photo of a cat"), ("Hot_Dog on the BEACH!", None), ("dog", "dog")],
)
def test_layout_is_tokens_then_eos_then_padding(family_case, text: str, cleaned: str | None) -> None:
    tokenizer, encode, pad_id, cleaning = family_case
    if cleaned is None:  # hand-derived per family
        cleaned = "hotdog on the beach" if cleaning is TextCleaning.SIGLIP else "hot_dog on the beach!"
    real = encode(cleaned)
    assert 0 < len(real) < 63
    expected = real + [EOS] + [pad_id] * (64 - len(real) - 1)
    assert tokenizer([text])[0].tolist() == expected


def test_cleaning_is_applied_before_tokenizing(family_case) -> None:
    tokenizer, _, _, cleaning = family_case
    ids = tokenizer(["A PHOTO of a Cat", "a photo of a cat"])
    assert torch.equal(ids[0], ids[1])  # both families lowercase
    if cleaning is TextCleaning.SIGLIP:  # only SigLIP's canonicalization collapses whitespace
        ids = tokenizer(["  a photo\tof  a cat ", "a photo of a cat"])
        assert torch.equal(ids[0], ids[1])


def test_long_text_is_truncated_with_sticky_eos_and_no_padding(family_case) -> None:
    tokenizer, encode, pad_id, cleaning = family_case
    real = encode(clean_text(LONG_TEXT, cleaning))
    assert len(real) > 64  # the premise: the text really is too long
    row = tokenizer([LONG_TEXT])[0].tolist()
    assert len(row) == 64
    assert row[-1] == EOS
    assert row[:63] == real[:63]
    if pad_id != EOS:
        assert pad_id not in row


def test_row_of_a_text_does_not_depend_on_its_neighbours(family_case) -> None:
    tokenizer, *_ = family_case
    alone = tokenizer(["a photo of a cat"])[0]
    for neighbours in (["dog"], [LONG_TEXT], ["dog", LONG_TEXT, "a red car"]):
        assert torch.equal(tokenizer(["a photo of a cat", *neighbours])[0], alone)
        assert torch.equal(tokenizer([*neighbours, "a photo of a cat"])[-1], alone)


@pytest.mark.parametrize("bad", ["", "   ", "\t\n "])
@pytest.mark.parametrize("index", [0, 2])
def test_empty_text_raises_naming_the_item(family_case, bad: str, index: int) -> None:
    tokenizer, *_ = family_case
    texts = ["cat", "dog", "bird"]
    texts[index] = bad
    with pytest.raises(EmptyInputError) as info:
        tokenizer(texts)
    assert info.value.param == f"input[{index}]"
    assert f"input[{index}]" in str(info.value)


def test_text_length_is_read_from_the_checkpoint(tmp_path: Path) -> None:
    """google/siglip-so400m-patch14-224 uses 16 text tokens: the length is the config's, not 64."""
    directory = tiny_checkpoints.build_siglip1(tmp_path / "x", text_length=16)
    model = siglip_serve.load(str(directory), device="cpu", dtype="float32")
    tokenizer = model.checkpoint.tokenizer
    assert tokenizer.length == 16
    ids = tokenizer(["cat", LONG_TEXT])
    assert ids.shape == (2, 16)
    import sentencepiece

    real = sentencepiece.SentencePieceProcessor(model_file=str(directory / "spiece.model")).encode("cat")
    assert ids[0].tolist() == real + [EOS] * (16 - len(real))  # pad == eos == 1 for SigLIP
    assert ids[1, -1].item() == EOS
    assert model.info.text_length == 16
    assert model.embed_texts(["cat", LONG_TEXT]).shape == (2, 32)
