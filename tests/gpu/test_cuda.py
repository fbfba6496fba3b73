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


def test_compiled_towers_with_cuda_graphs_equal_eager(siglip1_dir: Path) -> None:
    """--compile on CUDA: inductor with CUDA graphs per padded batch size; each replay's output is
    copied to the host before the next one can overwrite it."""
    torch._dynamo.reset()
    images = list(sample_images().values())
    eager = siglip_serve.load(str(siglip1_dir), device="cuda", dtype="float32", batch_size=4)
    compiled = siglip_serve.load(str(siglip1_dir), device="cuda", dtype="float32", batch_size=4)
    compiled.compile()
    for count in (1, 3, len(images)):
        torch.testing.assert_close(compiled.embed_images(images[:count]), eager.embed_images(images[:count]),
                                   atol=1e-4, rtol=0)
    first, second = compiled.embed_texts(TEXTS[:2]), compiled.embed_texts(TEXTS[1:3])
    torch.testing.assert_close(first[1], second[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(compiled.embed_texts(TEXTS), eager.embed_texts(TEXTS), atol=1e-4, rtol=0)
