"""Build a tiny random SigLIP 2 NaFlex checkpoint in the google/siglip2-*-naflex layout.

config.json with model_type "siglip2" (a `Siglip2Model` saved with `save_pretrained`),
model.safetensors, the hub's Siglip2ImageProcessor preprocessor_config.json, and a Gemma-style
tokenizer.json trained here (pad 0 / eos 1 / bos 2 / unk 3, EOS appended, no BOS).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tiny_checkpoints import LOGIT_BIAS, LOGIT_SCALE, tiny_config, train_gemma_style_tokenizer, write_json


def naflex_config(*, vocab_size: int, patch_size: int, max_num_patches: int) -> dict:
    """`tiny_config`'s towers; the vision tower has a patch grid instead of an image size."""
    config = tiny_config(vocab_size=vocab_size, patch_size=patch_size)
    del config["vision_config"]["image_size"]
    # The learned position grid is sqrt(num_patches) square and resized per image
    # (modeling_siglip2.py, resize_positional_embeddings); the hub's NaFlex configs pair
    # num_patches 256 with max_num_patches 256, so we do the same.
    config["vision_config"]["num_patches"] = max_num_patches
    return config


def random_siglip2_model(config: dict, *, seed: int) -> torch.nn.Module:
    """Random weights, with LayerNorms perturbed and the temperature set (random init zeroes both)."""
    from transformers import Siglip2Config, Siglip2Model

    torch.manual_seed(seed)
    model = Siglip2Model(Siglip2Config(**config)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(0.1 * torch.randn_like(module.weight))
                module.bias.add_(0.1 * torch.randn_like(module.bias))
        model.logit_scale.fill_(LOGIT_SCALE)
        model.logit_bias.fill_(LOGIT_BIAS)
    return model


def naflex_preprocessor_config(*, patch_size: int, max_num_patches: int) -> dict:
    """As google/siglip2-so400m-patch16-naflex's preprocessor_config.json (patch 16, 256 patches there)."""
    return {
        "image_processor_type": "Siglip2ImageProcessor",
        "processor_class": "Siglip2Processor",
        "do_resize": True,
        "resample": 2,
        "patch_size": patch_size,
        "max_num_patches": max_num_patches,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }


def build_naflex(directory: Path, *, max_num_patches: int = 16, patch_size: int = 4, seed: int = 2) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_json = train_gemma_style_tokenizer(directory)
    vocab_size = len(json.loads(tokenizer_json.read_text())["model"]["vocab"])
    config = naflex_config(vocab_size=vocab_size, patch_size=patch_size, max_num_patches=max_num_patches)
    random_siglip2_model(config, seed=seed).save_pretrained(directory)
    write_json(directory / "preprocessor_config.json",
               naflex_preprocessor_config(patch_size=patch_size, max_num_patches=max_num_patches))
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    write_json(directory / "special_tokens_map.json", specials)
    write_json(directory / "tokenizer_config.json", {
        **specials, "tokenizer_class": "GemmaTokenizer", "model_max_length": 64,
        "add_bos_token": False, "add_eos_token": True, "padding_side": "right",
    })
    return directory
