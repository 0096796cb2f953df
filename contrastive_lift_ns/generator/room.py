"""The layout and appearance of a Messy-Rooms-style scene (paper §4, Appendix A), without Blender or assets.

N objects of four shapes (sphere, box, cylinder upright or lying, and a non-convex torus) rest on a rug
without overlapping; the rug's area grows with N so the clutter density stays the same. A sky dome with a
skyline and a wooden floor form the background. Cameras sit on a dome-shaped shell around the scene and look
inward; as in the paper their distance grows with the scene's extent and their focal length with the distance,
so every image covers about the same floor area and so about the same number of objects (20-30 from 25 to
500 objects; smaller rooms are seen whole, framed so that each object stays well visible at 64 pixels).

World units are metres, +z is up and the rug is centred on the origin. Cameras use nerfstudio's OpenGL
convention (looking down -z, +y up, camera-to-world matrices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
from skimage.color import hsv2rgb

SHAPES = ("sphere", "box", "cylinder", "torus")
SPHERE, BOX, CYLINDER, TORUS = range(len(SHAPES))

# Largest object dimension, log-uniform in metres.
_SIZE_RANGE = (0.10, 0.30)
# Fraction of the rug covered by the objects' footprints; sets how the floor grows with N.
_FILL = 0.22
# Densest fill accepted for a user-given --floor-size (random placement jams well before 0.5).
_MAX_FILL = 0.4
_GAP = 0.005
_MIN_FLOOR = 0.5
_RUG_MARGIN = 0.15
# Each view covers about this floor width (m) by default, but at most the rug plus a margin in small scenes.
VIEW_WIDTH = 1.5
_VIEW_MARGIN = 1.1
# Camera distance per metre of rug side, and the shell's relative thickness.
_CAMERA_DISTANCE = 1.3
_SHELL = 0.1
_ELEVATION_DEG = (25.0, 65.0)
_PLACEMENT_BATCHES = 40
_PLACEMENT_BATCH = 256


@dataclass(frozen=True)
class SceneObjects:
    """The objects as arrays (index i is ground-truth instance id i + 1), so the renderer can vectorise."""

    shape: np.ndarray
    """(N,) index into SHAPES."""
    center: np.ndarray
    """(N, 3) centre in world coordinates."""
    rotation: np.ndarray
    """(N, 3, 3) local-to-world rotation; a cylinder's and a torus' axis is the local z axis."""
    params: np.ndarray
    """(N, 3) shape parameters, unused ones zero: sphere (r), box (half extents), cylinder (r, half height),
    torus (major radius, minor radius)."""
    radius: np.ndarray
    """(N,) bounding-sphere radius."""
    texture_kind: np.ndarray
    """(N,) procedural pattern: 0 stripes, 1 checker, 2 dots, 3 marble."""
    texture_colors: np.ndarray
    """(N, 2, 3) the pattern's two sRGB colours."""
    texture_frequency: np.ndarray
    """(N,) pattern frequency in cycles per metre."""
    texture_axis: np.ndarray
    """(N, 3) unit direction of stripes and veins in object coordinates."""
    texture_phase: np.ndarray
    """(N, 3) offset of the pattern's lattice."""

    def __len__(self) -> int:
        return len(self.shape)

    def half_extents(self) -> np.ndarray:
        """(N, 3) half sizes of the tight world-axis-aligned bounding boxes."""
        r, p = self.rotation, self.params
        axis_xy = np.sqrt(np.clip(1.0 - r[:, :, 2] ** 2, 0.0, None))  # disc radius factor per world axis
        half = np.empty((len(self), 3))
        for shape, extent in (
            (SPHERE, lambda m: np.repeat(p[m, :1], 3, axis=1)),
            (BOX, lambda m: np.einsum("nij,nj->ni", np.abs(r[m]), p[m])),
            (CYLINDER, lambda m: p[m, 1:2] * np.abs(r[m, :, 2]) + p[m, :1] * axis_xy[m]),
            (TORUS, lambda m: p[m, :1] * axis_xy[m] + p[m, 1:2]),
        ):
            mask = self.shape == shape
            if mask.any():
                half[mask] = extent(mask)
        return half


