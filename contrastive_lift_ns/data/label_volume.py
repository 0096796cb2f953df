"""The label volume: the region the cameras look at, and how large a pixel is there.

The label fields must resolve objects a few pixels wide anywhere in a room, however large the room. nerfstudio
scales the poses into [-1, 1] and the scene field covers the contracted [-2, 2] cube, so a fixed grid gets
coarser as the room grows (at 500 objects the median object spans less than one cell of a 128³ grid). The
label fields instead cover this volume, fitted to the cameras, at a resolution set by the pixel footprint.

Without geometry (labels are built before the scene is trained) the cameras are all there is:

- **Focus.** Every pair of cameras whose optical axes are not near-parallel has a point where the axes pass
  closest, in front of both; those points mark where the capture looks. Their median is the centre, their
  5th-95th percentiles per axis the core of the volume.
- **Margin.** A camera sees about ``distance · tan(fov / 2)`` around the point it looks at, so the core grows
  by the median of that half-width: an object at the edge of a view is inside.
- **Pixel footprint.** A pixel at the focus distance covers ``distance / focal length`` in world units; the
  median over the cameras sets the finest cell of the label grids (see ``LabelFieldConfig.cell_pixels``).

Captures whose axes never cross (all cameras parallel, one camera) fall back to the scene box, with the
distance to its centre for the footprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import SceneBox

_MIN_ANGLE_DEG = 30.0  # axes closer to parallel than this cross badly conditioned (far from where either looks)
_MAX_PAIRS = 50_000
_MIN_FOCUS_POINTS = 10


@dataclass(frozen=True)
class LabelVolume:
    """An axis-aligned box (in nerfstudio's normalised coordinates) and the world size of a pixel in it."""

    center: Tuple[float, float, float]
    """Centre of the box."""
    half_extent: Tuple[float, float, float]
    """Half of the box's side along x, y and z."""
    pixel_footprint: float
    """World size of one pixel at the distance the cameras look at (median over the cameras)."""

    def cells(self, length: float, cell_pixels: float) -> float:
        """How many cells ``cell_pixels`` pixels wide (at the distance the cameras look at) span ``length`` world
        units: the one rule by which every grid's resolution follows the scene."""
        return length / (cell_pixels * self.pixel_footprint)


def label_volume(cameras: Cameras, scene_box: SceneBox) -> LabelVolume:
    """The volume the ``cameras`` look at; see the module docstring."""
    c2w = cameras.camera_to_worlds.double().cpu().numpy()
    origins, axes = c2w[:, :3, 3], -c2w[:, :3, 2]  # OpenGL cameras look down -z
    focal = 0.5 * (cameras.fx + cameras.fy).double().cpu().numpy().reshape(-1)
    size = torch.maximum(cameras.width, cameras.height).double().cpu().numpy().reshape(-1)
    view_slope = size / (2 * focal)  # tan(fov / 2) of the wider image side
    crossings, depth_i, depth_j, pair_i, pair_j = _axis_crossings(origins, axes, view_slope)
    if len(crossings) < _MIN_FOCUS_POINTS:  # the axes never meet: the scene box, at its distance
        aabb = scene_box.aabb.double().cpu().numpy()
        center = aabb.mean(0)
        footprint = np.median(np.linalg.norm(origins - center, axis=-1) / focal)
        return LabelVolume(_floats(center), _floats((aabb[1] - aabb[0]) / 2), float(footprint))
    owners = np.concatenate([pair_i, pair_j])
    crossings, depths = np.concatenate([crossings, crossings]), np.concatenate([depth_i, depth_j])
    seen = np.unique(owners)
    # Each camera looks at the median of its crossings, at the median of their distances.
    looked_at = np.stack([np.median(crossings[owners == c], 0) for c in seen])
    distance = np.array([np.median(depths[owners == c]) for c in seen])
    center = np.median(looked_at, 0)
    half_extent = np.abs(looked_at - center).max(0) + np.median(distance * view_slope[seen])
    return LabelVolume(_floats(center), _floats(half_extent), float(np.median(distance / focal[seen])))


def _axis_crossings(origins: np.ndarray, axes: np.ndarray, view_slope: np.ndarray):
    """Midpoints of the closest approach of pairs of optical axes that meet in front of both cameras, within
    the half-width of both views there (the two cameras look at the same place); with each camera's distance
    along its axis and the pair's camera indices."""
    count = len(origins)
    i, j = np.triu_indices(count, k=1)
    if len(i) > _MAX_PAIRS:
        pick = np.random.default_rng(0).choice(len(i), _MAX_PAIRS, replace=False)
        i, j = i[pick], j[pick]
    d_i, d_j = axes[i], axes[j]
    w = origins[i] - origins[j]
    b = (d_i * d_j).sum(-1)
    d, e = (d_i * w).sum(-1), (d_j * w).sum(-1)
    denominator = 1.0 - b**2  # axes are unit vectors
    usable = denominator > np.sin(np.radians(_MIN_ANGLE_DEG)) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (b * e - d) / denominator
        t = (e - b * d) / denominator
    usable &= (s > 0) & (t > 0)
    s, t, i, j = s[usable], t[usable], i[usable], j[usable]
    on_i, on_j = origins[i] + s[:, None] * axes[i], origins[j] + t[:, None] * axes[j]
    gap = np.linalg.norm(on_i - on_j, axis=-1)
    close = gap < np.minimum(s * view_slope[i], t * view_slope[j])
    return 0.5 * (on_i + on_j)[close], s[close], t[close], i[close], j[close]


def _floats(values: np.ndarray) -> Tuple[float, float, float]:
    return tuple(float(v) for v in values)  # type: ignore[return-value]
