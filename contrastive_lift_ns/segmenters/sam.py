"""Segment Anything (SAM) automatic mask generation through Hugging Face transformers.

SAM gives instances without classes, so every mask is a thing of the single class "object", and the pixels no
mask covers are "background" with confidence 1 (as the Messy Rooms data set writes its background). Masks may
overlap: larger masks are painted first, so a smaller mask on top keeps its pixels. A mask's confidence is its
predicted IoU.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from contrastive_lift_ns.data.scene_format import SceneClasses
from contrastive_lift_ns.segmenters import Segments
from contrastive_lift_ns.segmenters._hub import load_pretrained, require_transformers

DEFAULT_MODEL = "facebook/sam-vit-huge"
DEFAULT_THRESHOLD = 0.88
"""SAM's own default for dropping masks of low predicted IoU."""
DEFAULT_POINTS_PER_SIDE = 32


class Sam:
    """SAM's automatic mask generator from a hub name or a local folder (weights and preprocessor config)."""

    classes = SceneClasses(names=("background", "object"), thing_ids=(1,))

    def __init__(
        self,
        model: Optional[str] = None,
        device: str = "cpu",
        score_threshold: Optional[float] = None,
        points_per_side: Optional[int] = None,
    ):
        transformers = require_transformers("sam")
        self._generator = load_pretrained(
            model or DEFAULT_MODEL,
            "sam",
            lambda name: transformers.pipeline("mask-generation", model=name, device=device),
        )
        self._options = {
            "pred_iou_thresh": DEFAULT_THRESHOLD if score_threshold is None else score_threshold,
            "points_per_crop": points_per_side or DEFAULT_POINTS_PER_SIDE,
            # Prompts decoded at once: the GPU takes many, the CPU is faster with few.
            "points_per_batch": 64 if device == "cpu" else 256,
        }

    def segment(self, images: Sequence[np.ndarray]) -> List[Segments]:
        results = self._generator([Image.fromarray(image) for image in images], **self._options)
        return [
            _instance_maps(
                [np.asarray(m.cpu(), dtype=bool) for m in r["masks"]], r["scores"].cpu().numpy(), image.shape[:2]
            )
            for r, image in zip(results, images)
        ]


def _instance_maps(masks: Sequence[np.ndarray], scores: np.ndarray, shape: Tuple[int, int]) -> Segments:
    """H×W boolean masks and their scores → ids 1..K (0 = background), object/background, confidence."""
    ids = np.zeros(shape, dtype=np.int64)
    confidence = np.ones(shape, dtype=np.float32)
    for index in sorted(range(len(masks)), key=lambda i: -int(masks[i].sum())):
        ids[masks[index]] = index + 1
        confidence[masks[index]] = np.clip(scores[index], 0.0, 1.0)
    return Segments(ids=ids, semantics=(ids > 0).astype(np.uint8), confidence=confidence)
