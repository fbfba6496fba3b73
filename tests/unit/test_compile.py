"""--compile: towers compiled for a few static batch sizes, padded up to them, with equal results."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sample_images import sample_images
from tiny_naflex import build_naflex

import siglip_serve
from siglip_serve.models.towers import batch_buckets

TEXTS = ["a photo of a cat", "a red car near the river", "Hot_Dog!", "two dogs", "x"]


def test_buckets_are_powers_of_two_up_to_the_largest_batch() -> None:
    assert batch_buckets(1) == (1,)
    assert batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert batch_buckets(24) == (1, 2, 4, 8, 16, 24)


class RecordingBackend:
    """A torch.compile backend that runs the captured graph as is and records its input shapes."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        first = next(x for x in example_inputs if isinstance(x, torch.Tensor) and x.dim() >= 2)
        self.batch_sizes.append(int(first.shape[0]))
        return graph.forward


def test_compiled_towers_see_only_bucket_sizes_and_give_the_same_embeddings(siglip1_dir: Path) -> None:
    torch._dynamo.reset()
    images = list(sample_images().values())[:5]
    eager = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32", batch_size=4)
    compiled = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32", batch_size=4)
    backend = RecordingBackend()
    compiled.compile(backend=backend)
    warmed = sorted(set(backend.batch_sizes))
    assert warmed == [1, 2, 4]  # both towers, every bucket, before any request
    for count in (1, 3, 5):  # 3 runs padded to 4; 5 runs as 4 + 1
        torch.testing.assert_close(compiled.embed_images(images[:count]), eager.embed_images(images[:count]),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(compiled.embed_texts(TEXTS[:count]), eager.embed_texts(TEXTS[:count]),
                                   atol=1e-5, rtol=0)
    assert sorted(set(backend.batch_sizes)) == warmed  # no new shape was compiled


def test_naflex_compiles_only_its_text_tower(tmp_path: Path) -> None:
    siglip2_naflex_dir = build_naflex(tmp_path / "tiny-naflex")
    torch._dynamo.reset()
    images = list(sample_images().values())[:3]
    eager = siglip_serve.load(str(siglip2_naflex_dir), device="cpu", dtype="float32", batch_size=2)
    compiled = siglip_serve.load(str(siglip2_naflex_dir), device="cpu", dtype="float32", batch_size=2)
    compiled.compile(backend=RecordingBackend())
    assert not isinstance(compiled.checkpoint.towers.module.vision_model, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(compiled.checkpoint.towers.module.text_model, torch._dynamo.eval_frame.OptimizedModule)
    torch.testing.assert_close(compiled.embed_images(images), eager.embed_images(images), atol=1e-5, rtol=0)
    torch.testing.assert_close(compiled.embed_texts(TEXTS[:3]), eager.embed_texts(TEXTS[:3]), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_inductor_compiled_towers_match_eager(siglip1_dir: Path) -> None:
    """The real compiler (C++ codegen on CPU): minutes, hence slow."""
    torch._dynamo.reset()
    images = list(sample_images().values())[:3]
    eager = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32", batch_size=2)
    compiled = siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32", batch_size=2)
    compiled.compile()
    torch.testing.assert_close(compiled.embed_images(images), eager.embed_images(images), atol=1e-4, rtol=0)
    torch.testing.assert_close(compiled.embed_texts(TEXTS[:3]), eager.embed_texts(TEXTS[:3]), atol=1e-4, rtol=0)
