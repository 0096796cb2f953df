"""Mask2Former panoptic segmentation through Hugging Face transformers, the paper's 2D segmenter.

- **Classes:** 0 is "void" (pixels that no segment covers); the model's label ``i`` is class ``i + 1``.
- **Things:** the label ids in the config's ``thing_ids`` list when it has one. Otherwise, for a model with COCO
  panoptic's 133 labels, the first 80 (COCO lists its things first). Any other model needs a ``thing_ids`` entry
  in its config.json.
- **Segments:** each thing segment gets its own id. Stuff and void get 0, as in Panoptic Lifting's
  ``m2f_instance`` maps. Each stuff class is fused into one segment per image.
- **Confidence:** a segment's score, the class probability of its query. It is 0 on void, so void pixels do not
  train the semantic field.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from contrastive_lift_ns.data.scene_format import SceneClasses
from contrastive_lift_ns.segmenters import SegmenterError, Segments
from contrastive_lift_ns.segmenters._hub import load_pretrained, require_transformers

DEFAULT_MODEL = "facebook/mask2former-swin-large-coco-panoptic"
DEFAULT_THRESHOLD = 0.8
"""Mask2Former's own panoptic inference default for dropping low-scoring queries."""
_COCO_PANOPTIC_LABELS, _COCO_THINGS = 133, 80


class Mask2Former:
    """A panoptic Mask2Former from a hub name or a local folder (weights and preprocessor config)."""

    def __init__(self, model: Optional[str] = None, device: str = "cpu", score_threshold: Optional[float] = None):
        transformers = require_transformers("mask2former")
        name = model or DEFAULT_MODEL
        self._processor = load_pretrained(name, "mask2former", transformers.AutoImageProcessor.from_pretrained)
        network = load_pretrained(name, "mask2former", transformers.Mask2FormerForUniversalSegmentation.from_pretrained)
        self._model = network.to(device).eval()
        self._device = device
        self._threshold = DEFAULT_THRESHOLD if score_threshold is None else score_threshold
        labels = [network.config.id2label[i] for i in range(len(network.config.id2label))]
        self._is_thing = np.zeros(len(labels), dtype=bool)
        self._is_thing[_thing_labels(network.config.to_dict(), labels, name)] = True
        self.classes = SceneClasses(
            names=("void", *labels), thing_ids=tuple(int(i) + 1 for i in np.flatnonzero(self._is_thing)), void_id=0
        )

    def segment(self, images: Sequence[np.ndarray]) -> List[Segments]:
        import torch

        inputs = self._processor(images=list(images), return_tensors="pt").to(self._device)
        with torch.inference_mode():
            outputs = self._model(**inputs)
        results = self._processor.post_process_panoptic_segmentation(
            outputs,
            threshold=self._threshold,
            label_ids_to_fuse=set(np.flatnonzero(~self._is_thing).tolist()),
            target_sizes=[image.shape[:2] for image in images],
        )
        return [_panoptic_maps(r["segmentation"].cpu().numpy(), r["segments_info"], self._is_thing) for r in results]


def _panoptic_maps(segmentation: np.ndarray, segments_info: List[Dict[str, Any]], is_thing: np.ndarray) -> Segments:
    """Turns a panoptic result (segment ids, <= 0 where none; each segment's label_id and score) into the maps."""
    count = max([int(info["id"]) for info in segments_info], default=0) + 1
    label = np.zeros(count, dtype=np.int64)
    score = np.zeros(count, dtype=np.float32)
    thing = np.zeros(count, dtype=bool)
    for info in segments_info:
        label[info["id"]] = info["label_id"] + 1
        score[info["id"]] = info["score"]
        thing[info["id"]] = is_thing[info["label_id"]]
    ids = np.clip(segmentation.astype(np.int64), 0, None)  # -1 marks an image without any segment
    return Segments(
        ids=np.where(thing[ids], ids, 0),
        semantics=label[ids],
        confidence=np.clip(score[ids], 0.0, 1.0),
    )


def _thing_labels(config: Dict[str, Any], labels: List[str], name: str) -> List[int]:
    if "thing_ids" in config:
        things = config["thing_ids"]
        if not all(isinstance(t, int) and 0 <= t < len(labels) for t in things):
            raise SegmenterError(f"model '{name}': config 'thing_ids' must be label ids below {len(labels)}")
        return list(things)
    if len(labels) == _COCO_PANOPTIC_LABELS and labels[0] == "person":
        return list(range(_COCO_THINGS))
    raise SegmenterError(
        f"model '{name}': its config does not say which of its {len(labels)} classes are things; "
        'add "thing_ids": [label ids] to its config.json'
    )
