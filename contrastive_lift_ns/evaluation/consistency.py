"""Multi-view consistency of instance labellings, a score that needs no ground truth.

**Correspondences.** Two views that overlap see some surface points in both. Each view comes with the world
position of the surface behind each pixel (:class:`View`, ``points``; NaN where there is none). A pixel *a* of
view A and a pixel *b* of view B correspond (:func:`correspondences`) when A's point projects into B's image,
in front of B's camera, with *b* the pixel whose centre is nearest to the projection, and B's point at *b* lies
within ``tolerance × (distance from B's camera to A's point)`` of A's point. The last condition is the
occlusion check: it keeps the pair only if the surface that B sees at *b* is the surface A sees at *a*, so a
point hidden from B (behind another object) gives no correspondence.

**What counts** (:func:`pair_agreement`). A labelling gives each pixel of each view an integer instance id,
0 meaning "no instance" (background, unlabelled). For each correspondence (a, b) with ids (i_a, i_b):

- both ids 0: not counted. Agreeing on "nothing" says nothing about the instances, and counting it would
  let the background (often most of the pixels) dominate the score and reward labelling nothing;
- exactly one id 0: counted, never agrees (an object that one view labels and the other drops);
- both ids non-zero: counted; agrees when the ids are equal (``match=False``), or, with ``match=True``, when
  the pair (i_a, i_b) belongs to the one-to-one matching of A's non-zero ids to B's non-zero ids that
  maximises the number of agreeing correspondences (Hungarian matching on the pair's id co-occurrence counts,
  :func:`scipy.optimize.linear_sum_assignment`).

``match=False`` is for labellings whose ids are meant to be global (a lifted 3D instance field, the ground
truth). ``match=True`` is for per-view labellings whose ids are arbitrary in each view (a 2D segmenter's
maps): it gives their best case under any renaming of the ids per pair of views. The matching is made per pair
of views, not over all views at once, so it is an upper bound on what any one global renaming would reach.
For the same maps, the ``match=True`` score is never below the ``match=False`` one.

**The score** (:func:`multiview_consistency`) pools the counts over the given pairs of views, in both
directions (A's pixels projected into B, and B's into A; one matching per pair covers both):

    score = Σ_pairs agree / Σ_pairs counted,

NaN when nothing is counted. A correspondence found in both directions is counted twice, so every pair is
scored symmetrically.

**Reading it.** The score measures only whether the labelling is *consistent*, not whether it is *right*:
a labelling that merges everything into one id (or labels every object with the same id in every view, or
over-segments the same way in every view) scores 1. Read it beside the number of objects (distinct non-zero
ids) and, where there is ground truth, beside panoptic quality. It falls when an object is split or merged
in some views only, when its id changes between views (``match=False``), or when it is labelled in one view
and not in another.

**Tolerance.** B's point is looked up at the *nearest* pixel, so even for the same surface it can be off by
up to half a pixel's footprint on the surface, about ``0.7 · distance / f / cos(incidence)`` for focal length
``f`` in pixels. ``tolerance`` must exceed that (the default 0.01 suits ``f`` of a few hundred pixels) and stay
well below the gaps between surfaces that should count as different. For the same reason, a point that an
occluder hides from B by less than a pixel (just behind a silhouette) can still match the surface B sees at
the nearest pixel.

The functions are plain numpy (and scipy for the matching), independent of nerfstudio. From a nerfstudio
camera and model outputs (converted to numpy) a caller builds a view as::

    bundle = cameras.generate_rays(camera_indices=i)          # unit directions; depth is along them
    points = bundle.origins + bundle.directions * outputs["depth"]
    points[outputs["accumulation"][..., 0] < 0.5] = nan       # no surface
    View(points, cameras.camera_to_worlds[i], fx, fy, cx, cy, width, height, cameras.distortion_params[i])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass
class View:
    """One view: the world position of the surface behind each pixel, and the camera that saw it."""

    points: np.ndarray
    """H×W×3 world position of each pixel's surface (ray origin + unit direction × depth); NaN where none."""
    camera_to_world: np.ndarray
    """3×4 or 4×4 camera-to-world matrix, nerfstudio/OpenGL convention: the camera looks down −z, +y is up,
    +x is right. The rotation part must be orthonormal (no scale)."""
    fx: float
    fy: float
    cx: float
    cy: float
    """Intrinsics in pixels, for this view's resolution. Pixel (row i, column j) has its centre at
    (u, v) = (j + 0.5, i + 0.5), as in nerfstudio."""
    width: int
    height: int
    distortion: Optional[np.ndarray] = None
    """nerfstudio's OpenCV parameters [k1, k2, k3, k4, p1, p2], or None for a pinhole camera. As in
    nerfstudio, k4 is the r⁸ term of the radial polynomial."""

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float64)
        if self.points.shape != (self.height, self.width, 3):
            raise ValueError(f"points must be H×W×3 = {(self.height, self.width, 3)}, got {self.points.shape}")
        self.camera_to_world = np.asarray(self.camera_to_world, dtype=np.float64)
        if self.camera_to_world.shape not in ((3, 4), (4, 4)):
            raise ValueError(f"camera_to_world must be 3×4 or 4×4, got {self.camera_to_world.shape}")
        if self.distortion is not None:
            self.distortion = np.asarray(self.distortion, dtype=np.float64).reshape(-1)
            if self.distortion.size != 6:
                raise ValueError(f"distortion must be [k1, k2, k3, k4, p1, p2], got {self.distortion.size} values")

    @property
    def centre(self) -> np.ndarray:
        """The camera centre in world coordinates."""
        return self.camera_to_world[:3, 3]


