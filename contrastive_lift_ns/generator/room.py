"""The layout and appearance of a Messy-Rooms-style scene (paper §4, Appendix A), without Blender or assets.

N objects of four shapes (sphere, box, cylinder upright or lying, and a non-convex torus) rest on a rug
without overlapping; the rug's area grows with N so the clutter density stays the same. A sky dome with a
skyline and a wooden floor form the background. The cameras follow one of four capture layouts
(``CAMERA_LAYOUTS``):

- ``dome`` (the paper's): cameras on a dome-shaped shell around the scene look inward; their distance grows
  with the scene's extent and their focal length with the distance, so every image covers about the same floor
  area and so about the same number of objects (20-30 from 25 to 500 objects; smaller rooms are seen whole,
  framed so that each object stays well visible at 64 pixels).
- ``forward`` (LLFF): a small grid of cameras at one edge of the rug, all looking the same way across it.
- ``walkthrough`` (ScanNet): cameras at eye height walk a loop over the rug, each looking at a random spot of
  the clutter around it, so the content surrounds the path.
- ``panorama``: cameras at one point (1 cm jitter) turn through every heading, in two rows of pitch.

The last three stand inside four textured walls around the rug, so that every ray meets a surface near the
cameras (over the walls it meets the sky dome), and use a 60° field of view, as phones and ScanNet's camera
do.

World units are metres, +z is up and the rug is centred on the origin. Cameras use nerfstudio's OpenGL
convention (looking down -z, +y up, camera-to-world matrices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, get_args

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

CameraLayout = Literal["dome", "forward", "walkthrough", "panorama"]
CAMERA_LAYOUTS = get_args(CameraLayout)
# The layouts inside walls: horizontal field of view, walls' distance beyond the rug and their height (m).
_FIELD_OF_VIEW_DEG = 60.0
_WALL_GAP = 0.9
_WALL_HEIGHT = 2.6
_EYE_HEIGHT = (1.35, 1.65)
# Walk-through: nearest floor distance a camera looks at (m), so it never stares straight down.
_MIN_LOOK_DISTANCE = 0.7
_TRIPOD_JITTER = 0.01


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
class Walls:
    """Four walls standing on the floor around the rug, centred on the origin and facing inward."""

    half_size: float
    """Distance from the origin to each wall (m)."""
    height: float
    """Height of the walls (m); rays above them go on to the sky dome."""
    colors: np.ndarray
    """(3, 3) sRGB colours of the paint, the panelling below the rail, and the skirting and rail."""


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
    walls: Optional[Walls] = None
    """The walls around the rug; None for the dome layout, which sees the open floor and the sky."""

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

    def wall_albedo(self, points: np.ndarray) -> np.ndarray:
        """sRGB albedo (n, 3) of wall points: painted plaster with framed pictures, panelling below a rail."""
        assert self.walls is not None
        x, y, z = points[:, 0], points[:, 1], points[:, 2]
        on_x_wall = np.abs(x) >= np.abs(y)
        along = np.where(on_x_wall, y + 10.0 * np.sign(x), x + 30.0 * np.sign(y))  # distinct per wall
        paint, panel, trim = self.walls.colors
        blotch = _fbm(points * 2.5, self.noise_seed + 8)
        albedo = paint * (0.8 + 0.35 * blotch)[:, None]
        # Pictures: a row of frames whose canvas is coloured noise, so distant walls carry texture too.
        slot = np.floor(along / 1.2).astype(np.int64)
        inside = ((along / 1.2) % 1.0 > 0.25) & ((along / 1.2) % 1.0 < 0.75) & (z > 1.25) & (z < 1.85)
        frame = inside & ~(((along / 1.2) % 1.0 > 0.27) & ((along / 1.2) % 1.0 < 0.73) & (z > 1.28) & (z < 1.82))
        hue = _hash(slot, np.zeros_like(slot), np.full_like(slot, 3), self.noise_seed)
        swirl = _fbm(points[inside] * 9.0, self.noise_seed + 10)
        canvas = hsv2rgb(np.stack([(hue[inside] + 0.4 * swirl) % 1.0, np.full(swirl.shape, 0.6), 0.3 + 0.6 * swirl], 1))
        albedo[inside] = canvas
        albedo[frame] = trim * 0.6
        low = z < 0.9
        seam = (along % 0.5) < 0.015
        albedo[low] = np.where(seam[low, None], panel * 0.5, panel * (0.85 + 0.25 * blotch[low, None]))
        albedo[(z < 0.12) | ((z > 0.88) & (z < 0.93))] = trim
        grain = _fbm(points * 60.0, self.noise_seed + 9)
        return albedo * (0.8 + 0.4 * grain)[:, None]

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
    camera_layout: CameraLayout = "dome",
) -> MessyRoom:
    """Lays out a random scene; the same arguments give the same scene, and the same seed the same objects in
    every ``camera_layout``. In the dome layout each view covers about ``view_width`` metres of floor (at most
    the rug plus a margin).

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
    distance = _CAMERA_DISTANCE * floor_size
    dome_radius = 2.2 * (1 + _SHELL) * distance
    walls = None
    if camera_layout == "dome":
        view_width = min(view_width, _VIEW_MARGIN * floor_size)
        cameras = _sample_cameras(rng, num_views, resolution, floor_size, view_width, distance)
    else:
        # A stream of its own, so the objects stay those of the dome layout with the same seed.
        layout_rng = np.random.default_rng([seed, 2])
        walls = _sample_walls(layout_rng, floor_size)
        # The sky dome must enclose the walls.
        dome_radius = max(dome_radius, 2.0 * float(np.hypot(np.sqrt(2.0) * walls.half_size, walls.height)))
        cameras = _INSIDE_LAYOUTS[camera_layout](layout_rng, num_views, resolution, floor_size)
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
        dome_radius=dome_radius,
        light_direction=light,
        rug_colors=rug,
        noise_seed=int(rng.integers(0, 2**31)),
        walls=walls,
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
    return Cameras(
        camera_to_world=_look_along(position, target - position),
        focal=resolution * distance / view_width,
        resolution=resolution,
    )


