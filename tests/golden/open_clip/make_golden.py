"""Make the open_clip golden files: a tiny random SigLIP checkpoint in timm/ViT-B-16-SigLIP's hub layout
and what open_clip itself computes with it. Run by hand, never in CI (it needs open_clip, timm and
torchvision, which the project must not install; shared notes §7):

    python3 -m venv /tmp/ocvenv
    /tmp/ocvenv/bin/pip install open_clip_torch safetensors ftfy transformers sentencepiece protobuf
    HF_HUB_OFFLINE=1 /tmp/ocvenv/bin/python tests/golden/open_clip/make_golden.py
    # only (re)compute the dense patch features of the committed checkpoint, leaving it and the rest as they are:
    HF_HUB_OFFLINE=1 /tmp/ocvenv/bin/python tests/golden/open_clip/make_golden.py --features-only

The checkpoint is written by open_clip's own `push_to_hf_hub.save_for_hf` (open_clip_config.json with
`model_cfg` and `preprocess_cfg`, open_clip_model.safetensors, open_clip_pytorch_model.bin, tokenizer
files), then read back through open_clip's `local-dir:` schema, so the golden outputs come from open_clip's
factory, tokenizer and transform reading those files, as they would for the hub checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parent
sys.path.insert(0, str(GOLDEN.parents[1]))  # tests/: tiny_checkpoints, sample_images

import sample_images  # noqa: E402
import tiny_checkpoints  # noqa: E402

# A timm-style name for the tiny tower registered below: `vit_{size}_patch{P}_siglip_{res}`, like
# vit_base_patch16_siglip_224. "tiny" is timm's 3-head ViT size (vit_tiny_patch16_224); only width,
# depth and MLP ratio are shrunk, and the loader reads those from the weights.
TIMM_NAME = "vit_tiny_patch8_siglip_32"
IMAGE_SIZE = 32
TIMM_ARGS = {
    "img_size": IMAGE_SIZE, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3,
    "mlp_ratio": 3.7362,  # so400m's ratio: a non-round MLP width (int(48 * 3.7362) = 179)
    "class_token": False, "global_pool": "map",  # as vit_base_patch16_siglip_224 (erf GELU, MAP head)
}

# model_cfg as open_clip's ViT-B-16-SigLIP.json, text tower shrunk; vocab_size is the tokenizer's.
MODEL_CFG = {
    "embed_dim": 48,
    "init_logit_bias": -10,
    "custom_text": True,
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "timm_model_name": TIMM_NAME,
        "timm_model_pretrained": False,
        "timm_pool": "map",
        "timm_proj": "none",
    },
    "text_cfg": {
        "context_length": 64,
        "vocab_size": None,
        "hf_tokenizer_name": "timm/ViT-B-16-SigLIP",  # local-dir: loads the directory's files instead
        "tokenizer_kwargs": {"clean": "canonicalize"},
        "width": 32,
        "heads": 4,
        "layers": 2,
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": 1e-6},
    },
}
PREPROCESS_CFG = {
    "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "squash",
    "size": IMAGE_SIZE,
}

# Texts whose cleaning does not depend on ftfy: the test compares them with or without ftfy installed.
TEXTS = [
    "a photo of a cat",
    "Hot_Dog on the BEACH!",
    "cat &amp; dog",
    "cat &amp;amp; dog",
    "two  spaces\tand a\nnewline",
    "it's a dog's life... (really) #1",
    "This is a photo of a hot_dog.",
    "!!!",
    "a very long caption about a red car near the river " * 12,  # over 64 tokens: sticky EOS
]
# Texts whose cleaning needs ftfy.fix_text (mojibake, curly quotes, full-width punctuation, ligatures).
FTFY_TEXTS = [
    "cafÃ© by the river",
    "\u201csmart quotes\u201d on a sign",
    "a dog\uff01\uff01",
    "\ufb01ve \ufb02owers",
]


def register_tiny_timm_tower() -> None:
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    @register_model
    def vit_tiny_patch8_siglip_32(pretrained: bool = False, **kwargs):
        return _create_vision_transformer(TIMM_NAME, pretrained=pretrained, **{**TIMM_ARGS, **kwargs})


def build_tokenizer_files(work: Path) -> Path:
    """A T5 tokenizer.json as on the hub: open_clip's SigLipTokenizer (tokenizer.py) loads the SentencePiece
    model with T5TokenizerFast(extra_ids=0, legacy=False), sets pad = eos = 1 ("</s>") and saves it.
    That class's constructor no longer takes a path in transformers 5, so do the same steps directly."""
    from transformers import T5Tokenizer

    spm_dir = work / "spm"
    spm_dir.mkdir()
    tiny_checkpoints.train_sentencepiece(spm_dir)  # pad 0 "<pad>", eos 1 "</s>", unk 2 "<unk>"
    tokenizer = T5Tokenizer.from_pretrained(str(spm_dir), extra_ids=0, legacy=False)
    tokenizer.pad_token = "</s>"
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1, 1, 2)
    out = work / "tokenizer"
    tokenizer.save_pretrained(str(out))
    return out


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights at unit scale, so that GELU's tanh approximation or a wrong LayerNorm eps shows above 1e-5;
    LayerNorms and every bias perturbed (random init leaves them at 1 and 0, hiding mapping errors)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name in ("logit_scale", "logit_bias"):
                continue
            if param.ndim >= 2:
                param.copy_(noise / math.sqrt(param[0].numel()))
            elif name.endswith("weight"):  # LayerNorm scale
                param.copy_(1 + 0.2 * noise)
            else:
                param.copy_(0.1 * noise)
        model.logit_scale.fill_(tiny_checkpoints.LOGIT_SCALE)
        model.logit_bias.fill_(tiny_checkpoints.LOGIT_BIAS)


