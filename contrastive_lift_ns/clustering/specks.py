"""Specks: pixels of a rendered view whose id is none of the objects around them.

A pixel is labelled by its nearest cluster centroid. Where a pixel's embedding lies between two objects (at an
edge, or where the field has not settled), the nearest centroid can be a third object's, and that object then
shows as a speck of a few pixels in a view where it is not. In the 100-object room of
docs/benchmarks/surface-labels-cpu-2026-12-07.md most unmatched segments of the test views were such specks, half
of them under 5 pixels, and they cost the per-frame PQ more than the objects lost. A speck takes the id that
surrounds it; a piece of an object that is as large as a small object keeps its id. A speck that no object
borders is background seen as an object (a little density or a stray semantic label over a wall): it takes the
background's class, as in docs/benchmarks/lone-specks-cpu-2026-12-07.md.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from jaxtyping import Int
from scipy import ndimage
from torch import Tensor


def speck_limit(height: int, width: int, specks_per_width: float) -> int:
    """The largest speck in pixels: ``specks_per_width`` of the image's side (geometric mean of height and
    width), since an edge's specks are thin and their area grows with the side, not with the image's area."""
    return int(specks_per_width * (height * width) ** 0.5)


def absorb_specks(
    classes: Int[Tensor, "H W"], ids: Int[Tensor, "H W"], max_pixels: int
) -> Tuple[Int[Tensor, "H W"], Int[Tensor, "H W"]]:
    """``classes`` and ``ids`` (0: no object) with every connected piece of one object of at most ``max_pixels``
    pixels given the id that most of its bordering object pixels carry, or, where no object borders it, id 0 and
    the class that most of its bordering pixels carry."""
    if max_pixels < 1:
        return classes, ids
    labels, semantics = ids.cpu().numpy(), classes.cpu().numpy()
    out, out_classes = labels.copy(), semantics.copy()
    for object_id, extent in enumerate(ndimage.find_objects(np.maximum(labels, 0)), start=1):
        if extent is None:  # no such id in this view
            continue
        window = tuple(slice(max(e.start - 1, 0), e.stop + 1) for e in extent)  # with a pixel of border
        pieces, _ = ndimage.label(labels[window] == object_id)
        sizes = np.bincount(pieces.ravel())
        boxes = ndimage.find_objects(pieces)
        for index in np.nonzero(sizes[1:] <= max_pixels)[0] + 1:
            box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in boxes[index - 1])
            piece, region, region_classes = pieces[box] == index, out[window][box], out_classes[window][box]
            ring = ndimage.binary_dilation(piece) & ~piece
            around = region[ring]
            around = around[(around > 0) & (around != object_id)]
            if len(around):
                region[piece] = _most_common(around)
            elif (region[ring] == 0).any():  # bordered by the background alone
                region[piece] = 0
                region_classes[piece] = _most_common(region_classes[ring & (region == 0)])
    return torch.from_numpy(out_classes).to(classes), torch.from_numpy(out).to(ids)


def _most_common(values: np.ndarray) -> int:
    labels, counts = np.unique(values, return_counts=True)
    return labels[counts.argmax()]
