"""Render every evaluation view once and score it: image metrics, PQ^scene, per-frame PQ, mIoU, and the 2D
segmenter's own PQ on the same views. Shared by ``cl-eval`` and ``ns-eval`` (through the pipeline).

The headline PQ figures use the strict class filter (a class the prediction misses scores 0); the authors'
literal filter, which drops such a class, is reported beside them under ``*_authors_filter`` keys with the
classes it dropped (see ``panoptic_quality``).

With or without ground truth, the multi-view consistency of the lifted instances and of the 2D segments is
measured on overlapping pairs of the rendered views (``consistency``): how often two pixels that see the same
surface point (by the rendered depth, occlusion-checked) carry the same instance id. The 2D segments' ids are
arbitrary per view, so they are first matched one-to-one per pair, their best case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras

from contrastive_lift_ns.data.scene_format import SceneClasses
from contrastive_lift_ns.evaluation.consistency import View, multiview_consistency, overlapping_pairs
from contrastive_lift_ns.evaluation.panoptic_quality import mean_iou, panoptic_quality, per_frame_panoptic_quality
from contrastive_lift_ns.keys import Batch, Output

if TYPE_CHECKING:
    from nerfstudio.pipelines.base_pipeline import VanillaPipeline

ViewCallback = Callable[[int, Dict[str, torch.Tensor], Dict[str, torch.Tensor]], None]


_SURFACE = 0.5  # least accumulation for a pixel to count as seeing a surface
_PAIRS_PER_VIEW = 3
_MIN_OVERLAP = 0.2


@dataclass
class _Maps:
    """Per-view integer maps of one labelling (prediction, ground truth or 2D segmenter)."""

    semantics: List[np.ndarray] = field(default_factory=list)
    instances: List[np.ndarray] = field(default_factory=list)

    def add(self, semantics: torch.Tensor, instances: torch.Tensor) -> None:
        self.semantics.append(semantics[..., 0].long().cpu().numpy())
        self.instances.append(instances[..., 0].long().cpu().numpy())


def missing_ground_truth(pipeline: "VanillaPipeline") -> List[str]:
    """The per-frame ground-truth keys the evaluation views lack (``gt_semantics_path`` is optional)."""
    metadata = pipeline.datamanager.eval_dataset.metadata
    return [] if metadata.get("gt_instance_filenames") is not None else ["gt_instance_path"]


@torch.no_grad()
def evaluate(
    pipeline: "VanillaPipeline", on_view: Optional[ViewCallback] = None, with_std: bool = False
) -> Dict[str, float]:
    """Renders each evaluation view once; returns mean image metrics (and their standard deviations with
    ``with_std``) plus, with ground truth, scene metrics.

    ``on_view(index, outputs, batch)`` sees every rendered view (``cl-eval`` writes them with it). The model
    must have object ids (``ContrastiveLiftModel.objects_unavailable``): evaluation does not cluster it.
    """
    model = pipeline.model
    if model.uses_clustering and not model.clusters.fitted:
        raise ValueError("the model was never clustered into objects, so its views have no instance ids")
    model.eval()
    classes: SceneClasses = model.scene_classes
    has_ground_truth = not missing_ground_truth(pipeline)
    prediction, ground_truth, segmenter = _Maps(), _Maps(), _Maps()
    views: List[View] = []
    image_metrics: Dict[str, List[float]] = {}
    for index, (camera, batch) in enumerate(pipeline.datamanager.fixed_indices_eval_dataloader):
        outputs = model.get_outputs_for_camera(camera)
        for key, value in model.get_image_metrics_and_images(outputs, batch)[0].items():
            image_metrics.setdefault(key, []).append(float(value))
        if on_view is not None:
            on_view(index, outputs, batch)
        prediction.add(outputs[Output.SEMANTIC_CLASS], outputs[Output.INSTANCE_ID])
        segmenter.add(batch[Batch.SEMANTICS], batch[Batch.SEGMENTS])
        views.append(_view(camera, outputs))
        if has_ground_truth:
            ground_truth.add(batch[Batch.GT_SEMANTICS], batch[Batch.GT_INSTANCE])
    metrics: Dict[str, Any] = {key: float(np.mean(values)) for key, values in image_metrics.items()}
    if with_std:
        metrics.update({f"{key}_std": float(np.std(values)) for key, values in image_metrics.items()})
    metrics.update(_consistency(views, prediction, segmenter))
    metrics["num_objects_pred"] = _count_objects(prediction, classes)
    if has_ground_truth:
        metrics.update(_scene_metrics(prediction, ground_truth, segmenter, classes))
    return metrics


def _view(camera: Cameras, outputs: Dict[str, torch.Tensor]) -> View:
    """A rendered view for the consistency score: each pixel's surface point (NaN where it sees none)."""
    rays = camera.generate_rays(camera_indices=0, keep_shape=True)
    points = (rays.origins + rays.directions * outputs["depth"]).cpu().numpy()
    points[outputs["accumulation"][..., 0].cpu().numpy() < _SURFACE] = np.nan
    return View(
        points=points,
        camera_to_world=camera.camera_to_worlds[0].cpu().numpy(),
        fx=float(camera.fx[0]),
        fy=float(camera.fy[0]),
        cx=float(camera.cx[0]),
        cy=float(camera.cy[0]),
        width=int(camera.width[0]),
        height=int(camera.height[0]),
        distortion=None if camera.distortion_params is None else camera.distortion_params[0].cpu().numpy(),
    )