@dataclass(frozen=True)
class Cameras:
    """Pinhole cameras with square images and one shared focal length."""

    camera_to_world: np.ndarray
    """(V, 4, 4) OpenGL camera-to-world matrices."""
    focal: float
    """Focal length in pixels."""
    resolution: int
    """Image width and height in pixels."""


@dataclass(frozen=True)
class MessyRoom:
    """A complete scene: objects, background, light and cameras."""

    objects: SceneObjects
    """The objects standing on the rug."""
    cameras: Cameras
    """The views to render."""
    floor_size: float
    """Side of the square the objects stand in (m); the rug reaches 15 cm beyond it."""
    dome_radius: float
    """Radius of the sky hemisphere centred on the origin; the floor is its base."""
    light_direction: np.ndarray
    """(3,) unit vector towards the sun."""
    rug_colors: np.ndarray
    """(3, 3) sRGB colours of the rug's ground, pattern and border."""
    noise_seed: int
    """Seed of the procedural textures' hash."""

    def object_albedo(self, ids: np.ndarray, local: np.ndarray) -> np.ndarray:
        """sRGB albedo (n, 3) of points ``local`` (object coordinates) on objects ``ids`` (1-based)."""
        o = self.objects
        k = ids - 1
        freq = o.texture_frequency[k]
        lattice = local * freq[:, None] + o.texture_phase[k]
        along = (local * o.texture_axis[k]).sum(1) * freq + o.texture_phase[k, 0]
        kind = o.texture_kind[k]
        pattern = np.empty(len(ids))
        m = kind == 0
        pattern[m] = _smoothstep(-0.35, 0.35, np.sin(2 * np.pi * along[m]))
        m = kind == 1
        pattern[m] = np.floor(lattice[m]).astype(np.int64).sum(1) % 2
        m = kind == 2
        pattern[m] = 1.0 - _smoothstep(0.24, 0.3, np.linalg.norm(lattice[m] % 1.0 - 0.5, axis=1))
        m = kind == 3
        swirl = 4.0 * _fbm(lattice[m] * 0.7, self.noise_seed + 1)
        pattern[m] = _smoothstep(-0.6, 0.6, np.sin(2 * np.pi * along[m] + swirl))
        colors = o.texture_colors[k]
        albedo = colors[:, 0] + (colors[:, 1] - colors[:, 0]) * pattern[:, None]
        # Fine grain so that even plain patches carry texture for photometric matching.
        grain = _fbm(local * 70.0 + k[:, None] * 7.31, self.noise_seed + 2)
        return albedo * (0.78 + 0.44 * grain)[:, None]

    def floor_albedo(self, points: np.ndarray) -> np.ndarray:
        """sRGB albedo (n, 3) of floor points: the rug under the objects, wooden planks around it."""
        x, y = points[:, 0], points[:, 1]
        albedo = np.empty((len(points), 3))
        half = self.floor_size / 2 + _RUG_MARGIN
        rug = np.maximum(np.abs(x), np.abs(y)) < half
        plank_width, board_length = 0.14, 1.4
        row = np.floor(y[~rug] / plank_width).astype(np.int64)
        shifted = x[~rug] + _hash(row, np.full_like(row, 1), np.zeros_like(row), self.noise_seed) * board_length
        board = np.floor(shifted / board_length).astype(np.int64)
        tone = _hash(row, board, np.full_like(row, 2), self.noise_seed)
        grain = _fbm(np.stack([x[~rug] * 1.5, y[~rug] * 40.0, board * 3.7], 1), self.noise_seed + 3)
        seam = ((y[~rug] / plank_width) % 1.0 < 0.05) | ((shifted / board_length) % 1.0 < 0.006)
        wood = np.array([0.55, 0.37, 0.22]) * ((0.7 + 0.4 * tone) * (0.75 + 0.45 * grain))[:, None]
        albedo[~rug] = np.where(seam[:, None], wood * 0.45, wood)
        xr, yr = x[rug], y[rug]
        diamond = np.abs((xr * 3.0) % 1.0 - 0.5) + np.abs((yr * 3.0) % 1.0 - 0.5)
        pattern = _smoothstep(0.28, 0.33, diamond)
        ground, motif, border = self.rug_colors
        color = motif + (ground - motif) * pattern[:, None]
        in_border = half - np.maximum(np.abs(xr), np.abs(yr)) < 0.1
        color[in_border] = border
        fibre = _fbm(np.stack([xr, yr, np.zeros_like(xr)], 1) * 120.0, self.noise_seed + 4)
        albedo[rug] = color * (0.8 + 0.4 * fibre)[:, None]
        return albedo

    def sky_color(self, points: np.ndarray) -> np.ndarray:
        """sRGB colour (n, 3) of points on the dome: sky, clouds and a distant skyline."""
        direction = points / np.linalg.norm(points, axis=1, keepdims=True)
        up = np.clip(direction[:, 2], 0.0, 1.0)
        horizon, zenith = np.array([0.80, 0.86, 0.92]), np.array([0.32, 0.52, 0.85])
        color = horizon + (zenith - horizon) * (up**0.6)[:, None]
        cloud = _smoothstep(0.5, 0.75, _fbm(direction * 4.0, self.noise_seed + 5))
        color += (np.array([0.97, 0.97, 0.98]) - color) * (0.85 * cloud)[:, None]
        azimuth = np.arctan2(direction[:, 1], direction[:, 0])
        ring = np.stack([np.cos(azimuth) * 3, np.sin(azimuth) * 3, np.zeros_like(azimuth)], 1)
        skyline = 0.04 + 0.16 * _fbm(ring, self.noise_seed + 6)
        hill = up < skyline
        shade = 0.6 + 0.5 * _fbm(direction[hill] * 25.0, self.noise_seed + 7)
        color[hill] = np.array([0.30, 0.38, 0.30]) * shade[:, None]
        return color


