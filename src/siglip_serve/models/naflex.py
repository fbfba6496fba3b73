"""Adapter for SigLIP 2 NaFlex checkpoints (config `model_type: "siglip2"`).

Covers google/siglip2-*-naflex. The neural network is transformers' `Siglip2Model`
(modeling_siglip2.py); preprocessing (`preprocess/naflex.py`) and tokenization are ours,
configured from the checkpoint's files. Each image keeps its aspect ratio and becomes a
variable number of patches; the vision tower takes them padded to the checkpoint's
`max_num_patches` with a mask and each image's patch grid (transformers Siglip2ImageProcessor). The text tower
is SigLIP's: fixed length, no mask, pooled at the last position (big_vision two_towers.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from siglip_serve.errors import InvalidCheckpointError, UnsupportedModelError
from siglip_serve.features import PatchFeatures, PatchLayout
from siglip_serve.models.checkpoint import Checkpoint, Family, cross_check_known
from siglip_serve.models.features import run_vision_layer
from siglip_serve.models.hf import load_transformers_module, read_json
from siglip_serve.models.tokenizer_files import build_tokenizer
from siglip_serve.models.towers import SiglipTowers
from siglip_serve.preprocess.naflex import NaFlexPixels, NaFlexTransform
from siglip_serve.preprocess.text import TextCleaning

REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
DEFAULT_MAX_NUM_PATCHES = 256  # Siglip2ImageProcessorPil's default, and the hub's NaFlex configs


class NaFlexTowers(SiglipTowers):
    """Runs a transformers `Siglip2Model`: padded patches plus mask and grid shapes in, embeddings out."""

    def __init__(
        self, module: torch.nn.Module, *, device: torch.device, dtype: torch.dtype, max_num_patches: int
    ) -> None:
        super().__init__(module, device=device, dtype=dtype)
        self.max_num_patches = max_num_patches

    # The vision tower reads each image's grid on the host (spatial_shapes.tolist()): graph breaks
    # and a shape per grid mix, so only the text tower is compiled.
    compiled_towers = ("text_model",)

    @property
    def tokens_per_image(self) -> int:
        """The patch budget: every image is run padded to it."""
        return self.max_num_patches

    def encode_prepared(self, prepared: Sequence[NaFlexPixels]) -> torch.Tensor:
        """Pad every image to the fixed `max_num_patches`, never to the batch's longest, so that an
        image's embedding does not depend on its batch neighbours."""
        return self.encode_patches(*collate(prepared, max_num_patches=self.max_num_patches))

    @torch.inference_mode()
    def encode_patches(
        self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor, spatial_shapes: torch.Tensor
    ) -> torch.Tensor:
        """[B, N, P*P*3] patches, [B, N] mask (1 = real patch), [B, 2] grids -> [B, D] float32 CPU
        embeddings (not normalized). Without the mask the padding is attended to: wrong results."""
        pooled = self.module.vision_model(
            pixel_values=self.to_device(pixel_values, self.dtype),
            pixel_attention_mask=self.to_device(pixel_attention_mask),
            # spatial_shapes stays on the host: transformers reads it with .tolist() per image
            spatial_shapes=spatial_shapes,
        ).pooler_output
        return pooled.float().cpu()

    @property
    def patch_layout(self) -> PatchLayout:
        """No fixed grid: each image has its own spatial shape, of at most `max_num_patches` patches."""
        vision = self.module.config.vision_config
        return PatchLayout(num_layers=int(vision.num_hidden_layers), hidden_size=int(vision.hidden_size),
                           patch_size=int(vision.patch_size), grid=None, max_patches=self.max_num_patches)

    @torch.inference_mode()
    def encode_patch_features(self, prepared: Sequence[NaFlexPixels], layer: int) -> list[PatchFeatures]:
        """Per image, only its real patches of `layer`: `collate` puts them first, in the row-major order of
        its spatial shape (Siglip2ImageProcessor's convert_image_to_patches); the padding after them is dropped."""
        pixel_values, mask, shapes = collate(prepared, max_num_patches=self.max_num_patches)
        tokens, pooled = run_vision_layer(
            self.module.vision_model, layer, pixel_values=self.to_device(pixel_values, self.dtype),
            pixel_attention_mask=self.to_device(mask), spatial_shapes=shapes,
        )
        tokens, pooled = tokens.float().cpu(), pooled.float().cpu()
        return [PatchFeatures(features=tokens[i, : item.num_patches].clone(), grid=item.spatial_shape,
                              pooled=pooled[i].clone())
                for i, item in enumerate(prepared)]

