"""Text cleaning per checkpoint family and fixed-length tokenization.

SigLIP's text tower was trained without an attention mask and pools the last
position, so every text is right-padded to exactly the checkpoint's text length
and truncated with EOS kept last (big_vision's SigLIP tokenization; transformers#28569,
open_clip#984). Padding only to the batch's longest text gives embeddings with
cosine ~0.41 to the right ones, and makes a text's embedding depend on its
batch neighbours.
"""

from __future__ import annotations

import html
import re
import string
from collections.abc import Callable, Sequence
from enum import StrEnum

import ftfy
import torch

from siglip_serve.errors import EmptyInputError, InvalidTextError

_WHITESPACE = re.compile(r"\s+")
_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


class TextCleaning(StrEnum):
    """How a family's text was cleaned in training (big_vision prompt_engineering.py, open_clip tokenizer.py)."""

    # HF SiglipTokenizer.canonicalize_text (big_vision prompt_engineering.py): lowercase,
    # delete ASCII punctuation ('_' too, no space put in its place), collapse whitespace.
    SIGLIP = "siglip"
    # open_clip clean="canonicalize": ftfy-style fix, HTML unescape, '_' -> ' ', drop punctuation.
    OPEN_CLIP = "open_clip_canonicalize"
    # SigLIP 2 training (big_vision): lowercase, keep punctuation. A deliberate choice for
    # every SigLIP 2 checkpoint, since transformers 5.x skips it for model_type "siglip"
    # SigLIP 2 checkpoints (transformers#43054) at a cost of ~12 points of accuracy.
    LOWERCASE = "lowercase"
    NONE = "none"


def clean_text(text: str, cleaning: TextCleaning) -> str:
    if cleaning is TextCleaning.SIGLIP:
        text = text.lower().translate(_DROP_PUNCTUATION)
        return _WHITESPACE.sub(" ", text).strip()
    if cleaning is TextCleaning.OPEN_CLIP:
        # open_clip tokenizer.py `_clean_canonicalize`: basic_clean (ftfy.fix_text, html.unescape twice,
        # strip), then canonicalize_text ('_' -> ' ', delete string.punctuation, lowercase, collapse spaces).
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip().replace("_", " ")
        return " ".join(text.translate(_DROP_PUNCTUATION).lower().split())
    if cleaning is TextCleaning.LOWERCASE:
        return text.lower()
    return text


class FixedLengthTokenizer:
    """Cleans, encodes, appends EOS, truncates keeping EOS, right-pads to `length`.

    `encode` maps cleaned text to token ids without any special tokens; it is a
    SentencePiece or HF `tokenizers` model, chosen by the checkpoint adapter.
    """

    def __init__(
        self,
        encode: Callable[[str], list[int]],
        *,
        length: int,
        pad_id: int,
        eos_id: int,
        cleaning: TextCleaning,
    ) -> None:
        if length < 1:
            raise ValueError(f"text length must be positive, got {length}")
        self._encode = encode
        self.length = length
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.cleaning = cleaning

    def ids_and_count(self, text: str) -> tuple[list[int], int]:
        """Ids of one text, exactly `length` long, and its real tokens (with EOS, before padding)."""
        ids = self._encode(clean_text(text, self.cleaning))
        ids = ids[: self.length - 1] + [self.eos_id]  # sticky EOS
        return ids + [self.pad_id] * (self.length - len(ids)), len(ids)

    def token_ids(self, text: str) -> list[int]:
        """Ids of one text, exactly `length` long."""
        return self.ids_and_count(text)[0]

    def num_tokens(self, text: str) -> int:
        """Real tokens (with EOS, before padding), for usage accounting."""
        return self.ids_and_count(text)[1]

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """A [len(texts), length] int64 tensor. There is deliberately no attention mask."""
        for index, text in enumerate(texts):
            check_text(text, param=f"input[{index}]")
        return torch.tensor([self.token_ids(text) for text in texts], dtype=torch.long)


def check_text(text: object, *, param: str) -> None:
    if not isinstance(text, str):
        raise EmptyInputError(f"expected a string, got {type(text).__name__}", param=param)
    if not text.strip():
        raise EmptyInputError("text is empty", param=param)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates ("\ud800") are valid JSON but not text
        raise InvalidTextError("text is not valid Unicode (it contains a lone surrogate)", param=param) from None
