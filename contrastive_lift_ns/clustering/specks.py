"""Specks: pixels of a rendered view whose id is none of the objects around them.

A pixel is labelled by its nearest cluster centroid. Where a pixel's embedding lies between two objects (at an
edge, or where the field has not settled), the nearest centroid can be a third object's, and that object then
shows as a speck of a few pixels in a view where it is not. In the 100-object room of
docs/benchmarks/surface-labels-cpu-2026-12-07.md most unmatched segments of the test views were such specks, half
of them under 5 pixels, and they cost the per-frame PQ more than the objects lost. A speck takes the id that
surrounds it; a piece of an object that is as large as a small object keeps its id.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Int
from scipy import ndimage
from torch import Tensor


def speck_limit(height: int, width: int, specks_per_width: float) -> int:
    """The largest speck in pixels: ``specks_per_width`` of the image's side (geometric mean of height and
    width), since an edge's specks are thin and their area grows with the side, not with the image's area."""
    return int(specks_per_width * (height * width) ** 0.5)


def absorb_specks(ids: Int[Tensor, "H W"], max_pixels: int) -> Int[Tensor, "H W"]:
    """``ids`` (0: no object) with every connected piece of one object of at most ``max_pixels`` pixels given
    the id that most of its bordering object pixels carry. A piece bordered by no other object keeps its id."""
    if max_pixels < 1:
        return ids
    labels = ids.cpu().numpy()
    out = labels.copy()
    for object_id, extent in enumerate(ndimage.find_objects(np.maximum(labels, 0)), start=1):
        if extent is None:  # no such id in this view
            continue
        window = tuple(slice(max(e.start - 1, 0), e.stop + 1) for e in extent)  # with a pixel of border
        pieces, _ = ndimage.label(labels[window] == object_id)
        sizes = np.bincount(pieces.ravel())
        boxes = ndimage.find_objects(pieces)
        for index in np.nonzero(sizes[1:] <= max_pixels)[0] + 1:
            box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in boxes[index - 1])
            piece, region = pieces[box] == index, out[window][box]
            around = region[ndimage.binary_dilation(piece) & ~piece]
            around = around[(around > 0) & (around != object_id)]
            if len(around):
                values, counts = np.unique(around, return_counts=True)
                region[piece] = values[counts.argmax()]
    return torch.from_numpy(out).to(ids)
