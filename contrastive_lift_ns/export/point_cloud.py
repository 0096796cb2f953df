"""Points with object ids, sampled from a trained field, and the map to the coordinates of the user's poses.

Points are rendered pixels of the training views (``random_pixels``: a view uniformly at random, then a pixel
of it). A ray becomes a point at its median depth (nerfstudio's ``depth``: a distance along the unit ray
direction) if its accumulation shows that it hit a surface and the point lies in the model's scene box;
Open3D's statistical outlier removal then drops stray depths. Each point keeps its colour, its semantic class,
its object id (``model.segment``: 0 for stuff) and the view it was sampled from.

A ray that grazes an object's silhouette renders a blend of its embedding and the surface behind, and can take
the object's id while its depth lies on that surface. Other views see the same spot head-on, so
``vote_labels`` gives each point the (class, id) held by most of its ``_VOTE_NEIGHBOURS`` nearest points.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import open3d as o3d
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from scipy import stats
from scipy.spatial import cKDTree
from torch import Tensor

from contrastive_lift_ns.data.pixel_sampler import random_pixels
from contrastive_lift_ns.model import ContrastiveLiftModel

_MIN_ACCUMULATION = 0.5  # below it a ray mostly sees empty space and its depth is a guess
_RENDERED = ("rgb", "depth", "accumulation", "semantic_logits", "instance_values")
_OUTLIER_NEIGHBOURS = 20
_OUTLIER_STD_RATIO = 2.0
_VOTE_NEIGHBOURS = 16
# nerfstudio's dataparser assumes this applied_transform for COLMAP scenes whose transforms.json lacks the key.
_COLMAP_APPLIED_TRANSFORM = [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0]]


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
    model: ContrastiveLiftModel,
    cameras: Cameras,
    num_rays: int,
    seed: int,
    crop: bool = True,
    on_chunk: Optional[Callable[[int], None]] = None,
) -> LabelledPoints:
    """Renders ``num_rays`` random pixels of the training ``cameras`` and keeps the surface points, in
    nerfstudio coordinates; ``on_chunk`` gets the size of each rendered chunk (for a progress bar).

    The model must have object ids (clustered, or linear-assignment); it is put in eval mode. ``crop`` drops
    points outside the scene box, i.e. the contracted background (sky, far walls) whose depth is unreliable.
    """
    model.eval()
    views, yx = random_pixels(cameras, num_rays, seed)
    rays = cameras.to(model.device).generate_rays(
        camera_indices=views[:, None].to(model.device), coords=yx.to(model.device)
    )
    model.camera_optimizer.apply_to_raybundle(rays)  # training pixels see through the learned pose corrections
    chunk = model.config.eval_num_rays_per_chunk
    outputs: Dict[str, List[Tensor]] = {key: [] for key in _RENDERED}
    for start in range(0, num_rays, chunk):
        rendered = model(rays[start : start + chunk])
        for key in _RENDERED:
            outputs[key].append(rendered[key])
        if on_chunk is not None:
            on_chunk(len(rendered["depth"]))
    rendered = {key: torch.cat(values) for key, values in outputs.items()}
    labels = model.segment(rendered["semantic_logits"], rendered["instance_values"])
    xyz = rays.origins + rays.directions * rendered["depth"]
    keep = rendered["accumulation"][:, 0] >= _MIN_ACCUMULATION
    if crop:
        aabb = model.scene_box.aabb.to(xyz)
        keep &= ((xyz >= aabb[0]) & (xyz <= aabb[1])).all(-1)
    columns = {
        "xyz": xyz.double(),
        "rgb": (rendered["rgb"].clamp(0, 1) * 255).round().to(torch.uint8),
        "instance": labels["instance_id"][:, 0].long(),
        "semantic_class": labels["semantic_class"][:, 0].long(),
        "view": rays.camera_indices[:, 0].long(),
    }
    return LabelledPoints(**{name: column[keep].cpu().numpy() for name, column in columns.items()})


def remove_outliers(points: LabelledPoints) -> LabelledPoints:
    """Drops points whose mean distance to their neighbours is unusually large (stray depths, floaters)."""
    if len(points) <= _OUTLIER_NEIGHBOURS:
        return points
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.xyz))
    _, kept = cloud.remove_statistical_outlier(nb_neighbors=_OUTLIER_NEIGHBOURS, std_ratio=_OUTLIER_STD_RATIO)
    return points.subset(np.sort(np.asarray(kept, dtype=np.int64)))


def vote_labels(points: LabelledPoints) -> LabelledPoints:
    """Gives each point the (semantic class, id) pair most common among its nearest points (itself included;
    ties go to the smaller class and id)."""
    if len(points) < _VOTE_NEIGHBOURS:
        return points
    pairs, label = np.unique(np.stack([points.semantic_class, points.instance], 1), axis=0, return_inverse=True)
    _, neighbours = cKDTree(points.xyz).query(points.xyz, k=_VOTE_NEIGHBOURS)
    voted = pairs[stats.mode(label.reshape(-1)[neighbours], axis=1, keepdims=False).mode]
    return replace(points, semantic_class=voted[:, 0], instance=voted[:, 1])


def nerfstudio_to_world(outputs: DataparserOutputs, meta: Dict[str, Any], data: Path) -> np.ndarray:
    """The 4×4 map from nerfstudio's normalised coordinates to those of the poses in transforms.json.

    nerfstudio maps a pose position x to ``dataparser_scale · dataparser_transform · [x; 1]``, except that
    both also fold in the scene's ``applied_transform`` and ``applied_scale`` (how some earlier capture's
    coordinates became the transforms.json ones). Those are taken out again, so the result is in the
    coordinates the user's poses are written in. ``data`` is the dataparser's data path.
    """
    transform = np.eye(4)
    transform[:3] = outputs.dataparser_transform.double().cpu().numpy()
    scale = float(outputs.dataparser_scale)
    applied = meta.get("applied_transform")
    if applied is None and (Path(data) / "colmap" / "sparse" / "0").exists():
        applied = _COLMAP_APPLIED_TRANSFORM
    if applied is not None:
        applied_4x4 = np.eye(4)
        applied_4x4[:3] = np.asarray(applied, dtype=np.float64)[:3]
        transform = transform @ np.linalg.inv(applied_4x4)
    scale /= float(meta.get("applied_scale", 1.0))
    return np.linalg.inv(transform) @ np.diag([1 / scale, 1 / scale, 1 / scale, 1.0])


def transform_points(matrix: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Applies a 4×4 affine map to (N, 3) points."""
    return xyz @ matrix[:3, :3].T + matrix[:3, 3]
