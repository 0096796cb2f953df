"""The contrastive losses of the paper: vanilla (eq. 3) and slow-fast (eq. 4).

Rays come in K images of N rays (see ``ContrastivePixelSampler``); ids are compared only within an image,
since 2D segment ids are arbitrary per image. Label 0 means "no segment" and takes part in no pair (the sampler
draws instance rays from segment pixels, so it is rare).

For a query ray i and the key rays j of its image, with embeddings f_i and g_j, both losses are

    L_i = -log( sum_{j: y_j = y_i} exp(s_ij) / sum_j exp(s_ij) )

with the similarity kernel s_ij of the authors' code for each:

- **slow-fast (eq. 4):** ``s_ij = exp(-||f_i - g_j||)``, a plain (not squared) distance and no temperature
  (the configured 100 is unused there), queries from the fast field and keys from the slow one. ``L`` is
  averaged over the query rays that have at least one positive and one negative key.
- **vanilla (eq. 3):** ``s_ij = exp(-||f_i - f_j||² / τ_ij)``, the paper's Gaussian kernel, with τ = the
  temperature (100) for positive pairs and 1 for negative pairs, every ray against every other ray of its
  image. As in the authors' code, the denominator includes the ray itself, and ``L`` is summed over the rays
  with a positive and divided by the number of labelled rays.

A ray whose image holds a single label has no negative; an all-background or one-object image contributes
nothing to slow-fast.

Everything is batched over the K images with (K, N, N) pair masks: no loop over labels, so the cost does not
depend on the number of objects.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from contrastive_lift_ns.losses.precision import in_float32

_MASKED = -1e4  # finite stand-in for -inf: an all-masked row must still give finite gradients


def pairwise_distance(a: Float[Tensor, "K N D"], b: Float[Tensor, "K M D"]) -> Float[Tensor, "K N M"]:
    """Euclidean distances whose gradient stays finite where two embeddings coincide.

    Expanded as |a|² + |b|² - 2 a·b, one batched matmul, instead of materialising (K, N, M, D) differences. The
    expansion cancels when the embeddings lie far from the origin compared with their distances, so both sets
    are first centred on their joint mean per image (distances do not change).
    """
    center = torch.cat([a, b], 1).mean(1, keepdim=True).detach()
    a, b = a - center, b - center
    squared = torch.baddbmm(
        a.square().sum(-1, keepdim=True) + b.square().sum(-1)[:, None, :], a, b.transpose(1, 2), alpha=-2.0
    )
    return (squared.clamp(min=0.0) + 1e-12).sqrt()


def _log_ratios(
    similarity: Float[Tensor, "K N M"], pairs: Bool[Tensor, "K N M"], positive: Bool[Tensor, "K N M"]
) -> Float[Tensor, "K N"]:
    """-log(Σ_positive exp(s) / Σ_pairs exp(s)) per query ray (0 where a ray has no positive)."""
    log_all = torch.logsumexp(similarity.masked_fill(~pairs, _MASKED), dim=-1)
    log_positive = torch.logsumexp(similarity.masked_fill(~positive, _MASKED), dim=-1)
    return torch.where(positive.any(-1), log_all - log_positive, torch.zeros_like(log_all))


@in_float32
def vanilla_contrastive_loss(
    embeddings: Float[Tensor, "K N D"], labels: Int[Tensor, "K N"], temperature: float = 100.0
) -> Float[Tensor, ""]:
    """Eq. 3: every ray against every other ray of its image, all rendered by the trained field, with the
    authors' Gaussian kernel (squared distances of positive pairs divided by ``temperature``)."""
    labelled = labels != 0
    pairs = labelled[:, None, :] & labelled[:, :, None]  # the authors' denominator includes the ray itself
    self_pair = torch.eye(labels.shape[1], dtype=torch.bool, device=labels.device)
    positive = pairs & ~self_pair & (labels[:, :, None] == labels[:, None, :])
    squared = pairwise_distance(embeddings, embeddings).square()
    similarity = torch.exp(-torch.where(positive, squared / temperature, squared))
    return _log_ratios(similarity, pairs, positive).sum() / labelled.sum().clamp(min=1)


@in_float32
def slow_fast_contrastive_loss(
    fast: Float[Tensor, "K N D"],
    slow: Float[Tensor, "K M D"],
    fast_labels: Int[Tensor, "K N"],
    slow_labels: Int[Tensor, "K M"],
    temperature: float = 1.0,
) -> Float[Tensor, ""]:
    """Eq. 4: rays rendered by the fast field are queries, the other rays of the image, rendered by the slow
    field (no gradient), are keys. Each ray is rendered by one field only, so the cost equals eq. 3's."""
    similarity = torch.exp(-pairwise_distance(fast, slow.detach())) / temperature
    pairs = (slow_labels != 0)[:, None, :] & (fast_labels != 0)[:, :, None]
    positive = pairs & (fast_labels[:, :, None] == slow_labels[:, None, :])
    counted = positive.any(-1) & (pairs & ~positive).any(-1)
    per_ray = torch.where(counted, _log_ratios(similarity, pairs, positive), torch.zeros_like(similarity[..., 0]))
    return per_ray.sum() / counted.sum().clamp(min=1)
