"""The label volume holds the content of every capture layout: synthetic camera sets, normalised as nerfstudio's
dataparser does, whose rays hit simple surfaces (boxes for objects and walls)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch
from nerfstudio.cameras import camera_utils
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import SceneBox

from contrastive_lift_ns.data.label_volume import LabelVolume, depth_points, label_volume
from contrastive_lift_ns.fields.label_field import LabelField, LabelFieldConfig
from contrastive_lift_ns.generator.room import make_room

SIZE = (96, 72)  # image width, height
_RAYS = (24, 18)  # rays per camera across and down the image that find the content


@dataclass
class Capture:
    """A layout's cameras (OpenGL camera-to-world, metres, z up) and the boxes its rays may hit."""

    poses: np.ndarray
    boxes: List[Tuple[np.ndarray, np.ndarray]]
    """Solid objects, each (low corner, high corner)."""
    room: Optional[Tuple[np.ndarray, np.ndarray]] = None
    """The inside of a room the cameras stand in; None: beyond the objects is sky (no content)."""
    fov_deg: float = 60.0
    portrait: bool = False


def _look(origin, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    origin, target = np.asarray(origin, float), np.asarray(target, float)
    forward = (target - origin) / np.linalg.norm(target - origin)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, np.cross(right, forward), -forward], axis=1)
    pose[:3, 3] = origin
    return pose


def _objects(rng, count, lo, hi, size=(0.2, 0.6)) -> List[Tuple[np.ndarray, np.ndarray]]:
    boxes = []
    for _ in range(count):
        extent = rng.uniform(*size, 3)
        corner = rng.uniform(lo, np.asarray(hi) - extent)
        boxes.append((corner, corner + extent))
    return boxes


def _room(width, depth, height) -> Tuple[np.ndarray, np.ndarray]:
    return np.array([-width / 2, -depth / 2, 0.0]), np.array([width / 2, depth / 2, height])


def dome(rng, count=25) -> Capture:
    """Cameras on a dome around a table of objects on an open floor (the generator's rooms)."""
    side = 0.4 * np.sqrt(count)
    boxes = _objects(rng, count, (-side / 2, -side / 2, 0), (side / 2, side / 2, 0.5), (0.05, 0.3))
    boxes.append((np.array([-1.5 * side, -1.5 * side, -0.05]), np.array([1.5 * side, 1.5 * side, 0.0])))
    poses = []
    for i in range(64):
        azimuth, elevation = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.1)
        flat = np.cos(elevation)
        direction = np.array([np.cos(azimuth) * flat, np.sin(azimuth) * flat, np.sin(elevation)])
        poses.append(_look(1.6 * side * direction, rng.normal(0, 0.1 * side, 3) * [1, 1, 0]))
    return Capture(np.stack(poses), boxes)


def generated_room(rng, count=100) -> Capture:
    """The cameras of a ``cl-make-scene`` room (the benchmark's: every camera aims at its own point of the floor)
    around its objects, on a floor three rooms wide."""
    room = make_room(count, round(0.8 * count), 128, seed=int(rng.integers(1000)))
    centres, radius = room.objects.center, room.objects.radius[:, None]
    boxes = [(c - r, c + r) for c, r in zip(centres, radius)]
    side = 1.5 * room.floor_size
    boxes.append((np.array([-side, -side, -0.05]), np.array([side, side, 0.0])))
    fov = 2 * np.degrees(np.arctan(room.cameras.resolution / 2 / room.cameras.focal))
    return Capture(room.cameras.camera_to_world, boxes, fov_deg=fov)


def arc(rng) -> Capture:
    """A fox-like capture: a partial arc of cameras around an object in front of a wall."""
    thing, wall = (np.array([-0.2, -0.2, 0.0]), np.array([0.2, 0.2, 0.5])), (np.array([-3, 0.6, 0]), np.array([3, 0.7, 3]))
    boxes = [thing, wall]
    poses = [
        _look([2 * np.sin(a), -2 * np.cos(a), rng.uniform(0.3, 1.0)], rng.normal([0, 0, 0.25], 0.03))
        for a in np.linspace(-0.8, 0.8, 40)
    ]
    return Capture(np.stack(poses), boxes)