def write_images() -> list[str]:
    images = {
        "wide.png": sample_images.photo_like(97, 41, seed=1),
        "tall.png": sample_images.photo_like(30, 120, seed=2),
        "tiny.png": sample_images.photo_like(5, 7, seed=3),  # upscaled
        "exact.png": sample_images.photo_like(IMAGE_SIZE, IMAGE_SIZE, seed=4),  # no resize
        "photo.png": sample_images.photo_like(160, 120, seed=5),
        "gray.png": sample_images.photo_like(50, 50, seed=6).convert("L"),
    }
    for filename, image in images.items():
        image.save(GOLDEN / filename)
    return list(images)


def build_checkpoint(work: Path) -> None:
    import open_clip
    from open_clip.push_to_hf_hub import save_for_hf

    tokenizer_dir = build_tokenizer_files(work)
    MODEL_CFG["text_cfg"]["vocab_size"] = len(json.loads((tokenizer_dir / "tokenizer.json").read_text())
                                              ["model"]["vocab"])
    build = work / "build"
    shutil.copytree(tokenizer_dir, build)
    (build / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}, indent=2)
    )
    model = open_clip.create_model(f"local-dir:{build}")  # no weights there: random init
    randomize(model)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{build}")
    save_for_hf(model, tokenizer, MODEL_CFG, str(GOLDEN), safe_serialization="both")


def open_clip_outputs(image_files: list[str]) -> dict[str, np.ndarray]:
    """Everything from open_clip reading the golden directory, as a user of the hub checkpoint would."""
    import open_clip
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{GOLDEN}")
    model.eval()
    from_bin = open_clip.create_model(f"local-dir:{GOLDEN}", pretrained=None)
    open_clip.load_checkpoint(from_bin, str(GOLDEN / "open_clip_pytorch_model.bin"))
    for key, value in from_bin.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    tokenizer = open_clip.get_tokenizer(f"local-dir:{GOLDEN}")
    assert tokenizer.clean_fn is open_clip.tokenizer._clean_canonicalize
    # Notes §7: without a preprocess_cfg open_clip silently uses OpenAI CLIP's mean/std and a center crop.
    # Check that the directory's config is what open_clip applied, against an explicitly built transform.
    explicit = open_clip.image_transform(
        IMAGE_SIZE, is_train=False, mean=PREPROCESS_CFG["mean"], std=PREPROCESS_CFG["std"],
        interpolation="bicubic", resize_mode="squash",
    )
    # open_clip resizes before converting to RGB; a palette image would be resized with NEAREST
    # (PIL's rule for mode "P"). Users convert first, and so does our decoder: compare on RGB input.
    images = [Image.open(GOLDEN / name).convert("RGB") for name in image_files]
    pixels = torch.stack([preprocess(image) for image in images])
    assert torch.equal(pixels, torch.stack([explicit(image) for image in images]))

    input_ids = tokenizer(TEXTS)
    with torch.no_grad():
        image_embeds = model.encode_image(pixels)
        text_embeds = model.encode_text(input_ids)
        image_normalized = model.encode_image(pixels, normalize=True)
        text_normalized = model.encode_text(input_ids, normalize=True)
        # open_clip loss.py SigLipLoss.get_logits: logit_scale.exp() * image @ text.T + logit_bias
        logits = model.logit_scale.exp() * image_normalized @ text_normalized.T + model.logit_bias
    return {
        "pixel_values": pixels.numpy(),
        "input_ids": input_ids.numpy(),
        "ftfy_input_ids": tokenizer(FTFY_TEXTS).numpy(),
        "image_embeds": image_embeds.numpy(),
        "image_embeds_normalized": image_normalized.numpy(),
        "text_embeds": text_embeds.numpy(),
        "text_embeds_normalized": text_normalized.numpy(),
        "logits": logits.numpy(),
        "probabilities": logits.sigmoid().numpy(),
    }


