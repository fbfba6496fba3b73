"""What `/v1/models` says about a served model beyond its shapes: what the model pages show (issue #17).

Task, architecture, input resolution, parameters, license and price. Parameters come from the checkpoint
registry (models/known_checkpoints.toml); the registry has no license field, and every checkpoint in it is
published under Apache-2.0 (the google/siglip* and google/siglip2* model cards on the Hugging Face hub,
timm/ViT-B-16-SigLIP's card, and this project's demo model), so a known checkpoint is Apache-2.0 and an
unknown one is null rather than a guess.
"""

from __future__ import annotations

from siglip_serve.accounts.pricing import Pricing
from siglip_serve.api import protocol as p
from siglip_serve.backend import ModelInfo
from siglip_serve.models.registry import find_known

FAMILY_NAMES = {"siglip": "SigLIP", "siglip2": "SigLIP 2"}
# Tower width -> ViT size name, as the checkpoints name themselves (base, large, so400m, giant-opt).
VIT_SIZES = {768: "B", 1024: "L", 1152: "So400m", 1536: "g-opt"}
KNOWN_LICENSE = "Apache-2.0"


def architecture(info: ModelInfo) -> str:
    size = VIT_SIZES.get(info.embed_dim)
    vit = f"ViT-{size}/{info.patch_size}" if size else f"ViT/{info.patch_size} (width {info.embed_dim})"
    return f"{FAMILY_NAMES.get(info.family, info.family)} {vit}"


def input_resolution(info: ModelInfo) -> str:
    if info.image_size is None:
        return f"NaFlex: up to {info.max_num_patches} patches of {info.patch_size}x{info.patch_size}"
    return f"{info.image_size}x{info.image_size}"


def model_card(name: str, info: ModelInfo, pricing: Pricing) -> p.ModelCard:
    known = find_known(info.name)
    price = pricing.of(name)
    return p.ModelCard(
        id=name, family=info.family, format=info.format, image_size=info.image_size,
        max_num_patches=info.max_num_patches, patch_size=info.patch_size, embedding_size=info.embed_dim,
        text_length=info.text_length, architecture=architecture(info), input_resolution=input_resolution(info),
        parameters=round(known.params_m * 1e6) if known is not None and known.params_m else None,
        license=KNOWN_LICENSE if known is not None else None,
        pricing=p.ModelPricing(per_1k_images=price.per_1k_images, per_1m_text_tokens=price.per_1m_text_tokens,
                               example=pricing.is_example(name)))
