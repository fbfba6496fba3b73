"""Small JPEG thumbnails of ingested images, stored beside their embeddings (issue #16, the playground's
search grid: "store a small one per item at ingest ... never expose arbitrary paths").

A thumbnail is made from the image bytes the item was embedded from, through `images.prepare_image`,
so it is decoded under the same pixel budget and checks as the model input. JPEGs decode in Pillow's
draft mode at 1/2-1/8 scale (never below the thumbnail's side), which makes the second decode a
fraction of the first (bench/results/decode.md: 40 vs 346 ms for a 4000x3000 photo at 1/8).
"""

from __future__ import annotations

import io

from PIL import Image

from siglip_serve.preprocess.images import ImageSource, prepare_image
from siglip_serve.preprocess.pixel_budget import PixelBudget

THUMBNAIL_SIDE = 128  # px, the longer side: a grid tile on a phone is about 120 CSS px wide
THUMBNAIL_QUALITY = 80  # JPEG quality: 3-6 KB at 128 px for photos


def make_thumbnail(source: ImageSource, *, side: int = THUMBNAIL_SIDE, max_pixels: int,
                   budget: PixelBudget | None = None) -> bytes:
    """A JPEG of at most `side` px on its longer side, aspect kept (raises the domain errors of
    `prepare_image` for an image it cannot decode)."""

    def encode(rgb: Image.Image) -> bytes:
        rgb.thumbnail((side, side), Image.Resampling.BICUBIC, reducing_gap=3.0)
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
        return out.getvalue()

    return prepare_image(source, encode, max_pixels=max_pixels, draft_size=side, budget=budget)
