"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023, arXiv:2303.15343, Algorithm 1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Paper §3.2: t' = log 10 and b = -10 at initialization, so that the many negatives start
# near their target and the first steps are not dominated by them.
INIT_LOGIT_SCALE = math.log(10.0)
INIT_LOGIT_BIAS = -10.0


def sigmoid_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """-1/|B| sum over all image-text pairs of log sigmoid(z_ij * (exp(t) x_i.y_j + b)).

    Embeddings are [B, D], not yet normalized. z_ij = +1 for matching pairs, -1 otherwise:
    the diagonal by default (Algorithm 1: labels = 2 * eye(n) - 1), or the boolean [B, B]
    matrix `positives` when several texts describe an image (no false negatives).
    """
    image_embeds = F.normalize(image_embeds, dim=-1)
    text_embeds = F.normalize(text_embeds, dim=-1)
    logits = image_embeds @ text_embeds.T * logit_scale.exp() + logit_bias
    if positives is None:
        positives = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
    labels = positives.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(labels * logits).sum() / len(logits)
