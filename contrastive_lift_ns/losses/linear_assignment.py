"""Panoptic Lifting's instance loss, the baseline the paper compares against.

The instance field predicts L logits per point, L being a fixed maximum number of objects. In each image,
the 2D segments are matched one-to-one to the L channels by Hungarian matching (scipy), with cost minus the
segment's mean predicted probability of the channel; each pixel is then trained with confidence-weighted
cross-entropy towards its segment's channel. Segments beyond L stay unmatched and are ignored.

The matching runs on the CPU once per image and step, and grows cubically with the number of segments: this
is the cost the slow-fast loss avoids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from contrastive_lift_ns.losses.precision import in_float32


@torch.no_grad()
def match_segments(logits: Float[Tensor, "K N L"], labels: Int[Tensor, "K N"]) -> Int[Tensor, "K N"]:
    """Each ray's matched channel, or -1 where it has no segment or its segment is unmatched."""
    probabilities = logits.softmax(-1)
    targets = torch.full_like(labels, -1)
    for k in range(labels.shape[0]):
        segments, inverse = torch.unique(labels[k], return_inverse=True)
        members = F.one_hot(inverse, len(segments)).T.to(probabilities.dtype)  # (S, N)
        mean_probability = (members @ probabilities[k]) / members.sum(-1, keepdim=True)
        rows, cols = linear_sum_assignment(-mean_probability[segments != 0].cpu().numpy())
        channel = torch.full((len(segments),), -1, dtype=labels.dtype, device=labels.device)
        nonzero = torch.nonzero(segments != 0)[:, 0]
        channel[nonzero[torch.as_tensor(rows, device=labels.device)]] = torch.as_tensor(cols, device=labels.device)
        targets[k] = channel[inverse]
    return targets


@in_float32
def linear_assignment_loss(
    logits: Float[Tensor, "K N L"], labels: Int[Tensor, "K N"], confidence: Float[Tensor, "K N"]
) -> Float[Tensor, ""]:
    """Confidence-weighted cross-entropy towards the Hungarian-matched channel of each ray's segment."""
    targets = match_segments(logits, labels).flatten()
    cross_entropy = F.cross_entropy(logits.flatten(0, 1), targets.clamp(min=0), reduction="none")
    matched = (targets >= 0).to(logits.dtype)
    return (cross_entropy * confidence.flatten() * matched).sum() / matched.sum().clamp(min=1)
