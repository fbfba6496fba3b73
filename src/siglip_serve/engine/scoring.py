"""Pure scoring functions: SigLIP's sigmoid, the optional softmax, template ensembling, ranking.

References: big_vision `models/proj/image_text/two_towers.py` (logits = exp(t)*cos + b)
and the SigLIP paper (arXiv:2303.15343) §3: one independent sigmoid per pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import torch

from siglip_serve.models.towers import Temperature


class Normalization(StrEnum):
    SIGMOID = "sigmoid"  # SigLIP's own: independent probability per (image, label)
    SOFTMAX = "softmax"  # CLIP-style distribution over the given labels; only when asked


def l2_normalize(embeddings: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(embeddings.float(), dim=-1)


def logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, temperature: Temperature) -> torch.Tensor:
    """[I, D] x [T, D] -> [I, T] logits = exp(logit_scale) * cos + logit_bias."""
    cosine = l2_normalize(image_embeds) @ l2_normalize(text_embeds).T
    return cosine * torch.tensor(temperature.logit_scale).exp() + temperature.logit_bias


def probabilities(logit_matrix: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    if normalization is Normalization.SOFTMAX:
        return logit_matrix.softmax(dim=-1)
    return logit_matrix.sigmoid()


def ensemble_templates(text_embeds: torch.Tensor) -> torch.Tensor:
    """[templates, labels, D] -> [labels, D]: normalize each, average per label, re-normalize.

    As CLIP's and big_vision's zero-shot classifiers build class embeddings.
    """
    return l2_normalize(l2_normalize(text_embeds).mean(dim=0))


def ranked(labels: Sequence[str], scores: torch.Tensor, top_k: int | None = None) -> list[tuple[str, float]]:
    """Labels with their scores, best first; ties keep the caller's label order."""
    order = sorted(range(len(labels)), key=lambda i: -float(scores[i]))
    if top_k is not None:
        order = order[:top_k]
    return [(labels[i], float(scores[i])) for i in order]