def make_room(
    num_objects: int,
    num_views: int,
    resolution: int,
    seed: int,
    floor_size: Optional[float] = None,
    view_width: float = VIEW_WIDTH,
) -> MessyRoom:
    """Lays out a random scene; the same arguments give the same scene. Each view covers about ``view_width``
    metres of floor (at most the rug plus a margin).

    Raises ValueError naming --num-objects / --floor-size when the objects do not fit the floor.
    """
    rng = np.random.default_rng([seed, 0])
    shape, params, footprint, radius, rotation, lift = _sample_shapes(rng, num_objects)
    area = float(np.sum(np.pi * footprint**2))
    if floor_size is None:
        floor_size = max(_MIN_FLOOR, float(np.sqrt(area / _FILL)))
    elif area > _MAX_FILL * floor_size**2:
        raise ValueError(
            f"{num_objects} objects need about {np.sqrt(area / _MAX_FILL):.2f} m of floor but --floor-size is "
            f"{floor_size:g} m; lower --num-objects or raise --floor-size (or leave it unset to size it from N)"
        )
    xy = _place(rng, footprint, floor_size, num_objects)
    center = np.concatenate([xy, lift[:, None]], 1)
    objects = SceneObjects(shape, center, rotation, params, radius, *_sample_textures(rng, num_objects))
    view_width = min(view_width, _VIEW_MARGIN * floor_size)
    distance = _CAMERA_DISTANCE * floor_size
    cameras = _sample_cameras(rng, num_views, resolution, floor_size, view_width, distance)
    sun_elevation, sun_azimuth = np.radians(rng.uniform(40, 65)), rng.uniform(0, 2 * np.pi)
    light = np.array(
        [
            np.cos(sun_elevation) * np.cos(sun_azimuth),
            np.cos(sun_elevation) * np.sin(sun_azimuth),
            np.sin(sun_elevation),
        ]
    )
    hue = rng.uniform()
    rug = hsv2rgb(np.array([[[hue, 0.35, 0.55], [(hue + 0.15) % 1, 0.4, 0.8], [(hue + 0.05) % 1, 0.5, 0.3]]]))[0]
    return MessyRoom(
        objects=objects,
        cameras=cameras,
        floor_size=floor_size,
        dome_radius=2.2 * (1 + _SHELL) * distance,
        light_direction=light,
        rug_colors=rug,
        noise_seed=int(rng.integers(0, 2**31)),
    )


