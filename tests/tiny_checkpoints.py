"""Build tiny random SigLIP checkpoints in the real on-disk layouts, with tokenizers trained here.

No weights are downloaded: the layouts (file names, config keys, special-token ids)
are those of google/siglip-* (SentencePiece, pad 0 / eos 1 / unk 2 in the vocabulary,
"</s>" used as pad) and google/siglip2-*-patch14-384 (Gemma-style tokenizer.json,
pad 0 / eos 1 / bos 2 / unk 3).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

WORDS = (
    "a", "photo", "of", "the", "cat", "dog", "car", "bird", "tree", "house", "red", "green",
    "blue", "yellow", "small", "big", "hot", "dog", "this", "is", "an", "image", "with", "two",
    "three", "on", "in", "at", "by", "playing", "running", "sleeping", "under", "over", "near",
    "picture", "drawing", "painting", "sketch", "close", "up", "dark", "bright", "street", "beach",
    "mountain", "river", "city", "sunset", "night", "day", "flower", "airplane", "boat", "train",
    "bus", "bicycle", "person", "people", "child", "woman", "man", "apple", "banana", "orange",
    "pizza", "sandwich", "cake", "chair", "table", "sofa", "bed", "computer", "phone", "book",
    "clock",
)

# Non-trivial temperature: bias near 0 so sigmoids do not saturate (shared notes §1).
LOGIT_SCALE = math.log(10.0)
LOGIT_BIAS = -1.0


def corpus(seed: int = 0, lines: int = 3000) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(lines)]


def train_sentencepiece(directory: Path, vocab_size: int = 96) -> Path:
    import sentencepiece

    prefix = directory / "spiece"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (directory / "spiece.vocab").unlink()
    return directory / "spiece.model"


def train_gemma_style_tokenizer(directory: Path, vocab_size: int = 400) -> Path:
    """A BPE tokenizer.json shaped like SigLIP 2's Gemma one: '▁' for spaces, byte fallback, and a
    post-processor that appends EOS and adds no BOS (shared notes §2: pad 0, eos 1 appended, no bos)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyz▁.,!?'&;_-ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(seed=1), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <eos>", pair="$A <eos> $B <eos>", special_tokens=[("<eos>", 1)]
    )
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    path = directory / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def tiny_config(*, vocab_size: int, text_length: int = 64, image_size: int = 32, patch_size: int = 8,
                hidden_act: str = "gelu_pytorch_tanh") -> dict:
    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "layer_norm_eps": 1e-6, "hidden_act": hidden_act}
    return {
        # bos/eos in config.json are unused CLIP leftovers (49406/49407) in the real checkpoints;
        # None keeps transformers from warning that they exceed a tiny vocabulary.
        "text_config": {**common, "vocab_size": vocab_size, "max_position_embeddings": text_length,
                        "bos_token_id": None, "eos_token_id": None},
        "vision_config": {**common, "image_size": image_size, "patch_size": patch_size},
    }


def random_siglip_model(config: dict, *, seed: int = 0) -> torch.nn.Module:
    """Random weights, with LayerNorms perturbed and the temperature set (random init zeroes both)."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(**config)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(0.1 * torch.randn_like(module.weight))
                module.bias.add_(0.1 * torch.randn_like(module.bias))
        model.logit_scale.fill_(LOGIT_SCALE)
        model.logit_bias.fill_(LOGIT_BIAS)
    return model


def preprocessor_config(*, image_size: int, resample: int) -> dict:
    return {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "SiglipProcessor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": resample,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))


def build_siglip1(directory: Path, *, text_length: int = 64, image_size: int = 32, patch_size: int = 8,
                  seed: int = 0) -> Path:
    """google/siglip-* layout: config.json, model.safetensors, preprocessor_config.json, spiece.model."""
    directory.mkdir(parents=True, exist_ok=True)
    spiece = train_sentencepiece(directory)
    import sentencepiece

    vocab_size = sentencepiece.SentencePieceProcessor(model_file=str(spiece)).get_piece_size()
    config = tiny_config(vocab_size=vocab_size, text_length=text_length, image_size=image_size,
                         patch_size=patch_size)
    random_siglip_model(config, seed=seed).save_pretrained(directory)
    write_json(directory / "preprocessor_config.json", preprocessor_config(image_size=image_size, resample=3))
    specials = {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    write_json(directory / "special_tokens_map.json", specials)
    write_json(directory / "tokenizer_config.json", {
        **specials, "tokenizer_class": "SiglipTokenizer", "model_max_length": text_length,
        "do_lower_case": True,
    })
    return directory


def build_siglip2(directory: Path, *, text_length: int = 64, image_size: int = 32, patch_size: int = 8,
                  seed: int = 1) -> Path:
    """google/siglip2-so400m-patch14-384 layout: model_type "siglip" with a Gemma tokenizer.json."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_json = train_gemma_style_tokenizer(directory)
    vocab_size = json.loads(tokenizer_json.read_text())["model"]["vocab"].__len__()
    config = tiny_config(vocab_size=vocab_size, text_length=text_length, image_size=image_size,
                         patch_size=patch_size)
    random_siglip_model(config, seed=seed).save_pretrained(directory)
    write_json(directory / "preprocessor_config.json", preprocessor_config(image_size=image_size, resample=2))
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    write_json(directory / "special_tokens_map.json", specials)
    write_json(directory / "tokenizer_config.json", {
        **specials, "tokenizer_class": "GemmaTokenizer", "model_max_length": text_length,
        "add_bos_token": False, "add_eos_token": True, "padding_side": "right",
    })
    return directory