@dataclass
class ConsistencyResult:
    """Multi-view consistency of one labelling over a set of view pairs."""

    score: float
    """Σ agree / Σ counted over the pairs, in [0, 1]; NaN when nothing is counted."""
    agree: int
    """Number of agreeing correspondences, both directions of every pair."""
    counted: int
    """Number of counted correspondences (at least one id non-zero), both directions of every pair."""
    num_correspondences: int
    """Number of correspondences found, including those where both ids are 0."""
    num_pairs: int
    """Number of view pairs with at least one counted correspondence."""
    per_pair: Dict[Tuple[int, int], Tuple[int, int]] = field(default_factory=dict)
    """(agree, counted) of each given pair (i, j)."""


def project(view: View, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Projects world points into a view, with its distortion.

    Args:
        view: the camera to project into (its ``points`` are not used).
        points: N×3 world positions.

    Returns:
        ``(uv, depth)``: N×2 pixel coordinates (u = column, v = row; pixel (i, j) has its centre at
        (j + 0.5, i + 0.5)), NaN for points not in front of the camera; and the N depths along the viewing
        direction (positive in front of the camera).
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    rotation, centre = view.camera_to_world[:3, :3], view.camera_to_world[:3, 3]
    camera = (points - centre) @ rotation  # = Rᵀ (p − t), row-wise
    # OpenGL (x right, y up, looking down −z) to OpenCV (x right, y down, looking down +z).
    depth = -camera[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(depth > 0, camera[:, 0] / depth, np.nan)
        y = np.where(depth > 0, -camera[:, 1] / depth, np.nan)
    if view.distortion is not None and np.any(view.distortion != 0):
        k1, k2, k3, k4, p1, p2 = view.distortion
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
        x, y = (
            x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x),
            y * radial + 2.0 * p2 * x * y + p1 * (r2 + 2.0 * y * y),
        )
    uv = np.stack([view.fx * x + view.cx, view.fy * y + view.cy], axis=-1)
    return uv, depth


def correspondences(a: View, b: View, tolerance: float = 0.01) -> Tuple[np.ndarray, np.ndarray]:
    """Pixels of view A and view B that see the same surface point.

    Every pixel of A with a point is projected into B; it corresponds to B's pixel nearest to the projection
    if the projection is inside B's image and in front of B's camera, and B's point at that pixel is within
    ``tolerance × (distance from B's camera centre to A's point)`` of A's point (the occlusion check).

    Returns:
        ``(index_a, index_b)``: flat pixel indices (row × width + column) into A and B, one entry per
        correspondence, in increasing order of ``index_a``. Not symmetric: ``correspondences(b, a)`` starts
        from B's pixels.
    """
    candidates = np.flatnonzero(np.isfinite(a.points).all(axis=-1).reshape(-1))
    return _correspondences(a, b, candidates, tolerance)


def _correspondences(a: View, b: View, candidates: np.ndarray, tolerance: float) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`correspondences` for the given flat pixel indices of A, all of which have a point."""
    points_a = a.points.reshape(-1, 3)[candidates]
    uv, depth = project(b, points_a)
    with np.errstate(invalid="ignore"):
        # NaN coordinates (behind the camera) fail these comparisons.
        inside = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < b.width) & (uv[:, 1] >= 0) & (uv[:, 1] < b.height)
    candidates, points_a, uv = candidates[inside], points_a[inside], uv[inside]
    # Pixel centres are at +0.5, so the nearest pixel is the floor of the coordinate.
    cols = np.minimum(np.floor(uv[:, 0]).astype(np.int64), b.width - 1)
    rows = np.minimum(np.floor(uv[:, 1]).astype(np.int64), b.height - 1)
    index_b = rows * b.width + cols
    points_b = b.points.reshape(-1, 3)[index_b]
    gap = np.linalg.norm(points_b - points_a, axis=-1)
    reach = np.linalg.norm(points_a - b.centre, axis=-1)
    # A NaN point in B (no surface) fails the comparison. The check also rejects a projection that strong
    # distortion folds back into the image: B's point at that pixel then lies on another ray.
    same_surface = gap <= tolerance * reach
    return candidates[same_surface], index_b[same_surface]


def pair_agreement(
    ids_a: np.ndarray, ids_b: np.ndarray, index_a: np.ndarray, index_b: np.ndarray, match: bool = False
) -> Tuple[int, int]:
    """Agreement of two views' instance ids over their correspondences.

    Args:
        ids_a: integer instance ids of view A (any shape, indexed flat); 0 = no instance.
        ids_b: integer instance ids of view B.
        index_a: flat pixel indices into A, e.g. from :func:`correspondences`.
        index_b: the corresponding flat pixel indices into B.
        match: False: a correspondence agrees when its ids are equal. True: the ids are first matched
            one-to-one (A's non-zero ids to B's), maximising the number of agreeing correspondences.

    Returns:
        ``(agree, counted)``: correspondences with at least one non-zero id are counted; one whose ids are
        both 0 is not; one with exactly one 0 is counted and never agrees.
    """
    id_a = np.asarray(ids_a).reshape(-1)[np.asarray(index_a, dtype=np.int64)]
    id_b = np.asarray(ids_b).reshape(-1)[np.asarray(index_b, dtype=np.int64)]
    counted = int(np.count_nonzero((id_a != 0) | (id_b != 0)))
    if not match:
        # Equal ids with one non-zero are both non-zero, so pairs of zeros never reach this sum.
        return int(np.count_nonzero((id_a == id_b) & (id_a != 0))), counted
    both = (id_a != 0) & (id_b != 0)
    if not both.any():
        return 0, counted
    labels_a, row = np.unique(id_a[both], return_inverse=True)
    labels_b, col = np.unique(id_b[both], return_inverse=True)
    cooccurrence = np.bincount(row * labels_b.size + col, minlength=labels_a.size * labels_b.size)
    cooccurrence = cooccurrence.reshape(labels_a.size, labels_b.size)
    rows, cols = linear_sum_assignment(cooccurrence, maximize=True)
    return int(cooccurrence[rows, cols].sum()), counted


def multiview_consistency(
    views: Sequence[View],
    ids: Sequence[np.ndarray],
    pairs: Sequence[Tuple[int, int]],
    match: bool = False,
    tolerance: float = 0.01,
) -> ConsistencyResult:
    """Multi-view consistency of a labelling: Σ agree / Σ counted over the given pairs, both directions.

    See the module docstring for the definition.

    Args:
        views: the views, with their surface points and cameras.
        ids: one H×W integer instance map per view, in the order of ``views``; 0 = no instance.
        pairs: (i, j) indices of the view pairs to compare, e.g. from :func:`overlapping_pairs`. Each pair is
            compared in both directions (i's pixels projected into j and j's into i), so (i, j) and (j, i) are
            the same pair; give each once.
        match: False for labellings with global ids; True to match ids one-to-one per pair first (per-view
            labellings with arbitrary ids). With True, one matching covers both directions of a pair.
        tolerance: the relative distance of the occlusion check, see :func:`correspondences`.
    """
    if len(ids) != len(views):
        raise ValueError(f"need one id map per view, got {len(ids)} maps for {len(views)} views")
    for k, (view, labels) in enumerate(zip(views, ids)):
        if np.shape(labels) != (view.height, view.width):
            raise ValueError(f"id map {k} has shape {np.shape(labels)}, its view is {(view.height, view.width)}")
    agree_total = counted_total = found = used = 0
    per_pair: Dict[Tuple[int, int], Tuple[int, int]] = {}
    for i, j in pairs:
        i, j = int(i), int(j)
        if i == j:
            raise ValueError(f"pair ({i}, {j}) compares a view with itself")
        forward_a, forward_b = correspondences(views[i], views[j], tolerance)
        backward_b, backward_a = correspondences(views[j], views[i], tolerance)
        index_i = np.concatenate([forward_a, backward_a])
        index_j = np.concatenate([forward_b, backward_b])
        agree, counted = pair_agreement(ids[i], ids[j], index_i, index_j, match=match)
        per_pair[(i, j)] = (agree, counted)
        agree_total += agree
        counted_total += counted
        found += index_i.size
        used += counted > 0
    score = agree_total / counted_total if counted_total else float("nan")
    return ConsistencyResult(score, agree_total, counted_total, found, used, per_pair)


def overlapping_pairs(
    views: Sequence[View],
    per_view: int = 3,
    min_overlap: float = 0.2,
    tolerance: float = 0.01,
    stride: int = 4,
) -> List[Tuple[int, int]]:
    """View pairs that overlap enough to compare.

    For each view, the other views are ranked by the fraction of its pixels with a point that have a
    correspondence in them (:func:`correspondences`); the best ``per_view`` with a fraction of at least
    ``min_overlap`` are kept. This tries every ordered pair, so it costs N² projections of the subsampled
    pixels.

    Args:
        views: the views.
        per_view: the most partners chosen by each view (a view can still be in more pairs, chosen by others).
        min_overlap: the least fraction of a view's pixels (with a point) that must see the partner.
        tolerance: the relative distance of the occlusion check.
        stride: only pixels whose row and column are multiples of ``stride`` are tried, for speed.

    Returns:
        Sorted (i, j) pairs with i < j, each once.
    """
    chosen = set()
    for i, view in enumerate(views):
        valid = np.isfinite(view.points).all(axis=-1)
        sampled = np.zeros_like(valid)
        sampled[::stride, ::stride] = True
        candidates = np.flatnonzero((valid & sampled).reshape(-1))
        if candidates.size == 0:
            continue
        overlaps = []
        for j, other in enumerate(views):
            if j != i:
                overlap = _correspondences(view, other, candidates, tolerance)[0].size / candidates.size
                overlaps.append((-overlap, j))
        # Largest overlap first; ties go to the lower view index.
        for negative_overlap, j in sorted(overlaps)[:per_view]:
            if -negative_overlap >= min_overlap:
                chosen.add((min(i, j), max(i, j)))
    return sorted(chosen)
