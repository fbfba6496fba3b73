"""CUDA paths (run on the device machine; skipped elsewhere): fp32 parity with the CPU, half precision numerics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sample_images import sample_images

import siglip_serve

pytestmark = pytest.mark.gpu

TEXTS = ["a photo of a cat", "a red car near the river", "Hot_Dog!"]


@pytest.fixture(autouse=True)
def no_tf32():
    # cuDNN TF32 is on by default for convolutions, and SigLIP's patch embedding is one (notes §5).
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


def test_cuda_fp32_equals_cpu(siglip1_dir: Path) -> None:
    images = list(sample_images().values())
    cpu = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32")
    gpu = siglip_serve.load(str(siglip1_dir), device="cuda", dtype="float32")
    torch.testing.assert_close(gpu.embed_images(images), cpu.embed_images(images), atol=1e-4, rtol=0)
    torch.testing.assert_close(gpu.embed_texts(TEXTS), cpu.embed_texts(TEXTS), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_keeps_embeddings(siglip1_dir: Path, dtype: str) -> None:
    images = list(sample_images().values())
    full = siglip_serve.load(str(siglip1_dir), device="cuda", dtype="float32")
    half = siglip_serve.load(str(siglip1_dir), device="cuda", dtype=dtype)
    cosine = torch.nn.functional.cosine_similarity(half.embed_images(images), full.embed_images(images))
    assert float(cosine.min()) >= 0.999
    cosine = torch.nn.functional.cosine_similarity(half.embed_texts(TEXTS), full.embed_texts(TEXTS))
    assert float(cosine.min()) >= 0.999
