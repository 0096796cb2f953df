"""2D instance segments for a rendered view: a simulated segmenter with named error rates, or a classical one.

The simulated segmenter
-----------------------
It starts from the view's ground-truth instance map and applies, in this order, each error of a real 2D
segmenter. Every view draws its own random numbers, so the errors, like the ids, differ between views.

1. **Misses** (``miss_rate``): each object visible in the view gets no segment with a probability
   proportional to a difficulty ``sqrt(median visible area / visible area) * (1 + 2 * occluded fraction)``
   (clipped to [0.25, 4] before the occlusion factor), scaled so that the expected fraction of visible objects
   missed per view is ``miss_rate``. Small and occluded objects are therefore missed more often. Missed pixels
   are labelled "no segment" (id 0, semantics 0).
2. **Under-segmentation** (``under_segment_rate``): two detected objects that touch in the image (share at
   least 3 pixel edges) are merged into one segment with this probability, independently per touching pair;
   chains of merges form one segment.
3. **Over-segmentation** (``over_segment_rate``): each detected, unmerged object with at least 32 visible
   pixels is split with this probability into 2 or 3 parts (a Voronoi partition of its pixels around random
   seed pixels).
4. **False positives** (``false_positives``): a Poisson number with this mean of blob-shaped segments
   (0.2-1 % of the image each) appears on the background.
5. **Boundary errors** (``boundary_px``): the label map is warped by a smooth random displacement field of at
   most this many pixels, so boundaries are off by a pixel or two while segment interiors stay put.
6. **Relabelling**: the segments get distinct random ids, drawn anew in every view (never consistent across
   views). Semantics are 1 (object) on every segment, 0 elsewhere.

Confidence (in [0, 1]) is a per-segment score: U(0.75, 1) for a correct segment, U(0.35, 0.65) for a merged
segment or a part of a split object, U(0.15, 0.45) for a false positive; 0.95 on correctly empty background,
U(0.25, 0.55) on a missed object's pixels; pixels whose label the boundary warp changed get half their score.

Presets (``--preset``; any rate flag overrides its preset value):

=========== ========= ================== =================== ============== ===============
preset      miss_rate over_segment_rate  under_segment_rate  boundary_px    false_positives
=========== ========= ================== =================== ============== ===============
clean       0         0                  0                   0              0
realistic   0.08      0.1                0.15                1              0.5
hard        0.2       0.25               0.35                2              2
=========== ========= ================== =================== ============== ===============

``clean`` gives the ground truth with per-view random ids. The rates are probabilities in [0, 1];
``boundary_px`` is a distance in pixels (at most 8) and ``false_positives`` a mean count per view (at most 20).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, Tuple

import numpy as np
from scipy.ndimage import map_coordinates

from contrastive_lift_ns.segmenters import Segments

_MIN_TOUCH = 3
_MIN_SPLIT_AREA = 32
_WARP_GRID = 6
_LIMITS = {"boundary_px": 8.0, "false_positives": 20.0}


@dataclass(frozen=True)
class SegmenterNoiseConfig:
    """Error rates of the simulated 2D segmenter (see the module docstring for the model)."""

    miss_rate: float = 0.08
    """Expected fraction of the visible objects per view that get no segment (small/occluded ones more often)."""
    over_segment_rate: float = 0.1
    """Probability that a detected object (>= 32 visible pixels) is split into 2-3 parts."""
    under_segment_rate: float = 0.15
    """Probability that two detected objects touching in the image are merged into one segment."""
    boundary_px: float = 1.0
    """Largest displacement of segment boundaries in pixels (0-8)."""
    false_positives: float = 0.5
    """Mean number of spurious segments on the background per view (0-20)."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value, flag = getattr(self, field.name), "--" + field.name.replace("_", "-")
            high = _LIMITS.get(field.name, 1.0)
            if not 0.0 <= value <= high:  # also rejects NaN
                raise ValueError(f"{flag} must lie in [0, {high:g}], got {value}")


PRESETS: Dict[str, SegmenterNoiseConfig] = {
    "clean": SegmenterNoiseConfig(0.0, 0.0, 0.0, 0.0, 0.0),
    "realistic": SegmenterNoiseConfig(),
    "hard": SegmenterNoiseConfig(0.2, 0.25, 0.35, 2.0, 2.0),
}


