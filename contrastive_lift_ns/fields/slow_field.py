"""The slow instance embedding field (paper §3, "slow-fast contrastive learning").

The fast field is the model's trained instance field. The slow field has the same architecture and follows
the fast one as an exponential moving average of its parameters (a mean teacher):
``slow ← m·slow + (1 − m)·fast`` once per step. It sits in no optimizer group but is a submodule, so
checkpoints save it.

The slow field starts as a copy of the fast one (the usual mean-teacher start; the authors' code gives it
its own random initialisation instead, which only delays the point where the two agree).
"""

from __future__ import annotations

import copy

import torch
from jaxtyping import Float
from torch import Tensor, nn

from contrastive_lift_ns.fields.label_field import LabelField


class SlowField(nn.Module):
    """An EMA copy of a fast :class:`LabelField`, never trained by gradients."""

    def __init__(self, fast: LabelField, momentum: float) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"slow field momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.field = copy.deepcopy(fast).requires_grad_(False)

    def forward(self, positions: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch out_dim"]:
        return self.field(positions)

    @torch.no_grad()
    def update(self, fast: LabelField) -> None:
        """One EMA step towards the fast field."""
        for slow, current in zip(self.field.parameters(), fast.parameters()):
            slow.lerp_(current, 1.0 - self.momentum)