def _look_along(position: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """(n, 4, 4) OpenGL camera-to-world matrices of cameras at ``position`` looking along ``forward``, level
    (no roll)."""
    forward = forward / np.linalg.norm(forward, axis=1, keepdims=True)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    up = np.cross(right, forward)
    c2w = np.tile(np.eye(4), (len(position), 1, 1))
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, -forward, position
    return c2w


def _sample_walls(rng: np.random.Generator, floor_size: float) -> Walls:
    hue = rng.uniform()
    colors = hsv2rgb(
        np.array([[[hue, 0.15, 0.85], [(hue + 0.5) % 1, 0.35, 0.55], [(hue + 0.1) % 1, 0.3, 0.35]]])
    )[0]
    return Walls(half_size=floor_size / 2 + _RUG_MARGIN + _WALL_GAP, height=_WALL_HEIGHT, colors=colors)


def _wide_focal(resolution: int) -> float:
    return resolution / 2 / np.tan(np.radians(_FIELD_OF_VIEW_DEG) / 2)


def _forward_cameras(rng: np.random.Generator, n: int, resolution: int, floor_size: float) -> Cameras:
    """A grid (about twice as wide as high) in the cameras' image plane, just beyond one edge of the rug; all
    cameras look the same way, down across the rug at its centre, give or take 2°."""
    rug_half = floor_size / 2 + _RUG_MARGIN
    height = min(1.6, 0.45 * floor_size + 0.65)
    centre = np.array([0.0, -(rug_half + 0.4), height])
    axis = _look_along(centre[None], -centre[None])[0]
    width = float(np.clip(0.6 * floor_size, 0.4, 1.6))
    columns = int(np.ceil(np.sqrt(2 * n)))
    rows = int(np.ceil(n / columns))
    u, v = np.meshgrid(np.linspace(-0.5, 0.5, columns) * width, np.linspace(-0.5, 0.5, rows) * width / 2)
    spacing = width / max(columns - 1, 1)
    offsets = np.stack([u.ravel(), v.ravel()], 1)[:n] + rng.normal(0, 0.05 * spacing, (n, 2))
    position = centre + offsets[:, :1] * axis[:3, 0] + offsets[:, 1:] * axis[:3, 1]
    forward = -axis[:3, 2] + rng.normal(0, np.radians(2.0), (n, 3))
    return Cameras(camera_to_world=_look_along(position, forward), focal=_wide_focal(resolution), resolution=resolution)


def _walkthrough_cameras(rng: np.random.Generator, n: int, resolution: int, floor_size: float) -> Cameras:
    """Eye-height cameras walking a circle over the rug, in order; each looks at a random point of the rug, at
    least ``_MIN_LOOK_DISTANCE`` away along the floor, so the views turn all around the path."""
    radius = 0.3 * floor_size + 0.3
    phase = 2 * np.pi * (np.arange(n) + rng.uniform(-0.3, 0.3, n)) / n
    position = np.stack(
        [radius * np.cos(phase), radius * np.sin(phase), rng.uniform(*_EYE_HEIGHT, n)], 1
    )
    rug_half = floor_size / 2 + _RUG_MARGIN
    target = np.concatenate([rng.uniform(-rug_half, rug_half, (n, 2)), np.zeros((n, 1))], 1)
    away = target[:, :2] - position[:, :2]
    distance = np.linalg.norm(away, axis=1, keepdims=True)
    heading = np.where(distance > 1e-6, away / np.maximum(distance, 1e-6), [[1.0, 0.0]])
    target[:, :2] = position[:, :2] + heading * np.maximum(distance, _MIN_LOOK_DISTANCE)
    return Cameras(
        camera_to_world=_look_along(position, target - position), focal=_wide_focal(resolution), resolution=resolution
    )


def _panorama_cameras(rng: np.random.Generator, n: int, resolution: int, floor_size: float) -> Cameras:
    """A tripod over the rug's centre turning through evenly spaced headings, alternately pitched 35° and 65°
    down (the lower row sees the clutter around the tripod, the upper one the far floor and the walls)."""
    height = float(np.clip(0.5 * floor_size + 0.5, 0.9, 1.6))
    position = np.array([0.0, 0.0, height]) + rng.normal(0, _TRIPOD_JITTER, (n, 3))
    heading = 2 * np.pi * np.arange(n) / n + rng.normal(0, np.radians(1.0), n)
    pitch = np.radians(np.where(np.arange(n) % 2 == 0, 65.0, 35.0))
    forward = np.stack([np.cos(pitch) * np.cos(heading), np.cos(pitch) * np.sin(heading), -np.sin(pitch)], 1)
    return Cameras(camera_to_world=_look_along(position, forward), focal=_wide_focal(resolution), resolution=resolution)


_INSIDE_LAYOUTS = {
    "forward": _forward_cameras,
    "walkthrough": _walkthrough_cameras,
    "panorama": _panorama_cameras,
}


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
