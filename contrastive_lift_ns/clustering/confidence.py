"""How far to trust each object: a number in [0, 1] from the clustering's own sample of training pixels.

Computed when the clusters are fitted, from the sampled pixels' ids (as ``InstanceClusters.assign`` gives
them), embeddings, classes, and where known their 2D segments and training views. Three parts, each in [0, 1]:

- **Agreement with the 2D segments.** In each training view that sees the object, the IoU (on the sampled
  pixels) between the object and the 2D segment holding most of its pixels there, averaged over the views
  weighted by the object's pixels in each. A merge of two objects covers half of each segment, a fragment a
  part of one, a patch of wall no segment at all; the panoptic-quality match counts an IoU above 0.5.
- **Compactness.** Each pixel's silhouette in embedding space, ``(b - a) / max(a, b)`` clipped at 0, where
  ``a`` is its distance to its object's mean embedding and ``b`` to the nearest mean of another cluster of
  its class (parts of a cluster split in space share an embedding, so they do not count against each other);
  1 when the class has no other cluster.
- **Support.** ``1 - exp(-views / 2)`` over the training views holding at least ``_VIEW_PIXELS`` of its
  sampled pixels: an object seen in one view may be a segmenter's mistake.

The confidence is their geometric mean (without 2D segments, that of the last two): any one part near 0
makes the object doubtful. HDBSCAN's membership strength is not used: the centroids already weight by it, and
the render-time ids (the nearest centroid) are what the user sees.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

_VIEW_PIXELS = 3
_VIEW_SCALE = 2.0


def object_confidence(
    ids: np.ndarray,
    embeddings: np.ndarray,
    classes: np.ndarray,
    segments: Optional[np.ndarray] = None,
    views: Optional[np.ndarray] = None,
    groups: Optional[Dict[int, int]] = None,
) -> Dict[int, Tuple[int, float]]:
    """``{id: (sampled pixels, confidence)}`` for every id > 0 of the sampled pixels.

    ``ids``, ``classes``, ``segments`` and ``views`` are per pixel (M), ``embeddings`` M×D; ``groups`` maps an
    id to its cluster (ids of one cluster do not count against each other's compactness; default: one each).
    """
    object_ids = np.unique(ids[ids > 0])
    if len(object_ids) == 0:
        return {}
    groups = groups or {}
    means = np.stack([embeddings[ids == i].mean(0) for i in object_ids])
    object_class = np.array([np.bincount(classes[ids == i]).argmax() for i in object_ids])
    object_group = np.array([groups.get(int(i), -1 - int(i)) for i in object_ids])
    if segments is not None and views is not None:
        width = int(segments.max(initial=0)) + 1
        keys = views.astype(np.int64) * width + segments
        pair, size = np.unique(keys, return_counts=True)
        segment_sizes = dict(zip(pair.tolist(), size.tolist()))
    result = {}
    for row, object_id in enumerate(object_ids.tolist()):
        member = ids == object_id
        rivals = (object_class == object_class[row]) & (object_group != object_group[row])
        parts = [_compactness(embeddings[member], means[row], means[rivals])]
        if views is not None:
            parts.append(_support(views[member]))
            if segments is not None:
                parts.append(_segment_agreement(member, keys, segment_sizes, width))
        result[object_id] = (int(member.sum()), float(np.prod(parts) ** (1.0 / len(parts))))
    return result


def _compactness(points: np.ndarray, own: np.ndarray, rivals: np.ndarray) -> float:
    if len(rivals) == 0:
        return 1.0
    a = np.linalg.norm(points - own, axis=-1)
    b = np.linalg.norm(points[:, None, :] - rivals[None, :, :], axis=-1).min(-1)
    return float(np.clip((b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0, 1.0).mean())


def _support(views: np.ndarray) -> float:
    seen = int((np.bincount(views) >= _VIEW_PIXELS).sum())
    return float(1.0 - np.exp(-seen / _VIEW_SCALE))


def _segment_agreement(member: np.ndarray, keys: np.ndarray, segment_sizes: Dict[int, int], width: int) -> float:
    """``keys`` are each pixel's view · width + 2D segment; ``segment_sizes`` the sampled pixels of each key."""
    views = keys[member] // width
    per_view = np.bincount(views)
    labelled = keys[member][keys[member] % width > 0]
    weighted = 0.0
    if len(labelled):
        pair, overlap = np.unique(labelled, return_counts=True)
        best = {}  # the view's segment holding most of the object's pixels
        for key, count in zip(pair.tolist(), overlap.tolist()):
            view = key // width
            if count > best.get(view, (0, 0))[1]:
                best[view] = (key, count)
        for view, (key, count) in best.items():
            union = per_view[view] + segment_sizes[key] - count
            weighted += per_view[view] * count / union
    # views where the object lies on pixels without a 2D segment count with IoU 0
    return weighted / len(views)
