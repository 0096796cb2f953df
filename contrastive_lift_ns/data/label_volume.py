"""The label volume: the box where the capture's surfaces are, and how large a pixel is there.

The label fields must resolve objects a few pixels wide anywhere in a room, however large the room. nerfstudio
scales the poses into [-1, 1] and the scene field covers the contracted [-2, 2] cube, so a fixed grid gets
coarser as the room grows (at 500 objects the median object spans less than one cell of a 128³ grid). The
label fields instead cover this box, at a resolution set by the pixel footprint; what lies outside it gets the
coarse cells of the fields' contracted shell.

The box comes from the best evidence of where the surfaces are (labels are built before the scene trains):

- **Content points** (the capture's sparse points, or its depth maps back-projected; see the dataparser): the
  box spans their 1st–99th percentiles per axis, so a few stray points do not stretch it. A pixel's
  footprint is its camera's median depth of the points it sees over the focal length.
- **Cameras only.** A camera whose optical axis crosses those of many others at one consistent distance looks
  at that crossing (domes, arcs: the paper's captures); it sees in focus the part of its view frustum around
  that point, as deep as it is wide. Any other camera (forward-facing, walk-throughs, panoramas, rigs) may see
  content anywhere in its frustum up to the *parallax limit*: where the whole capture's spread shifts a point
  by less than one pixel, beyond which no reconstruction can place it and the shell's coarse cells do. A
  camera without a focus that sees the focus points of others looks at what they look at (orbits whose cameras
  aim at scattered points leave half of them without a consistent crossing). The
  box spans the 5th–95th percentiles of the cameras' boxes per axis, so a few stray frames do not stretch it.
  The footprint is at the crossing, or, without one, at the cameras' spread, the nearest content plausibly
  is (the grids then get as fine as their cap allows).

Cameras that all stand at one point have no scale (nerfstudio divides by their spread); they get the scene
box, as do all captures only when nothing else is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import SceneBox

_MIN_ANGLE_DEG = 30.0  # axes closer to parallel than this cross badly conditioned (far from where either looks)
_MAX_PAIRS = 50_000
_MIN_CROSSINGS = 5  # a camera with fewer crossings has no reliable focus
_FOCUS_SPREAD = 0.25  # a focus is consistent when the crossings' distances vary by less than this share (IQR)
_PARALLAX_PIXELS = 1.0
_FOCUS_RATIO = 2.0  # a camera with a focus sees in focus from half to twice its distance
_MIN_BORROWED = 3  # focus points of others a camera must see to look where they look
_INWARD_SHARE = 0.5  # when this share of the cameras has a focus, the capture looks inward: the rest are strays
_CAMERA_PERCENTILE = 5.0
_POINT_PERCENTILE = 1.0
_FOOTPRINT_POINTS = 4096


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


def label_volume(cameras: Cameras, scene_box: SceneBox, content: Optional[np.ndarray] = None) -> LabelVolume:
    """The box of the ``content`` points (N×3, normalised coordinates) if given, else the box the ``cameras`` see
    in focus; see the module docstring. ``scene_box`` serves cameras that all stand at one point."""
    c2w = cameras.camera_to_worlds.double().cpu().numpy()
    focal = 0.5 * (cameras.fx + cameras.fy).double().cpu().numpy().reshape(-1)
    # tan of the half field of view across and down each image
    slopes = np.stack(
        [
            (cameras.width / (2 * cameras.fx)).double().cpu().numpy().reshape(-1),
            (cameras.height / (2 * cameras.fy)).double().cpu().numpy().reshape(-1),
        ],
        -1,
    )
    origins = c2w[:, :3, 3]
    spread = float(np.sqrt(((origins - origins.mean(0)) ** 2).sum(-1).mean()))
    if len(origins) < 2 or spread <= 1e-9 * (1.0 + float(np.abs(origins).max())):
        aabb = scene_box.aabb.double().cpu().numpy()
        footprint = float(np.median(np.linalg.norm(aabb[1] - aabb[0]) / 2 / focal))
        return LabelVolume(_floats(aabb.mean(0)), _floats((aabb[1] - aabb[0]) / 2), footprint)
    if content is not None and len(content) > 0:
        volume = _content_volume(c2w, focal, slopes, np.asarray(content, dtype=np.float64))
        if volume is not None:
            return volume
    return _camera_volume(c2w, focal, slopes, spread)


def _content_volume(c2w: np.ndarray, focal: np.ndarray, slopes: np.ndarray, points: np.ndarray):
    """The box of the content points, with the footprint at the depth each camera sees them; None if no camera
    sees any of them."""
    points = points[np.isfinite(points).all(-1)]
    if len(points) == 0:
        return None
    low = np.percentile(points, _POINT_PERCENTILE, axis=0)
    high = np.percentile(points, 100.0 - _POINT_PERCENTILE, axis=0)
    sample = points[np.random.default_rng(0).permutation(len(points))[:_FOOTPRINT_POINTS]]
    footprints = []
    for pose, f, slope in zip(c2w, focal, slopes):
        local = (sample - pose[:3, 3]) @ pose[:3, :3]  # camera coordinates; OpenGL cameras look down -z
        depth = -local[:, 2]
        seen = (depth > 0) & (np.abs(local[:, :2]) <= slope * depth[:, None]).all(-1)
        if seen.any():
            footprints.append(np.median(depth[seen]) / f)
    if not footprints:
        return None
    # A flat or point-like cloud still gets a box a few pixels deep.
    half = np.maximum((high - low) / 2, 4.0 * float(np.median(footprints)))
    return LabelVolume(_floats((low + high) / 2), _floats(half), float(np.median(footprints)))


def _camera_volume(c2w: np.ndarray, focal: np.ndarray, slopes: np.ndarray, spread: float) -> LabelVolume:
    """The box of what each camera sees in focus: around its focus if it has one, else its frustum up to the
    parallax limit; robust percentiles over the cameras."""
    origins, axes = c2w[:, :3, 3], -c2w[:, :3, 2]
    focus, distance = _focus(origins, axes, slopes.max(-1))
    distance = _borrowed_focus(c2w, slopes, focus, distance)
    far = spread * np.median(focal) / _PARALLAX_PIXELS
    # An inward capture (most cameras have a focus): the few that still have none are left out like stray frames.
    inward = np.isfinite(distance).mean() >= _INWARD_SHARE
    lows, highs = [], []
    for c, pose in enumerate(c2w):
        if inward and not np.isfinite(distance[c]):
            continue
        focused = np.isfinite(distance[c])
        near, depth = (distance[c] / _FOCUS_RATIO, distance[c] * _FOCUS_RATIO) if focused else (0.0, far)
        corners = np.array([[x, y, -1.0] for x in (-1, 1) for y in (-1, 1)]) * np.append(slopes[c], 1.0)
        hull = origins[c] + np.concatenate([near * corners, depth * corners]) @ pose[:3, :3].T
        lows.append(hull.min(0))
        highs.append(hull.max(0))
    low = np.percentile(np.stack(lows), _CAMERA_PERCENTILE, axis=0)
    high = np.percentile(np.stack(highs), 100.0 - _CAMERA_PERCENTILE, axis=0)
    looked_at = np.where(np.isfinite(distance), distance, spread)
    footprint = float(np.median(looked_at / focal))
    return LabelVolume(_floats((low + high) / 2), _floats((high - low) / 2), footprint)


def _borrowed_focus(c2w: np.ndarray, slopes: np.ndarray, focus: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """A camera without a focus of its own that sees the focus points of at least ``_MIN_BORROWED`` others looks
    at what they look at: its distance is the median depth of those points in its view. In an orbit whose
    cameras aim at scattered points, half the cameras may lack a consistent crossing, and their frusta out to
    the parallax limit would otherwise stretch the box far beyond the room."""
    focused = np.isfinite(distance)
    points = focus[focused]
    borrowed = distance.copy()
    if len(points) < _MIN_CROSSINGS:
        return borrowed
    for c in np.flatnonzero(~focused):
        local = (points - c2w[c, :3, 3]) @ c2w[c, :3, :3]  # camera coordinates; OpenGL cameras look down -z
        depth = -local[:, 2]
        seen = (depth > 0) & (np.abs(local[:, :2]) <= slopes[c] * depth[:, None]).all(-1)
        if seen.sum() >= _MIN_BORROWED:
            borrowed[c] = float(np.median(depth[seen]))
    return borrowed


def _focus(origins: np.ndarray, axes: np.ndarray, view_slope: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per camera, the point it looks at and its distance along the axis (inf without a consistent focus).

    Pairs of optical axes that are not near-parallel pass closest at a point in front of both cameras; that point
    counts if it lies within both views (the two look at the same place). A camera has a focus if at least
    ``_MIN_CROSSINGS`` of its crossings lie at one distance (within ``_FOCUS_SPREAD``): cameras that nearly
    coincide, as in a panorama, cross each other just in front at scattered distances, which says nothing of
    where the content is.
    """
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
    close = np.linalg.norm(on_i - on_j, axis=-1) < np.minimum(s * view_slope[i], t * view_slope[j])
    owners = np.concatenate([i[close], j[close]])
    depths = np.concatenate([s[close], t[close]])
    focus, distance = np.zeros((count, 3)), np.full(count, np.inf)
    for c in np.unique(owners):
        mine = depths[owners == c]
        q25, median, q75 = np.percentile(mine, [25, 50, 75])
        if len(mine) >= _MIN_CROSSINGS and q75 - q25 <= _FOCUS_SPREAD * median:
            distance[c] = median
            focus[c] = origins[c] + median * axes[c]
    return focus, distance


def _floats(values: np.ndarray) -> Tuple[float, float, float]:
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def depth_points(cameras: Cameras, index: int, depth: np.ndarray, stride: int) -> np.ndarray:
    """Every ``stride``-th pixel of camera ``index``'s z-depth map (H×W, normalised units; 0 = no depth),
    back-projected to points in normalised coordinates."""
    camera = cameras[index]
    rows, cols = np.mgrid[stride // 2 : depth.shape[0] : stride, stride // 2 : depth.shape[1] : stride]
    z = depth[rows, cols]
    keep = np.isfinite(z) & (z > 0)
    x = (cols[keep] + 0.5 - float(camera.cx)) / float(camera.fx)
    y = (rows[keep] + 0.5 - float(camera.cy)) / float(camera.fy)
    local = np.stack([x, -y, -np.ones_like(x)], -1) * z[keep][:, None]  # OpenGL: y up, looking down -z
    pose = camera.camera_to_worlds.double().cpu().numpy()
    return local @ pose[:3, :3].T + pose[:3, 3]