def open_clip_patch_features(image_files: list[str]) -> dict[str, np.ndarray]:
    """The image tower's patch tokens at its first, penultimate and last layer, as open_clip and timm give them.

    siglip_serve numbers layers as transformers' hidden_states (siglip_serve/features.py): layer 0 is the patch
    embeddings plus position embeddings, layer k (1..L-1) the output of timm block k-1, which is open_clip's
    `forward_intermediates(image_indices=[k-1])`, and layer L the final output after the trunk's norm, which is
    timm's `forward_features` (= the last intermediate with normalize_intermediates=True). timm's SigLIP towers
    have no class token (class_token=False: num_prefix_tokens 0), so every token is a patch; open_clip's default
    "NCHW" output is the same tokens as [d, h, w], "NLC" as [h*w, d] in row-major order, which is ours.
    """
    import open_clip
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{GOLDEN}")
    model.eval()
    trunk = model.visual.trunk
    assert trunk.num_prefix_tokens == 0 and trunk.cls_token is None, "SigLIP has no class token"
    depth = len(trunk.blocks)
    pixels = torch.stack([preprocess(Image.open(GOLDEN / name).convert("RGB")) for name in image_files])
    with torch.no_grad():
        embeddings = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(pixels))))
        blocks = model.forward_intermediates(image=pixels, image_indices=list(range(depth)), intermediates_only=True,
                                             image_output_fmt="NLC")["image_intermediates"]
        final = trunk.forward_features(pixels)
        normalized = model.forward_intermediates(image=pixels, image_indices=[depth - 1], intermediates_only=True,
                                                 image_output_fmt="NLC", normalize_intermediates=True)
        nchw = model.forward_intermediates(image=pixels, image_indices=[depth - 1], intermediates_only=True)
        pooled = model.encode_image(pixels)
    torch.testing.assert_close(normalized["image_intermediates"][0], final, atol=0, rtol=0)
    side = IMAGE_SIZE // TIMM_ARGS["patch_size"]
    torch.testing.assert_close(nchw["image_intermediates"][0].permute(0, 2, 3, 1).reshape(len(pixels), side * side, -1),
                               blocks[-1], atol=0, rtol=0)
    layers = {0: embeddings, **{k: blocks[k - 1] for k in range(1, depth)}, depth: final}
    out = {f"features_layer_{k}": tokens.numpy() for k, tokens in layers.items()}
    out["features_pooled"] = pooled.numpy()
    return out


def add_features_to_golden() -> None:
    """Add (or replace) the features in golden.npz and golden.json, keeping every other entry byte for byte."""
    info = json.loads((GOLDEN / "golden.json").read_text())
    with np.load(GOLDEN / "golden.npz") as stored:
        arrays = {key: stored[key] for key in stored.files if not key.startswith("features_")}
    register_tiny_timm_tower()
    arrays.update(open_clip_patch_features(info["images"]))
    np.savez_compressed(GOLDEN / "golden.npz", **arrays)
    info["features_versions"] = versions()
    (GOLDEN / "golden.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    print({k: v.shape for k, v in arrays.items() if k.startswith("features_")}, versions())


def versions() -> dict[str, str]:
    import ftfy
    import open_clip
    import timm
    import transformers

    return {"open_clip": open_clip.__version__, "timm": timm.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "ftfy": ftfy.__version__}


def cleaning_needs_ftfy(text: str) -> bool:
    """open_clip tokenizer.py: _clean_canonicalize = canonicalize_text(basic_clean(x)), basic_clean being
    ftfy.fix_text, then html.unescape twice and strip."""
    import html

    from open_clip.tokenizer import _clean_canonicalize, canonicalize_text

    return _clean_canonicalize(text) != canonicalize_text(html.unescape(html.unescape(text)).strip())


def main() -> None:
    assert not any(cleaning_needs_ftfy(text) for text in TEXTS)
    assert all(cleaning_needs_ftfy(text) for text in FTFY_TEXTS)
    torch.manual_seed(0)
    register_tiny_timm_tower()
    for stale in GOLDEN.iterdir():
        if stale.name not in ("make_golden.py", "README.md"):
            stale.unlink()
    image_files = write_images()
    with tempfile.TemporaryDirectory() as work:
        build_checkpoint(Path(work))
    outputs = open_clip_outputs(image_files)
    outputs.update(open_clip_patch_features(image_files))
    probabilities = outputs["probabilities"]
    assert 0.05 < probabilities.mean() < 0.95, "saturated sigmoids prove nothing (notes §1)"
    np.savez_compressed(GOLDEN / "golden.npz", **outputs)
    (GOLDEN / "golden.json").write_text(json.dumps({
        "images": image_files, "texts": TEXTS, "ftfy_texts": FTFY_TEXTS, "versions": versions(),
        "timm_model": {"name": TIMM_NAME, **TIMM_ARGS}, "features_versions": versions(),
    }, indent=2, ensure_ascii=False) + "\n")
    print({name: array.shape for name, array in outputs.items()}, versions())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features-only", action="store_true",
                        help="only add the patch features of the committed checkpoint to golden.npz/golden.json")
    if parser.parse_args().features_only:
        add_features_to_golden()
    else:
        main()
