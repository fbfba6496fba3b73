"""Thumbnails stored at ingest (preprocess.thumbnails): size, aspect, content, and the image checks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from siglip_serve.errors import ImageTooLargeError, InvalidImageError
from siglip_serve.preprocess.pixel_budget import PixelBudget
from siglip_serve.preprocess.thumbnails import make_thumbnail


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue: a thumbnail must keep which side is which."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (220, 20, 20)
    pixels[:, width // 2 :] = (20, 20, 220)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_the_longer_side_becomes_the_thumbnail_side_and_the_aspect_is_kept(fmt: str) -> None:
    source = encoded(halves(1600, 400), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    thumb = Image.open(io.BytesIO(make_thumbnail(source, side=128, max_pixels=10**8)))
    assert thumb.format == "JPEG" and thumb.size == (128, 32)
    pixels = np.asarray(thumb.convert("RGB"), np.float32)
    assert np.abs(pixels[:, :56] - (220, 20, 20)).mean() < 12  # away from the seam, the colours survive
    assert np.abs(pixels[:, 72:] - (20, 20, 220)).mean() < 12


def test_a_small_image_is_not_enlarged_and_exif_orientation_applies() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display (EXIF 2.32, Orientation)
    source = encoded(halves(60, 20), "JPEG", quality=95, exif=exif)
    thumb = Image.open(io.BytesIO(make_thumbnail(source, side=128, max_pixels=10**8)))
    assert thumb.size == (20, 60)
    pixels = np.asarray(thumb.convert("RGB"), np.float32)
    assert pixels[:20, :, 0].mean() > 150 and pixels[-20:, :, 2].mean() > 150  # red on top after rotating


def test_the_image_checks_and_the_pixel_budget_apply() -> None:
    with pytest.raises(InvalidImageError):
        make_thumbnail(b"not an image", max_pixels=10**8)
    with pytest.raises(ImageTooLargeError):
        make_thumbnail(encoded(halves(200, 100), "PNG"), max_pixels=10_000)
    budget = PixelBudget(100_000)
    assert Image.open(io.BytesIO(make_thumbnail(encoded(halves(200, 100), "PNG"), max_pixels=10**8,
                                                budget=budget))).size == (128, 64)
    assert budget.in_use == 0 and budget.peak == 200 * 100  # decoded under the budget (a PNG: no draft)
