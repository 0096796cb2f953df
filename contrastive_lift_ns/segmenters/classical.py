"""Classical 2D segmenters without weights: Felzenszwalb's graph-based segmentation and SLIC superpixels.

They are the segmenters that run offline, and ``cl-make-scene --segmenter felzenszwalb|slic`` uses them too. On
photographs they over-segment heavily: every textured region becomes segments of its own.

**In generated scenes** (``classical_segments``). ``cl-make-scene --segmenter felzenszwalb|slic`` runs
scikit-image's segmentation on the rendered RGB. Neither has a semantic head, so semantics come from a majority
vote with the ground truth, as if an ideal "object vs background" classifier were attached: a segment whose pixels are
mostly objects is kept (semantics 1, ids 1..K in scikit-image's order), one that is mostly floor or sky
becomes "no segment" (id 0, semantics 0), since the scene format gives instance ids to objects only. The
confidence of a kept segment is its purity (the share of its pixels on its most common ground-truth
instance); on dropped segments it is the share of background pixels. Both are lower exactly where the
segmenter errs. Its errors (mostly over-segmentation along textures, and leaks across similar colours) are
scikit-image's own, not the simulated segmenter's rates.

**For cl-segment** (``Felzenszwalb``, ``Slic``). There is no ground truth to vote with, so every segment is a
thing of the single class "object" with confidence 1, and no pixel is background.

Their parameters grow with the image, so a segment covers a similar share of any image.
"""

from __future__ import annotations

from typing import List, Literal, Sequence

import numpy as np
from skimage.segmentation import felzenszwalb, slic

from contrastive_lift_ns.data.scene_format import SceneClasses
from contrastive_lift_ns.segmenters import Segments

_SLIC_SEGMENTS = 250
_CLASSES = SceneClasses(names=("background", "object"), thing_ids=(1,))


def classical_segments(rgb: np.ndarray, instance: np.ndarray, method: Literal["felzenszwalb", "slic"]) -> Segments:
    """scikit-image segments of ``rgb``; object/background and confidence by vote with ``instance``."""
    height, width = instance.shape
    # Objects cover a fixed share of the image at any resolution, so segment sizes scale with it too.
    if method == "felzenszwalb":
        labels = felzenszwalb(rgb, scale=400 * width / 256, sigma=0.8, min_size=max(6, height * width // 1000))
    else:
        labels = slic(rgb, n_segments=_SLIC_SEGMENTS, compactness=10, start_label=0)
    labels = labels.ravel()
    num = int(labels.max()) + 1
    size = np.bincount(labels, minlength=num)
    on_object = np.bincount(labels, weights=(instance.ravel() > 0), minlength=num) / np.maximum(size, 1)
    # Sorted (segment, instance) codes: each segment's counts are one contiguous run.
    codes, counts = np.unique(labels * (int(instance.max()) + 1) + instance.ravel(), return_counts=True)
    segment_of = codes // (int(instance.max()) + 1)
    starts = np.flatnonzero(np.r_[True, segment_of[1:] != segment_of[:-1]])
    purity = np.zeros(num)
    purity[segment_of[starts]] = np.maximum.reduceat(counts, starts) / size[segment_of[starts]]
    thing = on_object > 0.5
    lookup = np.zeros(num, dtype=np.int64)
    lookup[thing] = np.arange(1, thing.sum() + 1)
    ids = lookup[labels].reshape(height, width)
    confidence = np.where(thing, purity, 1.0 - on_object)[labels].reshape(height, width)
    return Segments(ids=ids, semantics=(ids > 0).astype(np.uint8), confidence=confidence.astype(np.float32))


class Felzenszwalb:
    """scikit-image's Felzenszwalb segmentation, every segment an object."""

    classes = _CLASSES

    def segment(self, images: Sequence[np.ndarray]) -> List[Segments]:
        # Against an all-object "ground truth" the vote keeps every segment as an object, with confidence 1.
        return [classical_segments(image, np.ones(image.shape[:2], dtype=np.int64), "felzenszwalb") for image in images]


class Slic:
    """scikit-image's SLIC superpixels, every superpixel an object."""

    classes = _CLASSES

    def segment(self, images: Sequence[np.ndarray]) -> List[Segments]:
        return [classical_segments(image, np.ones(image.shape[:2], dtype=np.int64), "slic") for image in images]
