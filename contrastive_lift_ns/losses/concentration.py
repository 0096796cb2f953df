"""The concentration loss (paper eq. 5): pull each fast embedding towards its segment's slow centroid.

For each label present in both halves of an image, the centroid c is the mean of the slow embeddings with
that label (no gradient). Following the authors' code rather than the paper's squared error, each fast ray
scores ``exp(-||f_i - c||^2) * confidence_i``; the loss is minus the mean score per label, averaged over the
labels of all K images. The bounded kernel keeps a few mislabelled rays from dominating the gradient.

Centroids come from the (K, N, M) label-equality matrix times the slow embeddings, so there is no loop over
labels and the cost does not depend on the number of objects.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from contrastive_lift_ns.losses.precision import in_float32


@in_float32
def concentration_loss(
    fast: Float[Tensor, "K N D"],
    slow: Float[Tensor, "K M D"],
    fast_labels: Int[Tensor, "K N"],
    slow_labels: Int[Tensor, "K M"],
    fast_confidence: Float[Tensor, "K N"],
) -> Float[Tensor, ""]:
    """Minus the mean, over (image, label) groups, of the group's mean confidence-weighted kernel score."""
    same = ((fast_labels[:, :, None] == slow_labels[:, None, :]) & (slow_labels != 0)[:, None, :]).to(fast.dtype)
    count = same.sum(-1)
    centroid = (same @ slow.detach()) / count.clamp(min=1)[..., None]
    score = torch.exp(-(fast - centroid).square().sum(-1)) * fast_confidence
    group_size = (fast_labels[:, :, None] == fast_labels[:, None, :]).sum(-1)
    weight = ((fast_labels != 0) & (count > 0)).to(fast.dtype) / group_size  # each group sums to 1
    return -(score * weight).sum() / weight.sum().clamp(min=1e-6)