def forward(rng) -> Capture:
    """LLFF: a 6×5 grid of cameras over 1.6 × 0.8 m at one end of a 10 m room, all looking across it."""
    room = _room(8, 10, 3)
    boxes = _objects(rng, 20, (-3.5, -3, 0), (3.5, 5, 1.5), (0.3, 1.0))
    poses = [_look([x, -5 + 0.05, z], [x, 5, z]) for x in np.linspace(-0.8, 0.8, 6) for z in np.linspace(1.1, 1.9, 5)]
    return Capture(np.stack(poses), boxes, room)


def _loop(count, width=5.0, depth=3.0, height=1.6):
    angle = np.linspace(0, 2 * np.pi, count, endpoint=False)
    points = np.stack([width / 2 * np.cos(angle), depth / 2 * np.sin(angle), np.full(count, height)], -1)
    tangent = np.stack([-width / 2 * np.sin(angle), depth / 2 * np.cos(angle), np.zeros(count)], -1)
    return points, tangent / np.linalg.norm(tangent, axis=-1, keepdims=True)


def walk_along(rng) -> Capture:
    """ScanNet-like: a loop through an 8 × 6 m room at eye height, looking along the path."""
    room = _room(8, 6, 2.7)
    points, tangent = _loop(90)
    poses = [_look(p, p + t + rng.normal(0, 0.15, 3)) for p, t in zip(points, tangent)]
    return Capture(np.stack(poses), _objects(rng, 30, (-3.8, -2.8, 0), (3.8, 2.8, 1.2)), room)


def walk_at_walls(rng) -> Capture:
    """The same loop, looking out at the walls."""
    room = _room(8, 6, 2.7)
    points, tangent = _loop(90)
    outward = np.cross(tangent, [0, 0, 1])
    poses = [_look(p, p + o + rng.normal(0, 0.15, 3)) for p, o in zip(points, outward)]
    return Capture(np.stack(poses), _objects(rng, 30, (-3.8, -2.8, 0), (3.8, 2.8, 1.2)), room)


def _pano(rng, centers) -> List[np.ndarray]:
    poses = []
    for center, yaw in zip(centers, np.linspace(0, 2 * np.pi, len(centers), endpoint=False)):
        pitch = rng.choice([-0.4, 0.0, 0.4])
        direction = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
        poses.append(_look(center, center + direction))
    return poses


def tripod(rng) -> Capture:
    """A panorama from a tripod in a 6 × 5 m room; the camera moves 1 cm between shots."""
    centers = np.array([0.3, -0.2, 1.5]) + rng.normal(0, 0.01, (36, 3))
    return Capture(np.stack(_pano(rng, centers)), _objects(rng, 15, (-2.8, -2.3, 0), (2.8, 2.3, 1.2)), _room(6, 5, 3))


def handheld(rng, portrait=True) -> Capture:
    """A handheld panorama: the phone turns at arm's length (30 cm) around the body, in portrait."""
    yaw = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    centers = np.stack([0.3 * np.cos(yaw), 0.3 * np.sin(yaw), np.full(36, 1.5)], -1) + rng.normal(0, 0.03, (36, 3))
    room = _room(6, 5, 3)
    boxes = _objects(rng, 15, (-2.8, -2.3, 0), (2.8, 2.3, 1.2))
    return Capture(np.stack(_pano(rng, centers)), boxes, room, portrait=portrait)


def ring(rng) -> Capture:
    """An outward ring rig of 8 cameras (radius 15 cm), moved to 4 places in a 7 × 6 m room."""
    poses = []
    for step in range(4):
        base = np.array([-0.6 + 0.4 * step, 0.0, 1.6])
        for yaw in np.linspace(0, 2 * np.pi, 8, endpoint=False) + 0.2 * step:
            direction = np.array([np.cos(yaw), np.sin(yaw), 0.0])
            poses.append(_look(base + 0.15 * direction, base + direction))
    return Capture(np.stack(poses), _objects(rng, 15, (-3.3, -2.8, 0), (3.3, 2.8, 1.2)), _room(7, 6, 3), 90.0)


