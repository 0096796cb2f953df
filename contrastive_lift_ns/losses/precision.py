"""The instance losses run in float32, also under mixed precision.

Under CUDA autocast, matrix products run in float16: the pairwise distance |a|² + |b|² − 2 a·b of two nearby
embeddings then cancels catastrophically (its error is about 1e-3 · |a|², larger than the distance itself), and
exp(exp(·)) logits lose the differences the loss is made of. The losses take their inputs in float32 and
switch autocast off, whatever precision the renders come in.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import torch

Loss = TypeVar("Loss", bound=Callable[..., Any])


def in_float32(loss: Loss) -> Loss:
    """Runs ``loss`` with autocast off and its floating-point tensor arguments cast to float32."""

    @functools.wraps(loss)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        def cast(value: Any) -> Any:
            return value.float() if torch.is_tensor(value) and value.is_floating_point() else value

        args, kwargs = tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}
        device = next((a.device.type for a in (*args, *kwargs.values()) if torch.is_tensor(a)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return loss(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