def scene_objects_json(room: MessyRoom) -> List[Dict[str, Any]]:
    """The ``scene_objects`` record of transforms.json: id, shape, centre and bounding box per object."""
    o = room.objects
    half = o.half_extents()
    records = []
    for i in range(len(o)):
        records.append(
            {
                "id": i + 1,
                "shape": SHAPES[o.shape[i]],
                "center": _floats(o.center[i]),
                "size": _floats(2 * half[i]),
                "bbox_min": _floats(o.center[i] - half[i]),
                "bbox_max": _floats(o.center[i] + half[i]),
            }
        )
    return records


def _floats(values: np.ndarray) -> List[float]:
    return [round(float(v), 6) for v in values]


def _sample_shapes(rng: np.random.Generator, n: int):
    """Shapes, parameters, footprint radii, bounding radii, rotations and centre heights of resting objects."""
    shape = rng.integers(0, len(SHAPES), n)
    half = np.exp(rng.uniform(*np.log(_SIZE_RANGE), n)) / 2
    aspect = rng.uniform(0.0, 1.0, (n, 2))
    yaw = rng.uniform(0, 2 * np.pi, n)
    lying = rng.uniform(size=n) < 0.4
    params = np.zeros((n, 3))
    footprint, radius, lift = half.copy(), half.copy(), half.copy()

    box = shape == BOX
    params[box] = np.stack([half, half * (0.45 + 0.55 * aspect[:, 0]), half * (0.35 + 0.65 * aspect[:, 1])], 1)[box]
    footprint[box] = np.hypot(params[box, 0], params[box, 1])
    radius[box] = np.linalg.norm(params[box], axis=1)
    lift[box] = params[box, 2]

    cylinder = shape == CYLINDER
    r = half * (0.3 + 0.5 * aspect[:, 0])
    params[cylinder, 0], params[cylinder, 1] = r[cylinder], half[cylinder]
    radius[cylinder] = np.hypot(r, half)[cylinder]
    footprint[cylinder] = np.where(lying, np.hypot(r, half), r)[cylinder]
    lift[cylinder] = np.where(lying, r, half)[cylinder]

    torus = shape == TORUS
    minor = half * (0.22 + 0.16 * aspect[:, 0])
    params[torus, 0], params[torus, 1] = (half - minor)[torus], minor[torus]
    lift[torus] = minor[torus]

    params[shape == SPHERE, 0] = half[shape == SPHERE]
    cos, sin, zero, one = np.cos(yaw), np.sin(yaw), np.zeros(n), np.ones(n)
    rotation = np.stack(
        [np.stack([cos, -sin, zero], 1), np.stack([sin, cos, zero], 1), np.stack([zero, zero, one], 1)], 1
    )
    # A lying cylinder's axis (local z) turns into the horizontal plane.
    tip = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    tipped = cylinder & lying
    rotation[tipped] = rotation[tipped] @ tip
    return shape, params, footprint, radius, rotation, lift


def _place(rng: np.random.Generator, footprint: np.ndarray, floor_size: float, n: int) -> np.ndarray:
    """Non-overlapping footprint centres inside the rug, largest objects first (random sequential adsorption)."""
    xy = np.zeros((n, 2))
    placed: List[int] = []
    for i in np.argsort(-footprint, kind="stable"):
        limit = floor_size / 2 - footprint[i]
        for _ in range(_PLACEMENT_BATCHES):
            candidates = rng.uniform(-limit, limit, (_PLACEMENT_BATCH, 2))
            if placed:
                gaps = np.linalg.norm(candidates[:, None] - xy[placed][None], axis=2) - footprint[placed]
                free = np.flatnonzero((gaps > footprint[i] + _GAP).all(1))
            else:
                free = np.arange(1)
            if len(free):
                xy[i] = candidates[free[0]]
                placed.append(i)
                break
        else:
            raise ValueError(
                f"could not place {n} objects without overlap on a {floor_size:g} m floor; lower --num-objects or "
                "raise --floor-size"
            )
    return xy