def _consistency(views: List[View], prediction: _Maps, segmenter: _Maps) -> Dict[str, Any]:
    """Multi-view consistency of the lifted instances and, matched per pair, of the 2D segments."""
    pairs = overlapping_pairs(views, per_view=_PAIRS_PER_VIEW, min_overlap=_MIN_OVERLAP)
    lifted = multiview_consistency(views, prediction.instances, pairs, match=False)
    segments = multiview_consistency(views, segmenter.instances, pairs, match=True)
    return {
        "consistency": lifted.score,
        "segmenter_consistency": segments.score,
        "consistency_pairs": len(pairs),
        "consistency_correspondences": lifted.num_correspondences,
    }


def _scene_metrics(prediction: _Maps, ground_truth: _Maps, segmenter: _Maps, classes: SceneClasses) -> Dict[str, Any]:
    common = {"thing_classes": classes.thing_ids, "void_class": classes.void_id}
    gt = (ground_truth.semantics, ground_truth.instances)
    stacked_gt = tuple(map(np.stack, gt))
    scene = panoptic_quality(np.stack(prediction.semantics), np.stack(prediction.instances), *stacked_gt, **common)
    authors = panoptic_quality(
        np.stack(prediction.semantics), np.stack(prediction.instances), *stacked_gt, **common, class_filter="authors"
    )
    frame = per_frame_panoptic_quality(prediction.semantics, prediction.instances, *gt, **common)
    segmenter_scene = panoptic_quality(
        np.stack(segmenter.semantics), np.stack(segmenter.instances), *stacked_gt, **common
    )
    segmenter_frame = per_frame_panoptic_quality(segmenter.semantics, segmenter.instances, *gt, **common)
    metrics = {
        "pq_scene": scene.pq,
        "sq_scene": scene.sq,
        "rq_scene": scene.rq,
        "pq_scene_authors_filter": authors.pq,
        "dropped_classes_authors_filter": [classes.names[c] for c in authors.dropped_classes],
        "pq_frame": frame.pq,
        "miou": mean_iou(prediction.semantics, ground_truth.semantics, len(classes.names), classes.void_id),
        "segmenter_pq_frame": segmenter_frame.pq,
        "segmenter_pq_scene": segmenter_scene.pq,
        "num_objects_gt": _count_objects(ground_truth, classes),
        # Objects, not ids: a split or a stray id adds predicted ids but no match.
        "num_objects_matched": scene.num_matched_segments,
    }
    thing_pq = [q.pq for c, q in scene.per_class.items() if c in classes.thing_ids]
    metrics["pq_scene_things"] = float(np.mean(thing_pq)) if thing_pq else float("nan")
    return metrics


def _count_objects(maps: _Maps, classes: SceneClasses) -> int:
    """Distinct (thing class, id) pairs with an id, over all views."""
    semantics, instances = np.stack(maps.semantics), np.stack(maps.instances)
    thing = classes.is_thing[semantics] & (instances > 0)
    return len(np.unique(semantics[thing] * (int(instances.max()) + 1) + instances[thing]))
