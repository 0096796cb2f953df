"""Splitting an embedding cluster that holds several objects apart in space.

The contrastive loss only pushes apart objects that appear in one view, and the choice of ``min_cluster_size``
only sees merges within a view. Two objects that are never seen together can therefore share an embedding
(with D = 3 they often do in a large room) and come out of HDBSCAN as one cluster. Every clustered pixel has a
3D point (its rendered depth), so such a cluster shows up as separate blobs in space:

1. **Blobs.** A subsample of the cluster's points is linked wherever two points are closer than
   ``_GAP_FACTOR`` times the typical spacing of its points (the 95th percentile of the distance to the
   ``_NEIGHBOURS``-th neighbour); the connected parts are the blobs. Every other point joins the blob of its
   nearest subsampled point.
2. **One 2D segment, one object.** Blobs that share a 2D segment of one view (each holding a tenth of that
   segment's points, and at least two) are joined again: the segmenter saw them as one thing, so the gap
   between them is a depth error (a floater, a surface seen through a thin gap), not two objects. Two objects
   that are never in one view never share a segment.
3. **Large enough.** Parts with fewer than ``min_points`` points join the nearest large part.

A split part keeps the cluster's embedding centroid; pixels that embed into the cluster are told apart by their
3D point (the part with the nearest anchor, a few of its points kept for that).
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

_SUBSAMPLE = 3000
_NEIGHBOURS = 4
_GAP_FACTOR = 3.0
_SHARED_SEGMENT = 0.1
ANCHORS_PER_PART = 64
"""3D points kept per split part, to assign rendered pixels to the nearest part."""


def spatial_parts(
    positions: np.ndarray, labels: Optional[np.ndarray], min_points: int, seed: int = 0
) -> List[np.ndarray]:
    """The cluster's points (``positions``, M×3; NaN where a pixel sees no surface) grouped into parts that lie
    apart in space; returns each part's point indices (NaN points go to the largest part). ``labels`` (M×2:
    view, 2D segment id) joins blobs that share a segment; one part means no split."""
    everything = np.arange(len(positions))
    finite = np.flatnonzero(np.isfinite(positions).all(-1))
    if len(finite) < 2 * max(min_points, _NEIGHBOURS + 1):
        return [everything]
    rng = np.random.default_rng(seed)
    sub = finite if len(finite) <= _SUBSAMPLE else np.sort(rng.choice(finite, _SUBSAMPLE, replace=False))
    tree = cKDTree(positions[sub])
    spacing = tree.query(positions[sub], k=_NEIGHBOURS + 1)[0][:, -1]
    gap = _GAP_FACTOR * float(np.percentile(spacing, 95))
    if not gap > 0:
        return [everything]
    pairs = tree.query_pairs(gap, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(sub), len(sub)))
    count, blob_of_sub = connected_components(graph, directed=False)
    if count == 1:
        return [everything]
    blob = blob_of_sub[tree.query(positions[finite])[1]]
    if labels is not None:
        blob = _join_shared_segments(blob, labels[finite], count)
    blobs, sizes = np.unique(blob, return_counts=True)
    large = blobs[sizes >= min_points]
    if len(large) <= 1:
        return [everything]
    # small blobs join the large blob nearest to them
    small = ~np.isin(blob, large)
    if small.any():
        is_large = ~small
        nearest = cKDTree(positions[finite][is_large]).query(positions[finite][small])[1]
        blob[small] = blob[is_large][nearest]
    parts = [finite[blob == b] for b in large]
    unplaced = np.setdiff1d(everything, finite)
    if len(unplaced):
        biggest = int(np.argmax([len(p) for p in parts]))
        parts[biggest] = np.sort(np.concatenate([parts[biggest], unplaced]))
    return parts


def _join_shared_segments(blob: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Blob ids after joining blobs that share a 2D segment of one view (union-find over the blobs)."""
    parent = np.arange(count)

    def root(b: int) -> int:
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        return b

    labelled = labels[:, 1] > 0
    keys = np.unique(labels[labelled], axis=0, return_inverse=True)[1].reshape(-1)
    table = coo_matrix((np.ones(len(keys)), (keys, blob[labelled])), shape=(int(keys.max(initial=-1)) + 1, count))
    table = table.tocsr()
    totals = np.asarray(table.sum(1)).reshape(-1)
    for segment in range(table.shape[0]):
        row = table.getrow(segment)
        holders = row.indices[(row.data >= 2) & (row.data >= _SHARED_SEGMENT * totals[segment])]
        for other in holders[1:]:
            parent[root(int(other))] = root(int(holders[0]))
    return np.array([root(int(b)) for b in range(count)])[blob]


def anchors(positions: np.ndarray, part: np.ndarray, seed: int = 0) -> np.ndarray:
    """Up to ``ANCHORS_PER_PART`` finite 3D points of one part."""
    finite = part[np.isfinite(positions[part]).all(-1)]
    if len(finite) > ANCHORS_PER_PART:
        finite = np.random.default_rng(seed).choice(finite, ANCHORS_PER_PART, replace=False)
    return positions[finite]
