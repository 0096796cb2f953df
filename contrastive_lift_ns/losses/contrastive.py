"""The contrastive losses of the paper: vanilla (eq. 3) and slow-fast (eq. 4).

Rays come in K images of N rays (see ``PerImagePixelSampler``); ids are compared only within an image, since
2D segment ids are arbitrary per image. Label 0 means "no segment" and takes part in no pair.

For a query ray i and the key rays j of its image, with embeddings f_i and g_j:

    s_ij = exp(-||f_i - g_j||)                  (kernel of the authors' code: plain, not squared, distance)
    L_i  = -log( sum_{j: y_j = y_i} exp(s_ij) / sum_j exp(s_ij) )

averaged over the query rays that have at least one positive and one negative key. The paper writes the
kernel as a Gaussian RBF with a temperature; we follow the authors' code, whose slow-fast loss uses this
Laplacian kernel and no temperature (its configured temperature is unused). A ray whose image holds a
single label has no negative and adds no term, so an all-background or one-object image contributes nothing.

Everything is batched over the K images with (K, N, N) pair masks: no loop over labels, so the cost does not
depend on the number of objects.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

_MASKED = -1e4  # finite stand-in for -inf: an all-masked row must still give finite gradients


def pairwise_distance(a: Float[Tensor, "K N D"], b: Float[Tensor, "K M D"]) -> Float[Tensor, "K N M"]:
    """Euclidean distances whose gradient stays finite where two embeddings coincide.

    Expanded as |a|² + |b|² - 2 a·b, one batched matmul, instead of materialising (K, N, M, D) differences.
    """
    squared = torch.baddbmm(
        a.square().sum(-1, keepdim=True) + b.square().sum(-1)[:, None, :], a, b.transpose(1, 2), alpha=-2.0
    )
    return (squared.clamp(min=0.0) + 1e-12).sqrt()


def _contrastive(
    queries: Float[Tensor, "K N D"],
    keys: Float[Tensor, "K M D"],
    query_labels: Int[Tensor, "K N"],
    key_labels: Int[Tensor, "K M"],
    same_rays: bool,
    temperature: float,
) -> Float[Tensor, ""]:
    similarity = torch.exp(-pairwise_distance(queries, keys)) / temperature
    pairs = (key_labels != 0)[:, None, :] & (query_labels != 0)[:, :, None]
    if same_rays:  # a ray is not its own positive
        pairs = pairs & ~torch.eye(queries.shape[1], dtype=torch.bool, device=queries.device)
    positive = pairs & (query_labels[:, :, None] == key_labels[:, None, :])
    counted = positive.any(-1) & (pairs & ~positive).any(-1)
    log_all = torch.logsumexp(similarity.masked_fill(~pairs, _MASKED), dim=-1)
    log_positive = torch.logsumexp(similarity.masked_fill(~positive, _MASKED), dim=-1)
    per_ray = torch.where(counted, log_all - log_positive, torch.zeros_like(log_all))
    return per_ray.sum() / counted.sum().clamp(min=1)


def vanilla_contrastive_loss(
    embeddings: Float[Tensor, "K N D"], labels: Int[Tensor, "K N"], temperature: float = 1.0
) -> Float[Tensor, ""]:
    """Eq. 3: every ray against every other ray of its image, all rendered by the trained field."""
    return _contrastive(embeddings, embeddings, labels, labels, same_rays=True, temperature=temperature)


def slow_fast_contrastive_loss(
    fast: Float[Tensor, "K N D"],
    slow: Float[Tensor, "K M D"],
    fast_labels: Int[Tensor, "K N"],
    slow_labels: Int[Tensor, "K M"],
    temperature: float = 1.0,
) -> Float[Tensor, ""]:
    """Eq. 4: rays rendered by the fast field are queries, the other rays of the image, rendered by the slow
    field (no gradient), are keys. Each ray is rendered by one field only, so the cost equals eq. 3's."""
    return _contrastive(fast, slow.detach(), fast_labels, slow_labels, same_rays=False, temperature=temperature)
