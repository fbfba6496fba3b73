"""Held-out evaluation of a shapes model through the library, i.e. the serving path.

Images go through `Model.embed_images` (decode, squash-resize, normalize), labels through
`Model.embed_labels` (template, cleaning, fixed length 64 without a mask), scores through
`Model.logits` with the checkpoint's learned temperature and bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from siglip_serve.model import Model
from siglip_serve.scoring import DEFAULT_TEMPLATE, Normalization, probabilities, ranked
from siglip_serve.training.shapes import COLORS, COMBOS, SHAPES, ShapeSample, make_sample, with_article

HELD_OUT_SEED = 1_000_003  # never used for training: the training command's seed is small


@dataclass(frozen=True)
class ShapesAccuracy:
    """Zero-shot top-1 accuracy (fractions) with the template 'This is a photo of {}.'."""

    images: int
    combo: float  # 48 labels "a {color} {shape}"
    color: float  # 8 labels "{color}"
    shape: float  # 6 labels "{shape}"

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def combo_label(color: str, shape: str) -> str:
    return with_article(f"a {color} {shape}")


def held_out(count: int, seed: int = HELD_OUT_SEED) -> list[ShapeSample]:
    """`count` fresh one-object samples; any multiple of 48 holds every combination equally often."""
    return [make_sample(seed, index, single=True) for index in range(count)]


def top1(model: Model, image_embeds: torch.Tensor, labels: Sequence[str], truth: Sequence[str]) -> float:
    scores = model.logits(image_embeds, model.embed_labels(list(labels), DEFAULT_TEMPLATE))
    predicted = [labels[int(i)] for i in scores.argmax(dim=1)]
    return sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)


def zero_shot_accuracy(model: Model, samples: Sequence[ShapeSample]) -> ShapesAccuracy:
    embeds = model.embed_images([s.image for s in samples])
    return ShapesAccuracy(
        images=len(samples),
        combo=top1(model, embeds, [combo_label(c, s) for c, s in COMBOS],
                   [combo_label(s.color, s.shape) for s in samples]),
        color=top1(model, embeds, list(COLORS), [s.color for s in samples]),
        shape=top1(model, embeds, list(SHAPES), [s.shape for s in samples]),
    )


def rerank_recall_at_1(model: Model, samples: Sequence[ShapeSample], *, template: str | None = None) -> float:
    """Text-to-image recall@1 as /v1/rerank computes it: each "a {color} {shape}" query against
    the images as documents, ranked by sigmoid relevance (ties keep document order)."""
    queries = [combo_label(s.color, s.shape) for s in samples]
    texts = [template.replace("{}", q) for q in queries] if template else queries
    image_embeds = model.embed_images([s.image for s in samples])
    text_embeds = model.embed_texts(texts)
    hits = 0
    for index, text_embed in enumerate(text_embeds):
        scores = probabilities(model.logits(text_embed[None], image_embeds), Normalization.SIGMOID)[0]
        best = ranked(scores, 1)[0][0]
        hits += best == index
    return hits / len(samples)


def one_per_combo(seed: int = HELD_OUT_SEED) -> list[ShapeSample]:
    """The first block of 48 samples of a stream: each combination exactly once."""
    return held_out(len(COMBOS), seed)