def _sample_textures(rng: np.random.Generator, n: int):
    kind = rng.integers(0, 4, n)
    hue = rng.uniform(0, 1, n)
    first = np.stack([hue, rng.uniform(0.3, 0.9, n), rng.uniform(0.35, 0.95, n)], 1)
    # The second colour differs in hue and brightness, so the pattern shows on every object.
    second = np.stack(
        [
            (hue + rng.uniform(0.15, 0.5, n) * rng.choice([-1, 1], n)) % 1,
            rng.uniform(0.2, 0.9, n),
            rng.uniform(0.1, 1, n),
        ],
        1,
    )
    second[:, 2] = np.where(np.abs(second[:, 2] - first[:, 2]) < 0.25, (first[:, 2] + 0.5) % 1.0, second[:, 2])
    colors = hsv2rgb(np.stack([first, second], 1))
    frequency = np.exp(rng.uniform(np.log(12.0), np.log(40.0), n))
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    return kind, colors, frequency, axis, rng.uniform(0, 1, (n, 3))


def _sample_cameras(
    rng: np.random.Generator, n: int, resolution: int, floor_size: float, view_width: float, distance: float
) -> Cameras:
    elevation = np.radians(rng.uniform(*_ELEVATION_DEG, n))
    azimuth = rng.uniform(0, 2 * np.pi, n)
    radius = distance * rng.uniform(1 - _SHELL, 1 + _SHELL, n)
    position = radius[:, None] * np.stack(
        [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)], 1
    )
    # Big rooms: aim anywhere over the rug so every part is seen; small rooms: aim near the centre.
    spread = max(0.0, floor_size / 2 - 0.4 * view_width) + 0.05 * view_width
    target = np.concatenate([rng.uniform(-spread, spread, (n, 2)), np.zeros((n, 1))], 1)
    forward = target - position
    forward /= np.linalg.norm(forward, axis=1, keepdims=True)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    up = np.cross(right, forward)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, -forward, position
    return Cameras(camera_to_world=c2w, focal=resolution * distance / view_width, resolution=resolution)


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _hash(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    """Integer lattice hash to [0, 1) in wrapping uint32 arithmetic, so it is exact and portable."""
    h = _lattice(ix, 0x6C8E9CF5) ^ _lattice(iy, 0x3B9AC9F1) ^ _lattice(iz, 0x1B873593)
    return _mix(h, seed)


def _lattice(i: np.ndarray, prime: int) -> np.ndarray:
    return np.asarray(i).astype(np.int64).astype(np.uint32) * np.uint32(prime)


def _mix(h: np.ndarray, seed: int) -> np.ndarray:
    h = h ^ np.uint32(seed & 0xFFFFFFFF)
    h = (h ^ (h >> np.uint32(15))) * np.uint32(0x2C1B3C6D)
    h = (h ^ (h >> np.uint32(12))) * np.uint32(0x297A2D39)
    return (h ^ (h >> np.uint32(15))).astype(np.float32) * np.float32(1.0 / 2**32)


def _value_noise(points: np.ndarray, seed: int) -> np.ndarray:
    """Smooth 3D value noise in [0, 1]."""
    points = points.astype(np.float32)
    cell = np.floor(points)
    f = points - cell
    u = f * f * (3 - 2 * f)
    i = cell.astype(np.int64)
    # Per axis: the two lattice coordinates' hash terms and interpolation weights.
    terms = [
        [_lattice(i[:, a] + d, prime) for d in (0, 1)] for a, prime in enumerate((0x6C8E9CF5, 0x3B9AC9F1, 0x1B873593))
    ]
    weights = [[1 - u[:, a], u[:, a]] for a in range(3)]
    out = np.zeros(len(points), dtype=np.float32)
    for dx in (0, 1):
        for dy in (0, 1):
            wxy, hxy = weights[0][dx] * weights[1][dy], terms[0][dx] ^ terms[1][dy]
            for dz in (0, 1):
                out += wxy * weights[2][dz] * _mix(hxy ^ terms[2][dz], seed)
    return out


def _fbm(points: np.ndarray, seed: int, octaves: int = 3) -> np.ndarray:
    """Fractal value noise in [0, 1]."""
    total, norm = np.zeros(len(points), dtype=np.float32), 0.0
    for octave in range(octaves):
        total += 0.5**octave * _value_noise(points * 2**octave, seed + 101 * octave)
        norm += 0.5**octave
    return total / norm
