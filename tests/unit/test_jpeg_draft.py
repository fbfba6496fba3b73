"""JPEG DCT-domain downscaling (`jpeg_draft`): opt-in, never below the input size, close to full decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sample_images import encode, photo_like

import siglip_serve
from siglip_serve.preprocess.images import decode_image


@pytest.mark.parametrize(("size", "expected"), [((1600, 1200), (400, 300)), ((640, 480), (320, 240)),
                                                ((300, 300), (300, 300))])
def test_draft_scales_by_powers_of_two_but_never_below_the_target(size, expected) -> None:
    data = encode(photo_like(*size), "JPEG", quality=90)
    assert decode_image(data).size == size
    assert decode_image(data, draft_size=224).size == expected


def test_draft_leaves_other_formats_alone() -> None:
    data = encode(photo_like(1600, 1200), "PNG")
    assert decode_image(data, draft_size=224).size == (1600, 1200)


def test_draft_is_opt_in_and_close_to_full_decode(siglip1_dir: Path) -> None:
    data = encode(photo_like(1600, 1200, seed=3), "JPEG", quality=90)
    full = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32")
    draft = siglip_serve.load(str(siglip1_dir), device="cpu", jpeg_draft=True, dtype="float32")
    assert full.draft_size is None and draft.draft_size == 32
    full_pixels, draft_pixels = full.prepare_image(data), draft.prepare_image(data)
    assert full_pixels.shape == draft_pixels.shape
    assert not np.array_equal(full_pixels, draft_pixels)
    assert float(np.abs(full_pixels - draft_pixels).mean()) < 0.05  # normalized units span [-1, 1]
