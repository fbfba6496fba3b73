"""Write a trained model as a google/siglip-*-style HF checkpoint directory.

Layout (the files of google/siglip-* on the hub): config.json + model.safetensors from `SiglipModel.save_pretrained`,
preprocessor_config.json, and a SentencePiece `spiece.model` with pad 0 / eos 1 "</s>" / unk 2
and no BOS, whose configs name "</s>" as the pad token, so texts are padded with id 1 like the
real checkpoints.
"""

from __future__ import annotations

import io
import json
import shutil
import string
from collections.abc import Iterable
from copy import deepcopy
from pathlib import Path

import torch

from siglip_serve.preprocess.images import ImageTransform

SPECIAL_TOKENS = {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "preprocessor_config.json")


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def train_sentencepiece(directory: Path, corpus: Iterable[str], *, vocab_size: int, length: int) -> Path:
    """A unigram SentencePiece model on `corpus` (already cleaned text), plus its token configs.

    Every lowercase letter and digit is in the vocabulary, so that words the corpus lacks are
    spelled out rather than mapped to <unk>.
    """
    import sentencepiece

    directory.mkdir(parents=True, exist_ok=True)
    sentences = [*corpus, " ".join(string.ascii_lowercase + string.digits)]
    # Written from memory, not by `model_prefix`: SentencePiece records the prefix (a path) inside the
    # model, so the same command run in another directory would give other bytes.
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        hard_vocab_limit=False,  # a small corpus may support fewer pieces than asked for
        num_threads=1,
        minloglevel=2,
    )
    (directory / "spiece.model").write_bytes(model.getvalue())
    write_json(directory / "special_tokens_map.json", SPECIAL_TOKENS)
    write_json(directory / "tokenizer_config.json", {
        **SPECIAL_TOKENS, "tokenizer_class": "SiglipTokenizer", "model_max_length": length, "do_lower_case": True,
    })
    return directory / "spiece.model"


def write_preprocessor_config(directory: Path, transform: ImageTransform) -> None:
    write_json(directory / "preprocessor_config.json", {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "SiglipProcessor",
        "do_resize": True,
        "size": {"height": transform.height, "width": transform.width},
        "resample": transform.resample,
        "do_rescale": True,
        "rescale_factor": transform.rescale_factor,
        "do_normalize": True,
        "image_mean": list(transform.mean),
        "image_std": list(transform.std),
    })


def copy_tokenizer_files(source: Path, directory: Path) -> None:
    """A fine-tuned checkpoint keeps its parent's tokenizer and preprocessing files."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and (source / name).resolve() != (directory / name).resolve():
            shutil.copyfile(source / name, directory / name)


def save_model(module: torch.nn.Module, directory: Path, *, dtype: torch.dtype = torch.float32) -> None:
    """`save_pretrained` (safetensors) of a copy whose towers are cast to `dtype`;
    logit_scale and logit_bias stay float32 whatever the dtype."""
    copy = deepcopy(module).eval()
    copy.vision_model.to(dtype)
    copy.text_model.to(dtype)
    copy.config.dtype = dtype
    copy.save_pretrained(directory)
