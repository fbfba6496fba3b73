"""Zero-shot scoring, below both the library (`model.py`) and the engine: SigLIP's sigmoid, the
optional softmax, prompts from templates, template ensembling, ranking. Pure functions.

References: big_vision `models/proj/image_text/two_towers.py` (logits = exp(t)*cos + b) and the
SigLIP paper (arXiv:2303.15343) §3: one independent sigmoid per pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import torch

from siglip_serve.backend import Temperature
from siglip_serve.errors import EmptyInputError, InvalidParameterError, InvalidTemplateError, shown
from siglip_serve.preprocess.text import check_text
from siglip_serve.templates import DEFAULT_TEMPLATE


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


def ranked(scores: torch.Tensor, top_k: int | None = None) -> list[tuple[int, float]]:
    """(index, score) pairs, best first; ties keep index order (a stable sort)."""
    order = torch.argsort(scores.float(), descending=True, stable=True).tolist()
    if top_k is not None:
        order = order[:top_k]
    return [(i, float(scores[i])) for i in order]


def ranked_labels(labels: Sequence[str], scores: torch.Tensor, top_k: int | None = None) -> list[tuple[str, float]]:
    return [(labels[i], score) for i, score in ranked(scores, top_k)]


def check_classify_options(normalization: str, top_k: int | None) -> Normalization:
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise InvalidParameterError(f"top_k must be a positive integer, got {shown(top_k)}", param="top_k")
    try:
        return Normalization(normalization)
    except ValueError:
        raise InvalidParameterError(
            f"normalization must be one of {', '.join(n.value for n in Normalization)}, got {shown(normalization)}",
            param="normalization",
        ) from None


def as_list(items: Sequence[object] | object) -> list:
    """A single str, bytes or image stands for a list of one (not a sequence of characters)."""
    if isinstance(items, str | bytes | bytearray | memoryview) or not isinstance(items, Sequence):
        return [items]
    return list(items)


def template_list(templates: str | Sequence[str] | None) -> list[str]:
    """The templates a request names, validated; the default one when it names none."""
    found = [DEFAULT_TEMPLATE] if templates is None else as_list(templates)
    if not found:
        raise EmptyInputError("at least one template is required", param="hypothesis_template")
    for index, template in enumerate(found):
        param = f"hypothesis_template[{index}]" if len(found) > 1 else "hypothesis_template"
        if not isinstance(template, str) or template.count("{}") != 1:
            raise InvalidTemplateError(f"template {shown(template)} must contain exactly one '{{}}' placeholder",
                                       param=param)
        check_text(template, param=param)
    return found


def format_prompts(labels: Sequence[str], templates: str | Sequence[str] | None) -> list[list[str]]:
    """[templates][labels] prompt texts. Validates labels and templates, naming the bad one."""
    labels = as_list(labels)
    if not labels:
        raise EmptyInputError("at least one label is required", param="labels")
    for index, label in enumerate(labels):
        check_text(label, param=f"labels[{index}]")
    return [[template.replace("{}", label) for label in labels] for template in template_list(templates)]
