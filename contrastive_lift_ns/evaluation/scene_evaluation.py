"""Render every evaluation view once and score it: image metrics, PQ^scene, per-frame PQ, mIoU, and the 2D
segmenter's own PQ on the same views. Shared by ``cl-eval`` and ``ns-eval`` (through the pipeline)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

import numpy as np
import torch

from contrastive_lift_ns.data.scene_format import SceneClasses
from contrastive_lift_ns.evaluation.panoptic_quality import mean_iou, panoptic_quality, per_frame_panoptic_quality

if TYPE_CHECKING:
    from contrastive_lift_ns.pipeline import ContrastiveLiftPipeline

ViewCallback = Callable[[int, Dict[str, torch.Tensor], Dict[str, torch.Tensor]], None]


@dataclass
class _Maps:
    """Per-view integer maps of one labelling (prediction, ground truth or 2D segmenter)."""

    semantics: List[np.ndarray] = field(default_factory=list)
    instances: List[np.ndarray] = field(default_factory=list)

    def add(self, semantics: torch.Tensor, instances: torch.Tensor) -> None:
        self.semantics.append(semantics[..., 0].long().cpu().numpy())
        self.instances.append(instances[..., 0].long().cpu().numpy())


def missing_ground_truth(pipeline: "ContrastiveLiftPipeline") -> List[str]:
    """The per-frame ground-truth keys the evaluation views lack (``gt_semantics_path`` is optional)."""
    metadata = pipeline.datamanager.eval_dataset.metadata
    return [] if metadata.get("gt_instance_filenames") is not None else ["gt_instance_path"]


@torch.no_grad()
def evaluate(
    pipeline: "ContrastiveLiftPipeline", on_view: Optional[ViewCallback] = None, with_std: bool = False
) -> Dict[str, float]:
    """Renders each evaluation view once; returns mean image metrics (and their standard deviations with
    ``with_std``) plus, with ground truth, scene metrics.

    ``on_view(index, outputs, batch)`` sees every rendered view (``cl-eval`` writes them with it). A model that
    was never clustered is clustered first, so every view gets instance ids.
    """
    model = pipeline.model
    model.eval()
    if model.uses_clustering and not model.clusters.fitted:
        model.recluster()
    classes: SceneClasses = model.scene_classes
    has_ground_truth = not missing_ground_truth(pipeline)
    prediction, ground_truth, segmenter = _Maps(), _Maps(), _Maps()
    image_metrics: Dict[str, List[float]] = {}
    for index, (camera, batch) in enumerate(pipeline.datamanager.fixed_indices_eval_dataloader):
        outputs = model.get_outputs_for_camera(camera)
        for key, value in model.get_image_metrics_and_images(outputs, batch)[0].items():
            image_metrics.setdefault(key, []).append(float(value))
        if on_view is not None:
            on_view(index, outputs, batch)
        if has_ground_truth:
            prediction.add(outputs["semantic_class"], outputs["instance_id"])
            ground_truth.add(batch["gt_semantics"], batch["gt_instance"])
            segmenter.add(batch["semantics"], batch["segments"])
    metrics = {key: float(np.mean(values)) for key, values in image_metrics.items()}
    if with_std:
        metrics.update({f"{key}_std": float(np.std(values)) for key, values in image_metrics.items()})
    if has_ground_truth:
        metrics.update(_scene_metrics(prediction, ground_truth, segmenter, classes))
    return metrics


def _scene_metrics(prediction: _Maps, ground_truth: _Maps, segmenter: _Maps, classes: SceneClasses) -> Dict[str, float]:
    common = {"thing_classes": classes.thing_ids, "void_class": classes.void_id}
    gt = (ground_truth.semantics, ground_truth.instances)
    scene = panoptic_quality(
        np.stack(prediction.semantics), np.stack(prediction.instances), *map(np.stack, gt), **common
    )
    frame = per_frame_panoptic_quality(prediction.semantics, prediction.instances, *gt, **common)
    segmenter_scene = panoptic_quality(
        np.stack(segmenter.semantics), np.stack(segmenter.instances), *map(np.stack, gt), **common
    )
    segmenter_frame = per_frame_panoptic_quality(segmenter.semantics, segmenter.instances, *gt, **common)
    return {
        "pq_scene": scene.pq,
        "sq_scene": scene.sq,
        "rq_scene": scene.rq,
        "pq_frame": frame.pq,
        "miou": mean_iou(prediction.semantics, ground_truth.semantics, len(classes.names), classes.void_id),
        "segmenter_pq_frame": segmenter_frame.pq,
        "segmenter_pq_scene": segmenter_scene.pq,
        "num_objects_pred": _count_objects(prediction, classes),
        "num_objects_gt": _count_objects(ground_truth, classes),
    }


def _count_objects(maps: _Maps, classes: SceneClasses) -> int:
    """Distinct (thing class, id) pairs with an id, over all views."""
    semantics, instances = np.stack(maps.semantics), np.stack(maps.instances)
    thing = classes.is_thing[semantics] & (instances > 0)
    return len(np.unique(semantics[thing] * (int(instances.max()) + 1) + instances[thing]))