def parallel(rng) -> Capture:
    """Two cameras 20 cm apart with parallel axes, facing the far wall of a 5 m room."""
    poses = [_look([x, -2.4, 1.5], [x, 2.5, 1.5]) for x in (-0.1, 0.1)]
    return Capture(np.stack(poses), _objects(rng, 10, (-2, -1, 0), (2, 2.4, 1.5)), _room(5, 5, 3))


LAYOUTS: Dict[str, Callable] = {
    "dome-25": dome,
    "dome-500": lambda rng: dome(rng, 500),
    "generated-room": generated_room,
    "arc": arc,
    "forward": forward,
    "walk-along": walk_along,
    "walk-at-walls": walk_at_walls,
    "tripod": tripod,
    "handheld": handheld,
    "ring": ring,
    "parallel": parallel,
}


def _box_entry(origins, directions, lo, hi, inside: bool) -> np.ndarray:
    """Per ray, the distance at which it enters the box (``inside``: leaves it), inf if never."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (lo - origins) / directions, (hi - origins) / directions
    near, far = np.nanmax(np.minimum(t0, t1), -1), np.nanmin(np.maximum(t0, t1), -1)
    if inside:
        return far
    return np.where((far >= near) & (near > 0), near, np.inf)


def normalised(capture: Capture) -> Tuple[Cameras, np.ndarray]:
    """The cameras as nerfstudio's dataparser leaves them, and the content (first hits of a grid of rays from
    every camera) in the same coordinates."""
    width, height = SIZE[::-1] if capture.portrait else SIZE
    focal = 0.5 * width / np.tan(np.radians(capture.fov_deg) / 2)
    u, v = np.meshgrid(np.linspace(0.5, width - 0.5, _RAYS[0]), np.linspace(0.5, height - 0.5, _RAYS[1]))
    local = np.stack([(u - width / 2) / focal, -(v - height / 2) / focal, -np.ones_like(u)], -1).reshape(-1, 3)
    hits = []
    for pose in capture.poses:
        directions = local @ pose[:3, :3].T
        origins = np.broadcast_to(pose[:3, 3], directions.shape)
        t = np.full(len(directions), np.inf)
        for lo, hi in capture.boxes:
            t = np.minimum(t, _box_entry(origins, directions, lo, hi, inside=False))
        if capture.room is not None:
            t = np.minimum(t, _box_entry(origins, directions, *capture.room, inside=True))
        hit = np.isfinite(t)
        hits.append(origins[hit] + t[hit, None] * directions[hit])
    poses, transform = camera_utils.auto_orient_and_center_poses(torch.from_numpy(capture.poses).float())
    scale = 1.0 / float(poses[:, :3, 3].abs().max())
    poses[:, :3, 3] *= scale
    content = np.concatenate(hits)
    content = scale * (content @ transform[:, :3].double().numpy().T + transform[:, 3].double().numpy())
    cameras = Cameras(
        camera_to_worlds=poses, fx=focal, fy=focal, cx=width / 2, cy=height / 2, width=width, height=height
    )
    return cameras, content


def share_inside(volume: LabelVolume, content: np.ndarray) -> float:
    """The share of the content inside the volume's box."""
    offset = np.abs(content - np.asarray(volume.center)) / np.asarray(volume.half_extent)
    return float((offset.max(-1) <= 1.0).mean())


SCENE_BOX = SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))


