"""dtype plumbing: auto is float32, bfloat16 runs on the CPU and stays close, bad names are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sample_images import sample_images

import siglip_serve
from siglip_serve.errors import InvalidParameterError


def test_auto_is_float32_and_bfloat16_is_close(siglip1_dir: Path) -> None:
    images = list(sample_images().values())
    auto = siglip_serve.load(str(siglip1_dir), device="cpu")
    bf16 = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="bfloat16")
    assert next(auto.checkpoint.towers.module.parameters()).dtype == torch.float32
    assert next(bf16.checkpoint.towers.module.parameters()).dtype == torch.bfloat16
    # The temperature is read before the cast: bf16 would round log(10) to 2.296875.
    assert bf16.checkpoint.towers.temperature == auto.checkpoint.towers.temperature
    cosine = torch.nn.functional.cosine_similarity(bf16.embed_images(images), auto.embed_images(images))
    assert float(cosine.min()) > 0.99
    assert bf16.embed_texts(["a cat"]).dtype == torch.float32  # outputs are always float32


def test_unknown_dtype_is_refused(siglip1_dir: Path) -> None:
    with pytest.raises(InvalidParameterError, match="unknown dtype"):
        siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float8")
