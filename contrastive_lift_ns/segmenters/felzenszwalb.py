"""Felzenszwalb's graph-based segmentation (scikit-image): a 2D segmenter that needs no weights.

It is a fallback and a test tool. It has no notion of classes or confidence, so every segment is a thing of the
single class "object" with confidence 1, and no pixel is background. Its parameters grow with the image as
``cl-make-scene --segmenter felzenszwalb`` chooses them, so a segment covers a similar share of any image.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np

from contrastive_lift_ns.data.scene_format import SceneClasses
from contrastive_lift_ns.scenes.segmenter_noise import Segments, classical_segments


class Felzenszwalb:
    """scikit-image's Felzenszwalb segmentation, every segment an object."""

    classes = SceneClasses(names=("background", "object"), thing_ids=(1,))

    def segment(self, images: Sequence[np.ndarray]) -> List[Segments]:
        # Against an all-object "ground truth" the vote keeps every segment as an object, with confidence 1.
        return [classical_segments(image, np.ones(image.shape[:2], dtype=np.int64), "felzenszwalb") for image in images]
