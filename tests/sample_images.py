"""Deterministic test images of several sizes, modes and aspect ratios."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise and a shape: resampling filters give visibly different results."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        127 + 120 * np.sin(x / (7 + seed) + y / 11),
        127 + 120 * np.cos(y / (5 + seed)),
        (x * 255 / max(width - 1, 1)),
    ], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    ImageDraw.Draw(image).ellipse(
        (width // 4, height // 4, width * 3 // 4, height * 3 // 4), fill=(250, 30, 30)
    )
    return image


def with_alpha(image: Image.Image) -> Image.Image:
    alpha = Image.linear_gradient("L").resize(image.size)
    rgba = image.convert("RGBA")
    rgba.putalpha(alpha)
    return rgba


def sample_images() -> dict[str, Image.Image]:
    return {
        "wide": photo_like(97, 41, seed=1),
        "tall": photo_like(30, 120, seed=2),
        "tiny": photo_like(5, 7, seed=3),
        "large": photo_like(640, 480, seed=4),
        "rgba": with_alpha(photo_like(64, 48, seed=5)),
        "gray": photo_like(50, 50, seed=6).convert("L"),
        "palette": photo_like(40, 60, seed=7).convert("P", palette=Image.Palette.ADAPTIVE),
    }


def encode(image: Image.Image, fmt: str, **save_args) -> bytes:
    """The image's bytes in `fmt` (PNG, JPEG, ...)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()
