"""Build our fixed-length tokenizer from a checkpoint's tokenizer files.

We read the vocabulary files directly (SentencePiece `spiece.model`, or a
`tokenizers` `tokenizer.json`) and never rely on transformers' tokenizer class
defaults: `Siglip2Tokenizer`'s defaults are left padding, no EOS and a mask
(transformers SiglipTokenizer, GemmaTokenizer). Special tokens come from the checkpoint's own
`special_tokens_map.json` / `tokenizer_config.json`, resolved to ids through
the vocabulary, because `config.json`'s text ids are CLIP leftovers (49406/49407).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from siglip_serve.errors import InvalidCheckpointError
from siglip_serve.preprocess.text import FixedLengthTokenizer, TextCleaning

# Fallback special tokens when a checkpoint's tokenizer files name none (as the tokenizer_config.json of
# google/siglip-* and google/siglip2-* name them).
SENTENCEPIECE_DEFAULTS = {"eos_token": "</s>", "pad_token": "</s>"}  # google/siglip-*: pad = eos = 1
TOKENIZER_JSON_DEFAULTS = {"eos_token": "<eos>", "pad_token": "<pad>"}  # Gemma: pad 0, eos 1


def build_tokenizer(
    directory: Path, *, length: int, cleaning: TextCleaning
) -> FixedLengthTokenizer:
    encode, token_to_id, defaults = _open_vocabulary(directory)
    specials = {**defaults, **_declared_special_tokens(directory)}
    ids = {}
    for role in ("eos_token", "pad_token"):
        token_id = token_to_id(specials[role])
        if token_id is None:
            raise InvalidCheckpointError(
                f"{role} {specials[role]!r} is not in the vocabulary of {directory}"
            )
        ids[role] = token_id
    return FixedLengthTokenizer(
        encode, length=length, pad_id=ids["pad_token"], eos_id=ids["eos_token"], cleaning=cleaning
    )


def _open_vocabulary(
    directory: Path,
) -> tuple[Callable[[str], list[int]], Callable[[str], int | None], dict[str, str]]:
    tokenizer_json = directory / "tokenizer.json"
    spiece = directory / "spiece.model"
    if tokenizer_json.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_json))
        tokenizer.no_padding()
        tokenizer.no_truncation()

        def encode(text: str) -> list[int]:
            return tokenizer.encode(text, add_special_tokens=False).ids

        return encode, tokenizer.token_to_id, TOKENIZER_JSON_DEFAULTS
    if spiece.is_file():
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=str(spiece))

        def encode(text: str) -> list[int]:
            return processor.encode(text)

        def token_to_id(token: str) -> int | None:
            token_id = processor.piece_to_id(token)
            return None if token_id == processor.unk_id() and token != processor.id_to_piece(token_id) else token_id

        return encode, token_to_id, SENTENCEPIECE_DEFAULTS
    raise InvalidCheckpointError(f"{directory} has no tokenizer: expected tokenizer.json or spiece.model")


def _declared_special_tokens(directory: Path) -> dict[str, str]:
    """eos/pad token strings as the checkpoint declares them (special_tokens_map wins)."""
    declared: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = directory / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        for role in ("eos_token", "pad_token"):
            value = data.get(role)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                declared[role] = value
    return declared


def tokenizer_class(directory: Path) -> str | None:
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("tokenizer_class")
