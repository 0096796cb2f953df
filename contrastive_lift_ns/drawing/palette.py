"""Fixed colours for ids and embeddings, so an object keeps its colour in every view and every video frame."""

from __future__ import annotations

import colorsys

import torch
from jaxtyping import Float, Int
from torch import Tensor

_SIZE = 256
_GOLDEN = 0.618033988749895


def _build_palette() -> Tensor:
    """Id 0 is dark grey (background/no object); other ids walk the hue circle by the golden ratio, with
    lightness and saturation cycling, so neighbouring ids get clearly different colours."""
    colours = [(0.12, 0.12, 0.12)]
    for i in range(1, _SIZE):
        hue = (i * _GOLDEN) % 1.0
        lightness = (0.45, 0.6, 0.35, 0.7)[i % 4]
        saturation = (0.9, 0.65, 0.8)[i % 3]
        colours.append(colorsys.hls_to_rgb(hue, lightness, saturation))
    return torch.tensor(colours, dtype=torch.float32)


PALETTE = _build_palette()


def id_colours(ids: Int[Tensor, "*batch"]) -> Float[Tensor, "*batch 3"]:
    """RGB in [0, 1] for integer ids; ids beyond the palette wrap around but never onto id 0's grey."""
    ids = ids.long()
    index = torch.where(ids > 0, (ids - 1) % (_SIZE - 1) + 1, torch.zeros_like(ids))
    return PALETTE.to(ids.device)[index]


def embedding_colours(embeddings: Float[Tensor, "*batch D"], scale: float = 4.0) -> Float[Tensor, "*batch 3"]:
    """A fixed map from embeddings to RGB (not a per-frame PCA, whose colours flicker between frames).

    Three-dimensional embeddings map axis by axis; larger ones are first projected by a fixed seeded
    orthonormal basis. ``tanh(e / scale)`` keeps the typical spread of trained embeddings in range.
    """
    dim = embeddings.shape[-1]
    if dim != 3:
        generator = torch.Generator().manual_seed(0)
        basis = torch.linalg.qr(torch.randn(max(dim, 3), 3, generator=generator))[0][:dim]
        embeddings = embeddings @ basis.to(embeddings)
    return 0.5 + 0.5 * torch.tanh(embeddings / scale)
