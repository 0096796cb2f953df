"""2D segmenters for ``cl-segment``: RGB images in, the scene format's per-frame maps out.

Every segmenter has the `Segmenter` interface: ``segment(images)`` takes a batch of H×W×3 uint8 images of one size
and returns one `Segments` (instance ids with 0 = none, semantic class ids, confidence in [0, 1]) per image, and
``classes`` names the semantic classes and says which are things. Modules:

- ``mask2former``: panoptic, with the model's classes (the paper's segmenter);
- ``sam``: class-agnostic instances from automatic mask generation;
- ``classical``: Felzenszwalb's and SLIC's segmentations (scikit-image), without weights.

Importing this package loads no model and no transformers; each segmenter loads its weights when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Protocol, Sequence

import numpy as np

from contrastive_lift_ns.data.scene_format import SceneClasses

__all__ = ["Segmenter", "SegmenterError", "Segments"]


@dataclass(frozen=True)
class Segments:
    """A 2D segmenter's output for one view."""

    ids: np.ndarray
    """(H, W) int64 instance ids, 0 = no segment; arbitrary per view."""
    semantics: np.ndarray
    """(H, W) integer semantic class ids (for the generator's segmenters: 1 object, 0 background)."""
    confidence: np.ndarray
    """(H, W) float32 in [0, 1]."""


class SegmenterError(RuntimeError):
    """A segmenter that cannot be set up (weights out of reach, a missing package); the message says what to do."""


class Segmenter(Protocol):
    """What ``cl-segment`` needs of a 2D segmenter."""

    classes: SceneClasses
    """The semantic classes that ``Segments.semantics`` indexes, and which of them are things."""

    def segment(self, images: Sequence[np.ndarray]) -> List[Segments]:
        """One `Segments` per H×W×3 uint8 image; all images of a call have the same size."""
        ...
