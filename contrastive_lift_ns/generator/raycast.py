"""Vectorised ray casting of a :class:`MessyRoom`: RGB, z-depth and ground-truth instance maps per view.

Rays are never tested against every object. Each object's bounding sphere is projected to a screen
rectangle, off-screen objects are culled, and only the rays inside a rectangle are intersected with its
object: analytically for spheres, boxes and cylinders, by sphere tracing for the torus. The nearest hit per
pixel wins. The same caster, with orthographic rays, makes two maps once per scene: a shadow map seen from
the sun and a top-down occupancy map whose blur darkens the floor around objects (contact occlusion).
Shading is diffuse: sun (shadowed by the objects) plus a sky ambient term; the dome is emissive. Walls, when
the room has them, are the sides of a box around the rug, intersected analytically. RGB averages 2×2 rays
per pixel; depth and ids come from the ray through the pixel centre, the one nerfstudio casts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

import numpy as np
from scipy.ndimage import gaussian_filter

from contrastive_lift_ns.generator.room import BOX, CYLINDER, SPHERE, TORUS, MessyRoom, SceneObjects, Walls

_SUN = np.array([1.0, 0.95, 0.86]) * 2.3
_SKY = np.array([0.55, 0.62, 0.75]) * 0.75
_GAMMA = 2.2
_SHADOW_TEXEL = 0.005
_OCCUPANCY_TEXEL = 0.01
_OCCUPANCY_BLUR = 0.04
_MAX_MAP = 2048
_TORUS_STEPS = 40
_TORUS_TOLERANCE = 2e-4  # metres
# RGB rays per pixel along each axis.
_SUPERSAMPLE = 2
_EPS = 1e-6
# What a ray hits first.
OBJECT, FLOOR, WALL, SKY = range(4)


@dataclass(frozen=True)
class View:
    """One rendered view."""

    rgb: np.ndarray
    """(H, W, 3) uint8 sRGB."""
    depth: np.ndarray
    """(H, W) float32 z-depth along the camera axis in metres."""
    instance: np.ndarray
    """(H, W) int32 ground-truth instance ids (object i has id i + 1), 0 = background."""
    unoccluded: np.ndarray
    """(N + 1,) pixels each object would cover in this view if nothing occluded it (index = id)."""


class Renderer:
    """Renders the views of one room; builds the shadow and occupancy maps once."""

    def __init__(self, room: MessyRoom) -> None:
        self.room = room
        self._shadow = _OrthoMap.cast(room.objects, room.light_direction, _SHADOW_TEXEL)
        top = _OrthoMap.cast(room.objects, np.array([0.0, 0.0, 1.0]), _OCCUPANCY_TEXEL, 3 * _OCCUPANCY_BLUR)
        blurred = gaussian_filter(np.isfinite(top.values).astype(np.float64), _OCCUPANCY_BLUR / top.texel)
        self._occupancy = top.with_values(blurred)

    def render(self, index: int) -> View:
        """Renders camera ``index`` of the room."""
        cams = self.room.cameras
        c2w = cams.camera_to_world[index]
        rot, origin, size = c2w[:3, :3], c2w[:3, 3], cams.resolution
        # Depth and ids come from the ray through each pixel's centre, as nerfstudio casts them.
        directions, length = _pixel_rays(rot, cams.focal, size)
        t_hit, ids, _, unoccluded = self._trace(origin, rot, directions, cams.focal, size)
        # RGB averages a grid of rays per pixel (anti-aliasing, like a real sensor).
        fine, fine_focal = size * _SUPERSAMPLE, cams.focal * _SUPERSAMPLE
        sub_directions, _ = _pixel_rays(rot, fine_focal, fine)
        t_sub, ids_sub, surface_sub, _ = self._trace(origin, rot, sub_directions, fine_focal, fine)
        radiance = self._shade(origin, sub_directions, t_sub, ids_sub, surface_sub)
        radiance = radiance.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean((1, 3))
        return View(
            rgb=np.round(np.clip(radiance, 0.0, 1.0) ** (1 / _GAMMA) * 255).astype(np.uint8),
            depth=(t_hit / length).astype(np.float32).reshape(size, size),
            instance=ids.astype(np.int32).reshape(size, size),
            unoccluded=unoccluded,
        )

    def _trace(self, origin: np.ndarray, rot: np.ndarray, directions: np.ndarray, focal: float, size: int):
        """First hits of a camera's rays: t, object ids (0 = none), the surface kind hit (OBJECT, FLOOR, WALL or
        SKY), unoccluded pixels per id."""
        objects = self.room.objects
        pix, obj = _candidates(*_screen_bounds(objects, rot, origin, focal, size), size)
        t = _intersect(objects, obj, np.broadcast_to(origin, (len(obj), 3)), directions[pix])
        t_obj, ids, unoccluded = _nearest(pix, obj, t, size * size, len(objects))
        t_floor = np.where(directions[:, 2] < -_EPS, -origin[2] / np.minimum(directions[:, 2], -_EPS), np.inf)
        b = directions @ origin
        t_dome = -b + np.sqrt(np.maximum(b * b - (origin @ origin - self.room.dome_radius**2), 0.0))
        t_far = np.minimum(t_floor, t_dome)
        surface = np.where(ids > 0, OBJECT, np.where(t_floor <= t_dome, FLOOR, SKY))
        if self.room.walls is not None:
            t_wall = _hit_walls(self.room.walls, origin, directions)
            surface = np.where((ids == 0) & (t_wall < t_far), WALL, surface)
            t_far = np.minimum(t_far, t_wall)
        return np.where(ids > 0, t_obj, t_far), ids, surface, unoccluded

    def _shade(self, origin: np.ndarray, directions: np.ndarray, t: np.ndarray, ids: np.ndarray, surface: np.ndarray):
        """Linear radiance (n, 3) of the rays' first hits."""
        room, objects = self.room, self.room.objects
        points = origin + directions * t[:, None]
        on_object, on_floor, on_wall = surface == OBJECT, surface == FLOOR, surface == WALL
        lit = surface != SKY
        albedo = np.empty((len(t), 3))
        normal = np.zeros((len(t), 3))
        normal[on_floor, 2] = 1.0
        albedo[on_floor] = room.floor_albedo(points[on_floor])
        if on_wall.any():
            wall = points[on_wall]
            on_x_wall = np.abs(wall[:, 0]) >= np.abs(wall[:, 1])
            normal[on_wall, 0] = np.where(on_x_wall, -np.sign(wall[:, 0]), 0.0)  # facing inward
            normal[on_wall, 1] = np.where(on_x_wall, 0.0, -np.sign(wall[:, 1]))
            albedo[on_wall] = room.wall_albedo(wall)
        k = ids[on_object] - 1
        local = np.einsum("pji,pj->pi", objects.rotation[k], points[on_object] - objects.center[k])
        albedo[on_object] = room.object_albedo(ids[on_object], local)
        normal[on_object] = _normals(objects, k, local)

        radiance = np.empty((len(t), 3))
        radiance[~lit] = room.sky_color(points[~lit]) ** _GAMMA
        p, n = points[lit], normal[lit]
        sun = np.clip(n @ room.light_direction, 0.0, None) * self._shadow.lit_fraction(p, n)
        ambient = (0.6 + 0.4 * n[:, 2]) * (1.0 - 0.6 * self._occupancy.sample(p) * on_floor[lit])
        radiance[lit] = np.clip(albedo[lit], 0.0, 1.0) ** _GAMMA * (sun[:, None] * _SUN + ambient[:, None] * _SKY)
        return radiance


