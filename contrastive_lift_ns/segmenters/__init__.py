"""2D segmenters for ``cl-segment``: RGB images in, the scene format's per-frame maps out.

Every segmenter has the `Segmenter` interface: ``segment(images)`` takes a batch of H×W×3 uint8 images of one size
and returns one `Segments` (instance ids with 0 = none, semantic class ids, confidence in [0, 1]) per image, and
``classes`` names the semantic classes and says which are things. Modules:

- ``mask2former``: panoptic, with the model's classes (the paper's segmenter);
- ``sam``: class-agnostic instances from automatic mask generation;
- ``felzenszwalb``: classical, without weights.

Importing this package loads no model and no transformers; each segmenter loads its weights when it is built.
"""

from __future__ import annotations

from typing import List, Protocol, Sequence

import numpy as np

from contrastive_lift_ns.data.scene_format import SceneClasses
from contrastive_lift_ns.scenes.segmenter_noise import Segments

__all__ = ["Segmenter", "SegmenterError", "Segments"]


class SegmenterError(RuntimeError):
    """A segmenter that cannot be set up (weights out of reach, a missing package); the message says what to do."""


class Segmenter(Protocol):
    """What ``cl-segment`` needs of a 2D segmenter."""

    classes: SceneClasses
    """The semantic classes that ``Segments.semantics`` indexes, and which of them are things."""

    def segment(self, images: Sequence[np.ndarray]) -> List[Segments]:
        """One `Segments` per H×W×3 uint8 image; all images of a call have the same size."""
        ...
