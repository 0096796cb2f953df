"""Tests of the multi-view consistency score on analytic toy worlds: planes and boxes seen by pinhole cameras."""

from __future__ import annotations

import math
from typing import List, Tuple

import cv2
import numpy as np
import pytest
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType

from contrastive_lift_ns.evaluation.consistency import (
    View,
    correspondences,
    multiview_consistency,
    overlapping_pairs,
    pair_agreement,
    project,
)

Box = Tuple[np.ndarray, np.ndarray, int]  # lower corner, upper corner, instance id


def _look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """4×4 OpenGL camera-to-world matrix of a camera at ``eye`` looking at ``target``."""
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, np.cross(right, forward), -forward], axis=1)
    pose[:3, 3] = eye
    return pose


def _top_down(x: float, y: float, height: float, quarter_turns: int = 0) -> np.ndarray:
    """A camera at (x, y, height) looking straight down, image up = world +y turned by quarter turns about z."""
    angle = quarter_turns * math.pi / 2
    pose = np.eye(4)
    pose[:2, :2] = np.round([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pose[:3, 3] = (x, y, height)
    return pose


def _rays(pose: np.ndarray, f: float, width: int, height: int) -> Tuple[np.ndarray, np.ndarray]:
    """Origins and unit directions of the pixel-centre rays of a pinhole camera (cx = width / 2, cy = height / 2)."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    camera = np.stack([(cols + 0.5 - width / 2) / f, -(rows + 0.5 - height / 2) / f, -np.ones(rows.shape)], -1)
    directions = camera @ pose[:3, :3].T
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    return np.broadcast_to(pose[:3, 3], directions.shape), directions


def _ground_id(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ground regions: a 4×4 grid of 0.75-wide cells over [-1.5, 1.5]², ids 1–16; 0 around it."""
    col, row = np.floor((x + 1.5) / 0.75), np.floor((y + 1.5) / 0.75)
    inside = (col >= 0) & (col < 4) & (row >= 0) & (row < 4)
    return np.where(inside, 1 + col + 4 * row, 0).astype(np.int64)


def _cast(
    origins: np.ndarray, directions: np.ndarray, boxes: List[Box], ground_extent: float
) -> Tuple[np.ndarray, np.ndarray]:
    """First hit of each ray on the ground square z = 0, |x|, |y| ≤ ``ground_extent``, or on the boxes.

    Returns the ray length to the hit (inf for none) and the hit's instance id (0 for none).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(directions[..., 2] < 0, -origins[..., 2] / directions[..., 2], np.inf)
        ground = origins + directions * t[..., None]
        on_ground = np.isfinite(t) & (np.abs(ground[..., :2]) <= ground_extent).all(-1)
        t = np.where(on_ground, t, np.inf)
        ids = np.where(on_ground, _ground_id(ground[..., 0], ground[..., 1]), 0)
        for lower, upper, box_id in boxes:
            # Slab test; the cameras are all outside the boxes.
            t1, t2 = (lower - origins) / directions, (upper - origins) / directions
            near = np.nanmax(np.minimum(t1, t2), axis=-1)
            far = np.nanmin(np.maximum(t1, t2), axis=-1)
            hit = (near <= far) & (near > 0) & (near < t)
            t = np.where(hit, near, t)
            ids = np.where(hit, box_id, ids)
    return t, ids


def _render(
    pose: np.ndarray, f: float, width: int, height: int, boxes: List[Box], ground_extent: float = 1.75
) -> Tuple[View, np.ndarray]:
    """A view of the toy world and its ground-truth instance ids."""
    origins, directions = _rays(pose, f, width, height)
    t, ids = _cast(origins, directions, boxes, ground_extent)
    with np.errstate(invalid="ignore"):
        points = np.where(np.isfinite(t)[..., None], origins + directions * t[..., None], np.nan)
    return View(points, pose, f, f, width / 2, height / 2, width, height), ids


FLOATING_BOX: Box = (np.array([-0.25, -0.25, 0.5]), np.array([0.25, 0.25, 1.0]), 20)


def _aligned_world() -> Tuple[List[View], List[np.ndarray]]:
    """Three top-down cameras whose pixel centres all fall on one lattice of ground points.

    Pixels are 0.125 wide on the ground and the cameras are moved by multiples of that (one is turned by a
    quarter turn), so every ground point seen by one view is a pixel centre in the others and the
    nearest-pixel lookup is exact: ground-truth ids then agree on every correspondence. The box floats, so
    no point of it is near a ground point.
    """
    poses = [_top_down(0.0, 0.0, 4.0), _top_down(0.5, 0.25, 4.0), _top_down(-0.375, 0.5, 4.0, quarter_turns=1)]
    rendered = [_render(pose, 32.0, 32, 32, [FLOATING_BOX]) for pose in poses]
    return [view for view, _ in rendered], [ids for _, ids in rendered]


ALL_PAIRS = [(0, 1), (0, 2), (1, 2)]


def _relabel(ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random one-to-one renaming of the non-zero ids (0 stays 0)."""
    lookup = np.zeros(ids.max() + 1, dtype=np.int64)
    lookup[1:] = rng.choice(np.arange(1, 10_000), size=ids.max(), replace=False)
    return lookup[ids]


def _pinhole(view: View, points: np.ndarray) -> np.ndarray:
    """Pixel coordinates (u, v) of world points, by the textbook K [R | t] with an OpenGL-to-OpenCV flip."""
    world_to_camera = np.linalg.inv(np.vstack([view.camera_to_world[:3], [0, 0, 0, 1]]))
    opencv = np.diag([1.0, -1.0, -1.0]) @ (world_to_camera[:3, :3] @ points.T + world_to_camera[:3, 3:])
    intrinsics = np.array([[view.fx, 0, view.cx], [0, view.fy, view.cy], [0, 0, 1]])
    pixels = intrinsics @ opencv
    return (pixels[:2] / pixels[2]).T


def test_ground_truth_ids_score_one_and_correspondences_see_the_same_point() -> None:
    views, ids = _aligned_world()
    for match in (False, True):
        result = multiview_consistency(views, ids, ALL_PAIRS, match=match)
        assert result.score == 1.0
        assert result.agree == result.counted > 1000
        assert result.num_pairs == 3
        assert result.num_correspondences > result.counted  # background pairs (both 0) are found, not counted
    index_a, index_b = correspondences(views[0], views[2])
    gap = np.linalg.norm(views[0].points.reshape(-1, 3)[index_a] - views[2].points.reshape(-1, 3)[index_b], axis=-1)
    assert index_a.size > 500 and gap.max() < 0.05


def test_per_view_relabelling_scores_one_only_with_matching() -> None:
    views, ids = _aligned_world()
    rng = np.random.default_rng(0)
    relabelled = [_relabel(view_ids, rng) for view_ids in ids]
    assert multiview_consistency(views, relabelled, ALL_PAIRS, match=True).score == 1.0
    assert multiview_consistency(views, relabelled, ALL_PAIRS, match=False).score < 0.1


def test_split_in_one_view_lowers_the_matched_score() -> None:
    views, ids = _aligned_world()
    split = [view_ids.copy() for view_ids in ids]
    rows, cols = np.nonzero(split[1] == 6)
    left = cols < np.median(cols)
    split[1][rows[left], cols[left]] = 99  # region 6 is two objects in view 1 only
    result = multiview_consistency(views, split, ALL_PAIRS, match=True)
    assert 0.8 < result.score < 1.0
    # Only the pairs with view 1 lose agreement: the smaller half of region 6 is left unmatched there.
    assert result.per_pair[(0, 2)][0] == result.per_pair[(0, 2)][1]
    assert result.per_pair[(0, 1)][0] < result.per_pair[(0, 1)][1]


def test_merge_in_one_view_lowers_the_matched_score() -> None:
    views, ids = _aligned_world()
    merged = [view_ids.copy() for view_ids in ids]
    merged[2][merged[2] == 7] = 6  # regions 6 and 7 are one object in view 2 only
    result = multiview_consistency(views, merged, ALL_PAIRS, match=True)
    assert 0.8 < result.score < 1.0
    assert result.per_pair[(0, 1)][0] == result.per_pair[(0, 1)][1]


def test_merging_everything_scores_one() -> None:
    views, ids = _aligned_world()
    one_object = [np.where(view_ids > 0, 1, 0) for view_ids in ids]
    assert multiview_consistency(views, one_object, ALL_PAIRS, match=False).score == 1.0


def test_nothing_counted_gives_nan() -> None:
    views, ids = _aligned_world()
    empty = [np.zeros_like(view_ids) for view_ids in ids]
    result = multiview_consistency(views, empty, ALL_PAIRS, match=True)
    assert math.isnan(result.score) and result.counted == 0 and result.num_pairs == 0
    assert result.num_correspondences > 0
    assert math.isnan(multiview_consistency(views, ids, [], match=False).score)


def test_occluded_points_are_not_correspondences() -> None:
    box: Box = (np.array([-0.4, -0.4, 0.0]), np.array([0.4, 0.4, 0.8]), 20)
    pose_a = _look_at((3.0, 0.3, 2.0), (0.0, 0.0, 0.3))
    pose_b = _look_at((-3.0, -0.5, 1.5), (0.0, 0.0, 0.3))
    view_a, ids_a = _render(pose_a, 150.0, 64, 48, [box], ground_extent=3.0)
    view_b, ids_b = _render(pose_b, 150.0, 64, 48, [box], ground_extent=3.0)
    index_a, _ = correspondences(view_a, view_b, tolerance=0.03)

    valid = np.flatnonzero(np.isfinite(view_a.points).all(-1).reshape(-1))
    points = view_a.points.reshape(-1, 3)[valid]
    uv = _pinhole(view_b, points)
    in_frustum = (uv[:, 0] >= 1) & (uv[:, 0] < view_b.width - 1) & (uv[:, 1] >= 1) & (uv[:, 1] < view_b.height - 1)
    # Hidden from B: the ray from B's centre to the point hits something clearly before it, and so do the rays
    # of the 3×3 pixels of B around the projection (a point that only a sub-pixel sliver of the box hides
    # may still match the surface B sees at the nearest pixel).
    to_point = points - view_b.centre
    distance = np.linalg.norm(to_point, axis=-1)
    first_hit, _ = _cast(np.broadcast_to(view_b.centre, points.shape), to_point / distance[:, None], [box], 3.0)
    reach_b = np.nan_to_num(np.linalg.norm(view_b.points - view_b.centre, axis=-1), nan=np.inf)
    rows, cols = (np.clip(np.floor(uv[:, k]).astype(int), 1, size - 2) for k, size in ((1, 48), (0, 64)))
    nearest_3x3 = np.max([reach_b[rows + dr, cols + dc] for dr in (-1, 0, 1) for dc in (-1, 0, 1)], axis=0)
    hidden = in_frustum & (first_hit < distance - 0.05) & (nearest_3x3 < distance - 0.05)
    visible = in_frustum & (first_hit > distance - 1e-6)
    assert hidden.sum() > 50  # the box hides part of what A sees, inside B's image
    assert not np.isin(valid[hidden], index_a).any()
    assert np.isin(valid[visible], index_a).mean() > 0.9
    # Without the depth check, the hidden points would be paired with B's view of the box.
    loose, _ = correspondences(view_a, view_b, tolerance=1e9)
    assert np.isin(valid[hidden], loose).all()
    result = multiview_consistency([view_a, view_b], [ids_a, ids_b], [(0, 1)], match=False, tolerance=0.03)
    assert result.score > 0.97


def _hand_views() -> Tuple[View, View]:
    """Two 4×4 top-down views of the ground at height 4 with f = 4: each pixel covers 1×1 of ground.

    A is at x = 0 and sees pixel (i, j) at ground point (j − 1.5, 1.5 − i); B is at x = 1 and sees
    (j − 0.5, 1.5 − i). So A's pixel (i, j) and B's pixel (i, j − 1) see the same point. A's pixel (0, 3) has
    no surface.
    """
    rows, cols = np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij")
    points_a = np.stack([cols - 1.5, 1.5 - rows, np.zeros((4, 4))], -1)
    points_a[0, 3] = np.nan
    points_b = np.stack([cols - 0.5, 1.5 - rows, np.zeros((4, 4))], -1)
    view_a = View(points_a, _top_down(0.0, 0.0, 4.0)[:3], 4.0, 4.0, 2.0, 2.0, 4, 4)
    view_b = View(points_b, _top_down(1.0, 0.0, 4.0), 4.0, 4.0, 2.0, 2.0, 4, 4)
    return view_a, view_b


HAND_IDS_A = np.array([[1, 1, 2, 0], [1, 1, 2, 2], [0, 0, 2, 2], [3, 3, 3, 3]])
HAND_IDS_B = np.array([[5, 7, 0, 9], [5, 7, 7, 9], [0, 0, 7, 9], [0, 8, 8, 9]])


def test_hand_computed_two_views() -> None:
    view_a, view_b = _hand_views()
    index_a, index_b = correspondences(view_a, view_b)
    # Columns 1–3 of A are columns 0–2 of B; A's column 0 falls left of B's image; A(0, 3) has no point.
    expected = [(4 * i + j, 4 * i + j - 1) for i in range(4) for j in range(1, 4) if (i, j) != (0, 3)]
    assert list(zip(index_a.tolist(), index_b.tolist())) == expected
    back_b, back_a = correspondences(view_b, view_a)
    # B's column 3 falls right of A's image; B(0, 2) lands on A(0, 3), which has no point.
    assert list(zip(back_a.tolist(), back_b.tolist())) == expected

    # The 11 pairs (A id, B id): (1,5) (2,7) | (1,5) (2,7) (2,7) | (0,0) (2,0) (2,7) | (3,0) (3,8) (3,8).
    # Counted: 10 (not (0,0)). Equal ids: none. Best one-to-one matching 1↔5, 2↔7, 3↔8: 2 + 4 + 2 = 8.
    assert pair_agreement(HAND_IDS_A, HAND_IDS_B, index_a, index_b, match=False) == (0, 10)
    assert pair_agreement(HAND_IDS_A, HAND_IDS_B, index_a, index_b, match=True) == (8, 10)
    shared = np.select([HAND_IDS_B == 5, HAND_IDS_B == 7, HAND_IDS_B == 8], [1, 2, 4], HAND_IDS_B)
    assert pair_agreement(HAND_IDS_A, shared, index_a, index_b, match=False) == (6, 10)  # 1↔1: 2, 2↔2: 4

    # Both directions find the same 11 pixel pairs, so every count doubles.
    result = multiview_consistency([view_a, view_b], [HAND_IDS_A, HAND_IDS_B], [(0, 1)], match=True)
    assert (result.agree, result.counted, result.num_correspondences, result.num_pairs) == (16, 20, 22, 1)
    assert result.score == pytest.approx(0.8)
    assert multiview_consistency([view_a, view_b], [HAND_IDS_A, shared], [(0, 1)]).score == pytest.approx(0.6)


def test_matching_is_one_to_one_and_optimal() -> None:
    ids_a = np.array([1, 1, 1, 2, 2, 0, 0])
    ids_b = np.array([7, 7, 8, 7, 7, 0, 9])
    index = np.arange(7)
    # Co-occurrences (1,7)=2, (1,8)=1, (2,7)=2: 1↔7 alone gives 2, while 1↔8 with 2↔7 gives 3.
    # Counted: all but the (0,0) pair; (0,9) is counted and never agrees.
    assert pair_agreement(ids_a, ids_b, index, index, match=True) == (3, 6)
    assert pair_agreement(ids_a, ids_b, index, index, match=False) == (0, 6)


def test_overlapping_pairs_skips_views_without_overlap() -> None:
    views, _ = _aligned_world()
    sky, _ = _render(_look_at((0.0, 0.0, 4.0), (0.0, 1.0, 10.0)), 32.0, 32, 32, [])
    views = views + [sky]
    assert not np.isfinite(sky.points).any()
    assert overlapping_pairs(views, per_view=2, min_overlap=0.3) == ALL_PAIRS
    assert overlapping_pairs(views, per_view=2, min_overlap=1.01) == []
    one_each = overlapping_pairs(views, per_view=1, min_overlap=0.3)
    assert 2 <= len(one_each) <= 3 and set(one_each) <= set(ALL_PAIRS)


def test_zero_distortion_is_the_pinhole_projection() -> None:
    pose = _look_at((1.0, -2.0, 1.5), (0.2, 0.1, 0.0))
    points = np.random.default_rng(1).uniform(-1, 1, (50, 3))
    pinhole = View(np.zeros((48, 64, 3)), pose, 70.0, 75.0, 31.0, 25.0, 64, 48)
    zero = View(np.zeros((48, 64, 3)), pose, 70.0, 75.0, 31.0, 25.0, 64, 48, np.zeros(6))
    uv, depth = project(pinhole, points)
    assert np.all(depth > 0)
    np.testing.assert_allclose(uv, _pinhole(pinhole, points), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(project(zero, points)[0], uv)
    behind = project(pinhole, 2 * pose[:3, 3:].T - points[:1])  # the point mirrored through the camera centre
    assert behind[1][0] < 0 and np.isnan(behind[0]).all()


def test_radial_distortion_by_hand() -> None:
    # Camera at the origin looking down −z; the point (0.3, −0.2, −2) is (x, y) = (0.3, 0.2) in OpenCV
    # normalised coordinates, r² = 0.13, and k1 = 0.1 scales it by 1 + 0.013: x_d = 0.3039, y_d = 0.2026.
    view = View(np.zeros((80, 100, 3)), np.eye(4), 100.0, 120.0, 50.0, 40.0, 100, 80, [0.1, 0, 0, 0, 0, 0])
    uv, depth = project(view, np.array([[0.6, -0.4, -2.0]]))
    np.testing.assert_allclose(uv[0], [100 * 0.3039 + 50, 120 * 0.2026 + 40], rtol=0, atol=1e-9)
    assert depth[0] == pytest.approx(2.0)


def test_full_distortion_matches_opencv() -> None:
    pose = _look_at((0.5, -2.5, 1.0), (0.0, 0.0, 0.2))
    k1, k2, k3, p1, p2 = -0.08, 0.02, -0.004, 0.003, -0.002
    view = View(np.zeros((48, 64, 3)), pose, 60.0, 62.0, 32.5, 23.5, 64, 48, [k1, k2, k3, 0.0, p1, p2])
    points = np.random.default_rng(2).uniform(-0.6, 0.6, (40, 3))
    world_to_opencv = np.diag([1.0, -1.0, -1.0]) @ np.linalg.inv(pose)[:3]
    rvec, _ = cv2.Rodrigues(world_to_opencv[:, :3])
    intrinsics = np.array([[60.0, 0, 32.5], [0, 62.0, 23.5], [0, 0, 1]])
    expected, _ = cv2.projectPoints(points, rvec, world_to_opencv[:, 3], intrinsics, np.array([k1, k2, p1, p2, k3]))
    np.testing.assert_allclose(project(view, points)[0], expected[:, 0], rtol=0, atol=1e-6)


def test_distorted_nerfstudio_rays_project_back_to_their_pixel_centres() -> None:
    pose = _look_at((0.5, -2.5, 1.0), (0.0, 0.0, 0.2))
    distortion = [-0.05, 0.01, 0.002, 0.0, 0.003, -0.002]
    width, height = 10, 8
    cameras = Cameras(
        camera_to_worlds=torch.tensor(pose[:3], dtype=torch.float32)[None],
        fx=9.0,
        fy=9.5,
        cx=5.2,
        cy=3.9,
        width=width,
        height=height,
        distortion_params=torch.tensor(distortion, dtype=torch.float32)[None],
        camera_type=CameraType.PERSPECTIVE,
    )
    bundle = cameras.generate_rays(camera_indices=0)
    points = (bundle.origins + 2.0 * bundle.directions).double().numpy()
    view = View(points, pose, 9.0, 9.5, 5.2, 3.9, width, height, distortion)
    uv, _ = project(view, points.reshape(-1, 3))
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    np.testing.assert_allclose(uv, np.stack([cols + 0.5, rows + 0.5], -1).reshape(-1, 2), rtol=0, atol=1e-3)
    # So each pixel of a view corresponds to itself in a copy of the view.
    index_a, index_b = correspondences(view, view)
    np.testing.assert_array_equal(index_a, np.arange(width * height))
    np.testing.assert_array_equal(index_b, index_a)