def _sparse_points(content: np.ndarray, rng) -> np.ndarray:
    """A structure-from-motion-like cloud: 2,000 points of the content, with 1 % stray points far off."""
    points = content[rng.choice(len(content), 2000)]
    strays = rng.normal(0, 20 * np.abs(content).max(), (len(points) // 100, 3))
    return np.concatenate([points, strays])


# A tripod's 1 cm of parallax cannot place walls 3 m away (under a third of a pixel): only points or depth can.
CAMERA_ONLY = [name for name in LAYOUTS if name != "tripod"]


@pytest.mark.parametrize("name", CAMERA_ONLY)
def test_the_cameras_alone_give_a_box_that_holds_the_content(name):
    cameras, content = normalised(LAYOUTS[name](np.random.default_rng(0)))
    assert share_inside(label_volume(cameras, SCENE_BOX), content) >= 0.95


@pytest.mark.parametrize("name", ["dome-25", "dome-500", "generated-room", "arc"])
def test_an_inward_capture_gets_a_box_about_the_size_of_its_content(name):
    """Cameras that look in see the content at about the distance they look at: the box holds it without
    reaching far beyond it (cameras aiming at scattered points of the floor once stretched it 500-fold)."""
    cameras, content = normalised(LAYOUTS[name](np.random.default_rng(0)))
    half = np.asarray(label_volume(cameras, SCENE_BOX).half_extent)
    assert half.max() <= 2.0 * np.ptp(content, axis=0).max() / 2, (half, np.ptp(content, axis=0) / 2)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_sparse_points_give_a_box_that_holds_the_content(name):
    rng = np.random.default_rng(0)
    cameras, content = normalised(LAYOUTS[name](rng))
    volume = label_volume(cameras, SCENE_BOX, _sparse_points(content, rng))
    assert share_inside(volume, content) >= 0.95
    # ...and no larger than the content: the strays do not stretch it.
    assert np.all(np.asarray(volume.half_extent) <= 0.6 * np.ptp(content, axis=0) + 1e-6)


def test_stray_frames_do_not_stretch_the_box():
    """3 of 90 frames looking far off change the box by little (the box spans percentiles over the cameras)."""
    rng = np.random.default_rng(0)
    capture = dome(rng)
    cameras, _ = normalised(capture)
    strays = np.stack([_look(p[:3, 3], p[:3, 3] + 10 * (p[:3, 3] - [0, 0, 0])) for p in capture.poses[:3]])
    capture.poses = np.concatenate([capture.poses[3:], strays])
    with_strays, _ = normalised(capture)
    base, stretched = (np.asarray(label_volume(c, SCENE_BOX).half_extent) for c in (cameras, with_strays))
    assert np.all(stretched <= 1.2 * base), (base, stretched)


def test_a_portrait_capture_gets_a_tall_box_not_a_wide_one():
    """Each axis of the box gets the view's extent along it, not the wider side's on all three."""
    rng = np.random.default_rng(0)
    landscape, portrait = (normalised(handheld(rng, portrait=p))[0] for p in (False, True))
    wide, tall = (np.asarray(label_volume(c, SCENE_BOX).half_extent) for c in (landscape, portrait))
    assert tall[2] / max(tall[:2]) > 1.2 * wide[2] / max(wide[:2]), (wide, tall)


def test_cameras_at_one_point_get_the_scene_box():
    poses = torch.eye(4)[None, :3].repeat(5, 1, 1)
    cameras = Cameras(camera_to_worlds=poses, fx=50.0, fy=50.0, cx=48.0, cy=36.0, width=96, height=72)
    volume = label_volume(cameras, SCENE_BOX)
    assert volume.center == (0.0, 0.0, 0.0) and volume.half_extent == (1.0, 1.0, 1.0)
    assert np.isfinite(volume.pixel_footprint) and volume.pixel_footprint > 0


def test_depth_maps_back_project_onto_the_surface_they_see():
    cameras, _ = normalised(parallel(np.random.default_rng(0)))
    depth = np.full((72, 96), 3.0)
    points = depth_points(cameras, 0, depth, stride=4)
    pose = cameras.camera_to_worlds[0].double().numpy()
    along_axis = (points - pose[:3, 3]) @ -pose[:3, 2]
    assert len(points) == 18 * 24 and np.allclose(along_axis, 3.0)


def test_a_flat_box_gets_cubic_cells():
    """A box 16 times wider than high: the grid's cells are as wide in the world on its short axis as on its long
    ones, not finer."""
    volume = LabelVolume(center=(0.0, 0.0, 0.0), half_extent=(2.0, 1.0, 0.125), pixel_footprint=0.01)
    field = LabelField(LabelFieldConfig(), out_dim=3, volume=volume, implementation="torch")
    step = 1e-3 * torch.eye(3)
    stretch = (field.grid_coordinates(step) - field.grid_coordinates(-step)).diagonal() / 2e-3
    assert torch.allclose(stretch, stretch[0].expand(3), rtol=1e-4), stretch
    assert field.grid_coordinates(torch.tensor([[0.0, 0.0, 1e3]]))[0, 2] < 0.5 + 0.5 / 16