def simulate_segments(
    instance: np.ndarray, unoccluded: np.ndarray, config: SegmenterNoiseConfig, rng: np.random.Generator
) -> Segments:
    """Turns a ground-truth instance map into noisy 2D segments.

    Args:
        instance: (H, W) ground-truth ids, 0 = background.
        unoccluded: pixels each id would cover without occlusion (index = id), for the miss model.
        config: the error rates.
        rng: this view's random generator.
    """
    height, width = instance.shape
    area = np.bincount(instance.ravel(), minlength=len(unoccluded))
    present = np.flatnonzero(area[1:]) + 1
    missed = np.zeros(len(present), dtype=bool)
    if len(present):
        visible = area[present]
        occluded = 1.0 - visible / np.maximum(unoccluded[present], visible)
        difficulty = np.clip(np.sqrt(np.median(visible) / visible), 0.25, 4.0) * (1 + 2 * occluded)
        missed = rng.random(len(present)) < _spread(config.miss_rate, difficulty)

    # Segment labels before relabelling: an object's own id, or its merge group's smallest id.
    group = np.zeros(len(area), dtype=np.int64)
    kept = present[~missed]
    group[kept] = kept
    pairs = _touching_pairs(instance, len(area))
    pairs = pairs[(group[pairs] > 0).all(1)]
    for a, b in pairs[rng.random(len(pairs)) < config.under_segment_rate]:
        ra, rb = _root(group, a), _root(group, b)
        group[max(ra, rb)] = min(ra, rb)
    while not np.array_equal(group, group[group]):
        group = group[group]
    group_size = np.bincount(group[kept], minlength=len(area))
    labels = group[instance]

    candidates = kept[(group_size[kept] == 1) & (area[kept] >= _MIN_SPLIT_AREA)]
    split = candidates[rng.random(len(candidates)) < config.over_segment_rate]
    num_false = int(rng.poisson(config.false_positives))
    score = np.zeros(len(area) + 3 * len(split) + num_false)
    score[kept] = rng.uniform(0.75, 1.0, len(kept))
    merged = kept[group_size[kept] > 1]
    score[merged] = rng.uniform(0.35, 0.65, len(merged))
    next_label = len(area)

    if len(split):
        order = np.argsort(instance.ravel(), kind="stable")
        starts = np.concatenate([[0], np.cumsum(area)])
        for obj in split:
            pixels = order[starts[obj] : starts[obj + 1]]
            parts = int(rng.integers(2, 4))
            seeds = pixels[rng.choice(len(pixels), parts, replace=False)]
            yx = np.stack(np.divmod(pixels, width), 1)
            seed_yx = np.stack(np.divmod(seeds, width), 1)
            nearest = np.argmin(((yx[:, None] - seed_yx[None]) ** 2).sum(2), axis=1)
            labels.flat[pixels] = next_label + nearest
            score[next_label : next_label + parts] = rng.uniform(0.35, 0.65, parts)
            next_label += parts

    for _ in range(num_false):
        free = np.flatnonzero((labels.ravel() == 0) & (instance.ravel() == 0))
        if not len(free):
            break
        blob = _blob(rng, free[rng.integers(len(free))], height, width) & (labels == 0) & (instance == 0)
        labels[blob] = next_label
        score[next_label] = rng.uniform(0.15, 0.45)
        next_label += 1

    confidence = score[labels]
    confidence[(labels == 0) & (instance == 0)] = 0.95
    missed_ids = present[missed]
    miss_score = np.zeros(len(area))
    miss_score[missed_ids] = rng.uniform(0.25, 0.55, len(missed_ids))
    on_missed = (labels == 0) & (instance > 0)
    confidence[on_missed] = miss_score[instance[on_missed]]

    if config.boundary_px > 0:
        rows, cols = _warp(rng, config.boundary_px, height, width)
        warped = labels[rows, cols]
        confidence = confidence[rows, cols] * np.where(warped != labels, 0.5, 1.0)
        labels = warped

    present_labels = np.unique(labels)
    present_labels = present_labels[present_labels > 0]
    count = len(present_labels)
    new_ids = 1 + rng.choice(max(255, 4 * count), count, replace=False)
    lookup = np.zeros(next_label, dtype=np.int64)
    lookup[present_labels] = new_ids
    ids = lookup[labels]
    return Segments(ids=ids, semantics=(ids > 0).astype(np.uint8), confidence=confidence.astype(np.float32))


def _spread(rate: float, weights: np.ndarray) -> np.ndarray:
    """Per-item probabilities proportional to ``weights`` (capped at 1) whose mean is ``rate``."""
    if rate <= 0 or not len(weights):
        return np.zeros(len(weights))
    lo, hi = 0.0, 1.0 / weights.min()
    for _ in range(50):  # bisection on the scale; the mean is monotone in it
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.clip(mid * weights, 0, 1).mean() < rate else (lo, mid)
    return np.clip(hi * weights, 0.0, 1.0)


def _touching_pairs(instance: np.ndarray, num_ids: int) -> np.ndarray:
    """(m, 2) id pairs (a < b, both objects) sharing at least _MIN_TOUCH pixel edges, sorted."""
    a = np.concatenate([instance[:, :-1].ravel(), instance[:-1].ravel()]).astype(np.int64)
    b = np.concatenate([instance[:, 1:].ravel(), instance[1:].ravel()]).astype(np.int64)
    edge = (a != b) & (a > 0) & (b > 0)
    codes, counts = np.unique(np.minimum(a[edge], b[edge]) * num_ids + np.maximum(a[edge], b[edge]), return_counts=True)
    codes = codes[counts >= _MIN_TOUCH]
    return np.stack([codes // num_ids, codes % num_ids], 1)


def _root(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        i = parent[i]
    return int(i)


def _blob(rng: np.random.Generator, center: int, height: int, width: int) -> np.ndarray:
    """A wobbly ellipse covering 0.2-1 % of the image around flat pixel ``center``."""
    cy, cx = divmod(int(center), width)
    area = max(12.0, rng.uniform(0.002, 0.01) * height * width)
    aspect, angle, phase = rng.uniform(0.5, 2.0), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    ry, rx = np.sqrt(area / np.pi * aspect), np.sqrt(area / np.pi / aspect)
    y, x = np.mgrid[:height, :width]
    dy, dx = y - cy, x - cx
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
    wobble = 1.0 + 0.2 * np.sin(3 * np.arctan2(v, u) + phase)
    return u * u + v * v <= wobble**2


def _warp(rng: np.random.Generator, amplitude: float, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Source rows and columns of a smooth random warp whose displacements are at most ``amplitude`` pixels."""
    coarse = rng.normal(size=(2, _WARP_GRID, _WARP_GRID))
    grid = np.meshgrid(np.linspace(0, _WARP_GRID - 1, height), np.linspace(0, _WARP_GRID - 1, width), indexing="ij")
    shift = [np.rint(amplitude * np.tanh(map_coordinates(c, grid, order=1))).astype(np.int64) for c in coarse]
    y, x = np.mgrid[:height, :width]
    return np.clip(y + shift[0], 0, height - 1), np.clip(x + shift[1], 0, width - 1)
