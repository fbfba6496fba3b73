"""SigLIP 2 NaFlex preprocessing: aspect-preserving resize to a patch budget, then patchify.

Follows transformers' PIL backend, `Siglip2ImageProcessorPil` (image_processing_pil_siglip2.py),
which is our reference (transformers image_processing_siglip2.py): resize to the largest patch-aligned size whose patch
count fits `max_num_patches`, with the checkpoint's PIL filter (bilinear), rescale and normalize,
then cut into patches flattened in (patch_h, patch_w, channel) order. Padding to the patch budget
and the attention mask are the towers' business (`models/naflex.py`), so one image's result never
depends on how it is batched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from siglip_serve.preprocess.images import ImageTransform, preprocess_image


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class NaFlexPixels:
    """One image, unpadded: [num_patches, patch*patch*3] float32 and its (rows, cols) patch grid."""

    patches: np.ndarray
    spatial_shape: tuple[int, int]

    @property
    def num_patches(self) -> int:
        return self.spatial_shape[0] * self.spatial_shape[1]


def _scaled_side(scale: float, side: int, patch_size: int) -> int:
    """A side scaled, rounded up to a multiple of the patch, at least one patch."""
    return max(patch_size, math.ceil(side * scale / patch_size) * patch_size)


def naflex_size(height: int, width: int, *, patch_size: int, max_num_patches: int,
                eps: float = 1e-5) -> tuple[int, int]:
    """(height, width) in pixels for an image of the given size: the largest patch-aligned size
    of (nearly) the same aspect ratio with at most `max_num_patches` patches.

    The same binary search over the scale as transformers' `get_image_size_for_max_num_patches`
    (image_processing_pil_siglip2.py), same bounds and float arithmetic, so the sizes agree exactly.
    Small images are upscaled.
    """
    scale_min, scale_max = eps / 10, 100.0
    while scale_max - scale_min >= eps:
        scale = (scale_min + scale_max) / 2
        rows = _scaled_side(scale, height, patch_size) / patch_size
        cols = _scaled_side(scale, width, patch_size) / patch_size
        if rows * cols <= max_num_patches:
            scale_min = scale
        else:
            scale_max = scale
    return _scaled_side(scale_min, height, patch_size), _scaled_side(scale_min, width, patch_size)


def patchify(pixels: np.ndarray, patch_size: int) -> np.ndarray:
    """[C, H, W] -> [(H/p)*(W/p), p*p*C], patches in row-major order, each flattened as
    (patch_h, patch_w, channel): transformers' `convert_image_to_patches`."""
    channels, height, width = pixels.shape
    rows, cols = height // patch_size, width // patch_size
    grid = pixels.reshape(channels, rows, patch_size, cols, patch_size).transpose(1, 3, 2, 4, 0)
    return np.ascontiguousarray(grid.reshape(rows * cols, patch_size * patch_size * channels))


@dataclass(frozen=True)
class NaFlexTransform:
    """What a NaFlex checkpoint's `preprocessor_config.json` says about its input."""

    patch_size: int
    max_num_patches: int = 256
    resample: int = Image.Resampling.BILINEAR  # PIL filter id; the hub's NaFlex configs say 2
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) in pixels that an image of PIL size (width, height) is resized to."""
        return naflex_size(height, width, patch_size=self.patch_size, max_num_patches=self.max_num_patches)

    def __call__(self, image: Image.Image) -> NaFlexPixels:
        """An RGB PIL image (as `preprocess.images.load_image` gives) -> unpadded patches."""
        height, width = self.size_for(*image.size)
        # The squash resize and pixel arithmetic of the fixed-resolution path, at this image's own size.
        pixels = preprocess_image(image, ImageTransform(
            height=height, width=width, resample=self.resample,
            mean=self.mean, std=self.std, rescale_factor=self.rescale_factor,
        ))
        return NaFlexPixels(
            patches=patchify(pixels, self.patch_size),
            spatial_shape=(height // self.patch_size, width // self.patch_size),
        )
