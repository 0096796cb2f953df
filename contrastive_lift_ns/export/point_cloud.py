"""Points with object ids, sampled from a trained field.

Points are rendered pixels of the training views (``ContrastiveLiftDataManager.training_pixels``: a view
uniformly at random, then a pixel of it). A ray becomes a point at its median depth (nerfstudio's ``depth``: a
distance along the unit ray direction) if its accumulation shows that it hit a surface and the point lies in
the model's scene box; a statistical outlier removal then drops stray depths. Each point keeps its colour, its
semantic class, its object id (``model.label_images``: 0 for stuff) and the view it was sampled from.

A ray that grazes an object's silhouette renders a blend of its embedding and the surface behind, and can take
the object's id while its depth lies on that surface. Other views see the same spot head-on, so
``vote_labels`` gives each point the (class, id) held by most of its ``_VOTE_NEIGHBOURS`` nearest points.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from nerfstudio.cameras.rays import RayBundle
from scipy import stats
from scipy.spatial import cKDTree
from torch import Tensor

from contrastive_lift_ns.keys import Output
from contrastive_lift_ns.model import ContrastiveLiftModel, surface_points

_MIN_ACCUMULATION = 0.5  # below it a ray mostly sees empty space and its depth is a guess
_OUTLIER_NEIGHBOURS = 20
_OUTLIER_STD_RATIO = 2.0
_VOTE_NEIGHBOURS = 16
_CHUNKS_PER_UPDATE = 8  # progress is reported every few render chunks


@dataclass
class LabelledPoints:
    """One row per point."""

    xyz: np.ndarray
    """(N, 3) float64 positions."""
    rgb: np.ndarray
    """(N, 3) uint8 rendered colours."""
    instance: np.ndarray
    """(N,) int64 object ids; 0: no object."""
    semantic_class: np.ndarray
    """(N,) int64 semantic classes."""
    view: np.ndarray
    """(N,) int64 index of the training view each point was sampled from."""

    def __len__(self) -> int:
        return len(self.xyz)

    def subset(self, index: np.ndarray) -> "LabelledPoints":
        """The points selected by a boolean mask or an index array."""
        return LabelledPoints(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


@torch.no_grad()
def sample_points(
    model: ContrastiveLiftModel, rays: RayBundle, crop: bool = True, on_chunk: Optional[Callable[[int], None]] = None
) -> LabelledPoints:
    """Renders ``rays`` (pixels of training views) and keeps the surface points, in nerfstudio coordinates;
    ``on_chunk`` gets the number of rays of each rendered chunk (for a progress bar).

    The model must have object ids (clustered, or linear-assignment). ``crop`` drops points outside the scene
    box, i.e. the contracted background (sky, far walls) whose depth is unreliable.
    """
    model.camera_optimizer.apply_to_raybundle(rays)  # training pixels see through the learned pose corrections
    step = _CHUNKS_PER_UPDATE * model.config.eval_num_rays_per_chunk
    chunks: List[Dict[str, Tensor]] = []
    for start in range(0, len(rays), step):
        chunks.append(model.render_rays(rays[start : start + step]))
        if on_chunk is not None:
            on_chunk(len(chunks[-1]["depth"]))
    rendered = {key: torch.cat([c[key] for c in chunks]) for key in chunks[0]}
    labels = model.label_images(
        rendered[Output.SEMANTIC_LOGITS], rendered[model.instance_output], surface_points(rays, rendered)
    )
    xyz = rays.origins + rays.directions * rendered["depth"]
    keep = rendered["accumulation"][:, 0] >= _MIN_ACCUMULATION
    if crop:
        aabb = model.scene_box.aabb.to(xyz)
        keep &= ((xyz >= aabb[0]) & (xyz <= aabb[1])).all(-1)
    columns = {
        "xyz": xyz.double(),
        "rgb": (rendered["rgb"].clamp(0, 1) * 255).round().to(torch.uint8),
        "instance": labels[Output.INSTANCE_ID][:, 0].long(),
        "semantic_class": labels[Output.SEMANTIC_CLASS][:, 0].long(),
        "view": rays.camera_indices[:, 0].long(),
    }
    return LabelledPoints(**{name: column[keep].cpu().numpy() for name, column in columns.items()})


def remove_outliers(points: LabelledPoints) -> LabelledPoints:
    """Drops points whose mean distance to their ``_OUTLIER_NEIGHBOURS`` nearest points exceeds the mean of that
    distance over all points by more than ``_OUTLIER_STD_RATIO`` standard deviations (stray depths, floaters)."""
    if len(points) <= _OUTLIER_NEIGHBOURS:
        return points
    distances, _ = cKDTree(points.xyz).query(points.xyz, k=_OUTLIER_NEIGHBOURS + 1)  # the first is the point
    spread = distances[:, 1:].mean(1)
    return points.subset(spread <= spread.mean() + _OUTLIER_STD_RATIO * spread.std())


def vote_labels(points: LabelledPoints) -> LabelledPoints:
    """Gives each point the (semantic class, id) pair most common among its nearest points (itself included;
    ties go to the smaller class and id)."""
    if len(points) < _VOTE_NEIGHBOURS:
        return points
    pairs, label = np.unique(np.stack([points.semantic_class, points.instance], 1), axis=0, return_inverse=True)
    _, neighbours = cKDTree(points.xyz).query(points.xyz, k=_VOTE_NEIGHBOURS)
    voted = pairs[stats.mode(label.reshape(-1)[neighbours], axis=1, keepdims=False).mode]
    return replace(points, semantic_class=voted[:, 0], instance=voted[:, 1])


def transform_points(matrix: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Applies a 4×4 affine map to (N, 3) points."""
    return xyz @ matrix[:3, :3].T + matrix[:3, 3]