def collate(
    prepared: Sequence[NaFlexPixels], *, max_num_patches: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-pad patches to `max_num_patches`, as `Siglip2ImageProcessorPil` does (`pad_along_first_dim`)."""
    if not prepared:
        raise ValueError("no images to collate")
    patch_dim = prepared[0].patches.shape[1]
    pixel_values = np.zeros((len(prepared), max_num_patches, patch_dim), dtype=np.float32)
    mask = np.zeros((len(prepared), max_num_patches), dtype=np.int32)
    for row, item in enumerate(prepared):
        count = item.patches.shape[0]
        if count != item.num_patches or count > max_num_patches or item.patches.shape[1] != patch_dim:
            raise ValueError(
                f"image {row}: {item.patches.shape} patches for a {item.spatial_shape} grid do not fit "
                f"{max_num_patches} patches of {patch_dim} values"
            )
        pixel_values[row, :count] = item.patches
        mask[row, :count] = 1
    shapes = torch.tensor([item.spatial_shape for item in prepared], dtype=torch.long)
    return torch.from_numpy(pixel_values), torch.from_numpy(mask), shapes


def naflex_transform_from_config(config: dict[str, Any], *, patch_size: int, where: Path) -> NaFlexTransform:
    """Read Siglip2ImageProcessor's fields; the patch size must be the vision tower's."""
    try:
        declared_patch = int(config.get("patch_size", patch_size))
        max_num_patches = int(config.get("max_num_patches", DEFAULT_MAX_NUM_PATCHES))
        resample = int(config.get("resample", 2))
    except (TypeError, ValueError):
        raise InvalidCheckpointError(f"{where}: patch_size, max_num_patches and resample must be integers") from None
    if declared_patch != patch_size:
        raise InvalidCheckpointError(
            f"{where}: patch_size {declared_patch} differs from the vision tower's {patch_size} (config.json)"
        )
    if max_num_patches < 1:
        raise InvalidCheckpointError(f"{where}: max_num_patches must be positive, got {max_num_patches}")
    return NaFlexTransform(
        patch_size=patch_size,
        max_num_patches=max_num_patches,
        resample=resample,
        mean=tuple(config.get("image_mean", (0.5, 0.5, 0.5))),
        std=tuple(config.get("image_std", (0.5, 0.5, 0.5))),
        rescale_factor=float(config.get("rescale_factor", 1 / 255)),
    )


def load_naflex_checkpoint(directory: Path, *, name: str, device: torch.device, dtype: torch.dtype) -> Checkpoint:
    for filename in REQUIRED_FILES:
        if not (directory / filename).is_file():
            raise InvalidCheckpointError(f"checkpoint directory {directory} is missing {filename}")
    config = read_json(directory / "config.json")
    model_type = config.get("model_type")
    if model_type != "siglip2":
        raise UnsupportedModelError(
            f"{directory}: model_type {model_type!r} is not supported by the NaFlex adapter (expected 'siglip2')"
        )
    text_length = int(config.get("text_config", {}).get("max_position_embeddings", 64))
    # SigLIP 2 was trained on lowercased text with punctuation kept (big_vision two_towers.py).
    tokenizer = build_tokenizer(directory, length=text_length, cleaning=TextCleaning.LOWERCASE)
    module = load_transformers_module("Siglip2Model", directory)
    patch_size = int(module.config.vision_config.patch_size)
    transform = naflex_transform_from_config(
        read_json(directory / "preprocessor_config.json"),
        patch_size=patch_size,
        where=directory / "preprocessor_config.json",
    )
    checkpoint = Checkpoint(
        name=name,
        directory=directory,
        family=Family.SIGLIP2,
        format="hf-naflex",
        towers=NaFlexTowers(module, device=device, dtype=dtype, max_num_patches=transform.max_num_patches),
        image_transform=transform,
        tokenizer=tokenizer,
        embed_dim=int(module.config.vision_config.hidden_size),
        patch_size=patch_size,
    )
    cross_check_known(checkpoint, spec=name)
    return checkpoint