@dataclass(frozen=True)
class _OrthoMap:
    """A grid of orthographic rays along ``forward``; ``values`` is first-hit depth (inf = no object) or a
    quantity derived from it."""

    right: np.ndarray
    up: np.ndarray
    forward: np.ndarray
    corner: Tuple[float, float, float]
    """(u, v, w) of the grid's lower-left edge and of the ray origins' plane."""
    texel: float
    values: np.ndarray

    @classmethod
    def cast(cls, objects: SceneObjects, toward: np.ndarray, texel: float, margin: float = 0.0) -> "_OrthoMap":
        forward = -toward / np.linalg.norm(toward)
        right = np.cross(forward, [0.0, 1.0, 0.0] if abs(forward[2]) > 0.9 else [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        frame = np.stack([right, up, forward], 1)
        c, r = objects.center @ frame, objects.radius
        lo, hi = (c - r[:, None]).min(0) - margin, (c + r[:, None]).max(0) + margin
        texel = max(texel, float((hi[:2] - lo[:2]).max()) / _MAX_MAP)
        width, height = (np.ceil((hi[:2] - lo[:2]) / texel).astype(int) + 1).tolist()
        w0 = lo[2] - 1.0
        x_lo = np.ceil((c[:, 0] - r - lo[0]) / texel - 0.5).astype(int)
        x_hi = np.floor((c[:, 0] + r - lo[0]) / texel - 0.5).astype(int)
        y_lo = np.ceil((c[:, 1] - r - lo[1]) / texel - 0.5).astype(int)
        y_hi = np.floor((c[:, 1] + r - lo[1]) / texel - 0.5).astype(int)
        bounds = [np.clip(b, 0, n - 1) for b, n in ((x_lo, width), (x_hi, width), (y_lo, height), (y_hi, height))]
        pix, obj = _candidates(*bounds, np.arange(len(objects)), width)
        u = lo[0] + (pix % width + 0.5) * texel
        v = lo[1] + (pix // width + 0.5) * texel
        origins = u[:, None] * right + v[:, None] * up + w0 * forward
        t = _intersect(objects, obj, origins, np.broadcast_to(forward, origins.shape))
        depth, _, _ = _nearest(pix, obj, t, width * height, len(objects))
        return cls(right, up, forward, (lo[0], lo[1], w0), texel, (depth + w0).reshape(height, width))

    def with_values(self, values: np.ndarray) -> "_OrthoMap":
        return _OrthoMap(self.right, self.up, self.forward, self.corner, self.texel, values)

    def _taps(self, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat indices, bilinear weights and in-grid flags of the 4 texels around each point, shape (4, n)."""
        height, width = self.values.shape
        u = (points @ self.right - self.corner[0]) / self.texel - 0.5
        v = (points @ self.up - self.corner[1]) / self.texel - 0.5
        x0, y0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        fx, fy = u - x0, v - y0
        xs, ys = np.stack([x0, x0 + 1, x0, x0 + 1]), np.stack([y0, y0, y0 + 1, y0 + 1])
        weights = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
        inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
        index = np.clip(ys, 0, height - 1) * width + np.clip(xs, 0, width - 1)
        return index, weights, inside

    def sample(self, points: np.ndarray) -> np.ndarray:
        """Bilinear lookup of ``values`` (0 outside the grid)."""
        index, weights, inside = self._taps(points)
        return (weights * np.where(inside, self.values.ravel()[index], 0.0)).sum(0)

    def lit_fraction(self, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """Percentage-closer shadow test: the fraction of the 4 nearest texels that see the point."""
        # Offsetting along the normal avoids self-shadowing acne on curved surfaces.
        points = points + normals * (1.5 * self.texel)
        index, weights, inside = self._taps(points)
        depth = points @ self.forward
        blocker = np.where(inside, self.values.ravel()[index], np.inf)
        return (weights * (depth <= blocker + 2.0 * self.texel)).sum(0)


def _pixel_rays(rot: np.ndarray, focal: float, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Unit world directions (size², 3) through the pixel centres, and their length before normalising
    (z-depth = t / length)."""
    coords = (np.arange(size) + 0.5 - size / 2) / focal
    x, y = np.meshgrid(coords, -coords)
    length = np.sqrt(x * x + y * y + 1.0).ravel()
    directions = (x.ravel()[:, None] * rot[:, 0] + y.ravel()[:, None] * rot[:, 1] - rot[:, 2]) / length[:, None]
    return directions, length


def _screen_bounds(objects: SceneObjects, rot: np.ndarray, origin: np.ndarray, focal: float, size: int):
    """Inclusive pixel rectangles (x_lo, x_hi, y_lo, y_hi, ids) of the on-screen objects' bounding spheres."""
    cam = (objects.center - origin) @ rot
    x, y, z, r = cam[:, 0], cam[:, 1], -cam[:, 2], objects.radius
    ahead = z > r + _EPS
    straddles = ~ahead & (z > -r)

    def tangent_slopes(a: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        # Slopes s of the two lines a = s z through the eye that touch the circle of radius r around (a, z).
        denom = np.where(ahead, z * z - r * r, 1.0)
        root = np.sqrt(np.maximum(a * a + z * z - r * r, 0.0))
        return (a * z - r * root) / denom, (a * z + r * root) / denom

    sx_lo, sx_hi = tangent_slopes(x)
    sy_lo, sy_hi = tangent_slopes(y)
    c = size / 2 - 0.5  # pixel i's centre sits at i + 0.5
    x_lo = np.where(ahead, np.ceil(c + focal * sx_lo), 0)
    x_hi = np.where(ahead, np.floor(c + focal * sx_hi), size - 1)
    y_lo = np.where(ahead, np.ceil(c - focal * sy_hi), 0)
    y_hi = np.where(ahead, np.floor(c - focal * sy_lo), size - 1)
    keep = (ahead | straddles) & (x_hi >= 0) & (x_lo <= size - 1) & (y_hi >= 0) & (y_lo <= size - 1)
    rectangles = [np.clip(a[keep], 0, size - 1).astype(np.int64) for a in (x_lo, x_hi, y_lo, y_hi)]
    return (*rectangles, np.flatnonzero(keep))


def _candidates(
    x_lo: np.ndarray, x_hi: np.ndarray, y_lo: np.ndarray, y_hi: np.ndarray, ids: np.ndarray, width: int
) -> Tuple[np.ndarray, np.ndarray]:
    """All (pixel, object) pairs of the inclusive rectangles, as flat pixel indices and object indices."""
    w, h = np.maximum(x_hi - x_lo + 1, 0), np.maximum(y_hi - y_lo + 1, 0)
    counts = w * h
    which = np.repeat(np.arange(len(ids)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    px = x_lo[which] + offset % w[which]
    py = y_lo[which] + offset // w[which]
    return py * width + px, ids[which]


def _intersect(objects: SceneObjects, obj: np.ndarray, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Ray parameter of the first hit of each (ray, object) pair; inf where the ray misses."""
    rotation = objects.rotation[obj]
    o = np.einsum("pji,pj->pi", rotation, origins - objects.center[obj])
    d = np.einsum("pji,pj->pi", rotation, directions)
    t = np.full(len(obj), np.inf)
    kernels: Tuple[Tuple[int, Callable], ...] = (
        (SPHERE, _hit_sphere),
        (BOX, _hit_box),
        (CYLINDER, _hit_cylinder),
        (TORUS, _hit_torus),
    )
    shape = objects.shape[obj]
    for kind, kernel in kernels:
        m = shape == kind
        if m.any():
            t[m] = kernel(o[m], d[m], objects.params[obj[m]])
    return t


def _hit_sphere(o: np.ndarray, d: np.ndarray, p: np.ndarray) -> np.ndarray:
    b = (o * d).sum(1)
    disc = b * b - ((o * o).sum(1) - p[:, 0] ** 2)
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _hit_box(o: np.ndarray, d: np.ndarray, p: np.ndarray) -> np.ndarray:
    d = np.where(np.abs(d) < 1e-12, 1e-12, d)
    t1, t2 = (-p - o) / d, (p - o) / d
    near, far = np.minimum(t1, t2).max(1), np.maximum(t1, t2).min(1)
    return np.where((near <= far) & (near > _EPS), near, np.inf)


def _hit_cylinder(o: np.ndarray, d: np.ndarray, p: np.ndarray) -> np.ndarray:
    r, h = p[:, 0], p[:, 1]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
    disc = b * b - a * (o[:, 0] ** 2 + o[:, 1] ** 2 - r * r)
    side = (-b - np.sqrt(np.maximum(disc, 0.0))) / np.maximum(a, 1e-12)
    side_ok = (disc >= 0) & (a > 1e-12) & (np.abs(o[:, 2] + side * d[:, 2]) <= h) & (side > _EPS)
    dz = np.where(np.abs(d[:, 2]) < 1e-12, 1e-12, d[:, 2])
    cap = (np.where(dz < 0, h, -h) - o[:, 2]) / dz  # the cap facing the ray
    cx, cy = o[:, 0] + cap * d[:, 0], o[:, 1] + cap * d[:, 1]
    cap_ok = (cx * cx + cy * cy <= r * r) & (cap > _EPS)
    return np.minimum(np.where(side_ok, side, np.inf), np.where(cap_ok, cap, np.inf))


def _hit_torus(o: np.ndarray, d: np.ndarray, p: np.ndarray) -> np.ndarray:
    major, minor = p[:, 0], p[:, 1]
    # March from the bounding sphere's entry; the torus' distance function is exact, so steps never overshoot.
    b = (o * d).sum(1)
    disc = b * b - ((o * o).sum(1) - (major + minor) ** 2)
    root = np.sqrt(np.maximum(disc, 0.0))
    t, t_exit = np.maximum(-b - root, 0.0), -b + root
    for _ in range(_TORUS_STEPS):
        q = o + t[:, None] * d
        t = t + np.hypot(np.hypot(q[:, 0], q[:, 1]) - major, q[:, 2]) - minor
    q = o + t[:, None] * d
    distance = np.hypot(np.hypot(q[:, 0], q[:, 1]) - major, q[:, 2]) - minor
    return np.where((disc > 0) & (distance < _TORUS_TOLERANCE) & (t < t_exit), t, np.inf)


def _hit_walls(walls: Walls, origin: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Ray parameter at which rays from ``origin`` (inside the walls) leave through a wall; inf where they pass
    over it or meet the floor first."""
    d = np.where(np.abs(directions[:, :2]) < 1e-12, 1e-12, directions[:, :2])
    t = ((np.sign(d) * walls.half_size - origin[:2]) / d).min(1)
    z = origin[2] + t * directions[:, 2]
    return np.where((z >= 0.0) & (z <= walls.height), t, np.inf)


def _nearest(pix: np.ndarray, obj: np.ndarray, t: np.ndarray, size: int, num_objects: int):
    """Per-pixel nearest hit (t, 1-based id; inf and 0 where none) and each object's unoccluded pixel count."""
    hit = np.isfinite(t)
    pix, obj, t = pix[hit], obj[hit], t[hit]
    order = np.lexsort((obj, t, pix))  # ties broken by object index, so the result never depends on sort luck
    first = np.ones(len(order), dtype=bool)
    first[1:] = pix[order[1:]] != pix[order[:-1]]
    win = order[first]
    t_map, ids = np.full(size, np.inf), np.zeros(size, dtype=np.int64)
    t_map[pix[win]], ids[pix[win]] = t[win], obj[win] + 1
    return t_map, ids, np.bincount(obj + 1, minlength=num_objects + 1)


def _normals(objects: SceneObjects, obj: np.ndarray, local: np.ndarray) -> np.ndarray:
    """World-space unit normals at object-coordinate surface points."""
    p = objects.params[obj]
    shape = objects.shape[obj]
    n = local.copy()  # sphere
    m = shape == BOX
    axis = np.argmax(np.abs(local[m]) / p[m], axis=1)
    n[m] = 0.0
    rows = np.flatnonzero(m)
    n[rows, axis] = np.sign(local[rows, axis])
    m = shape == CYLINDER
    cap = np.abs(local[m, 2]) / p[m, 1] > np.hypot(local[m, 0], local[m, 1]) / p[m, 0]
    n[m, 2] = np.where(cap, np.sign(local[m, 2]), 0.0)
    n[m, :2] = np.where(cap[:, None], 0.0, local[m, :2])
    m = shape == TORUS
    rho = np.maximum(np.hypot(local[m, 0], local[m, 1]), 1e-9)
    n[m, :2] = local[m, :2] * (1 - p[m, :1] / rho[:, None])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    return np.einsum("pij,pj->pi", objects.rotation[obj], n)
