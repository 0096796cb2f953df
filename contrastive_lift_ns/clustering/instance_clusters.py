"""From embeddings to objects: HDBSCAN centroids per thing class, and nearest-centroid ids for every pixel.

Procedure (paper §3 "Rendering instance segmentation maps", Appendix B.3):

1. The model renders the fast embeddings and semantics of pixels sampled from training views.
2. The pixels are grouped by predicted semantic class; only thing classes get instances.
3. Each group is clustered with HDBSCAN: points more than ``outlier_sigma`` standard deviations from the
   class mean (in any dimension) are dropped, then ``min_samples=1`` and ``allow_single_cluster=True``.
   ``min_cluster_size`` matters most: too small splits objects into speckles, too large merges small
   objects. The paper tunes it by hand against the 2D segments of the training views; unless it is set, we
   do the same automatically: sizes from 0.05 % to 12.8 % of the group's points are scored by how well their
   clusters reproduce the 2D segments *within each view*, by panoptic quality with the 2D segments as
   the reference (a segment matches a cluster of its view when they overlap by IoU > 0.5 on the sampled
   pixels). PQ counts segments, not pixel pairs, so a merge of two small objects costs as much as a merge of
   two large ones (a pair-counting score is dominated by the largest segments and let merges through).
   Objects never seen together are not told apart by that score, nor by the loss, so merging them is free and
   the score drifts up with the size: the smallest size within ``size_tolerance`` of the best score wins.
4. Each cluster's centroid is the mean of its members weighted by HDBSCAN's membership strength.
5. With the pixels' 3D points (their rendered depth), a cluster that lies in separate blobs in space is split
   into one object per blob (``spatial_split.py``): objects never seen in one view are not told apart by the
   size choice nor by the loss, and may share an embedding.
6. Any pixel of any view gets the id of the nearest centroid of its own predicted class; stuff gets id 0. When
   that centroid's cluster was split, the pixel's 3D point picks the part (the nearest of the parts' anchors).

One space for both steps: centroids are computed and pixels assigned in the raw embedding space, the space
whose distances the contrastive loss shaped. (The paper min-max rescales the embeddings for clustering; the
authors' code then assigns pixels in raw space, a mismatch we avoid.)

Noise and far-away pixels: HDBSCAN's noise points do not shape any centroid, but at render time every
thing pixel, noise or not and however far from every centroid, takes its nearest centroid's id. Leaving far
pixels unlabelled would only turn them into false negatives for PQ, while the nearest centroid is usually
the object the pixel belongs to.

Ids are stable across re-clusterings: new centroids are matched to the previous ones (Hungarian matching on
distance) and keep their ids, so the viewer's colours do not shuffle while training goes on. Fresh ids start
above ``reserved_ids``, the ids that hand corrections gave the parts of split objects (``corrections.py``).

Each object also keeps its size in sampled pixels and a confidence in [0, 1] (``confidence.py``), both from the
sample it was fitted on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import hdbscan
import numpy as np
import torch
from jaxtyping import Float, Int
from nerfstudio.configs.base_config import InstantiateConfig
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from torch import Tensor, nn

from contrastive_lift_ns.clustering.confidence import object_confidence
from contrastive_lift_ns.clustering.spatial_split import anchors, spatial_parts
from contrastive_lift_ns.evaluation.panoptic_quality import panoptic_quality
from contrastive_lift_ns.validation import require

_SIZE_FRACTIONS = tuple(0.0005 * 2**k for k in range(9))  # 0.05 % … 12.8 %
_ASSIGN_CHUNK = 4096


@dataclass
class ClusteringConfig(InstantiateConfig):
    """How embeddings become objects."""

    _target: Type = field(default_factory=lambda: InstanceClusters)
    """Target class to instantiate."""
    num_pixels: int = 50_000
    """Pixels sampled from training views and rendered for each clustering (the same pixels every time)."""
    segment_share: float = 0.75
    """Share of those pixels spread evenly over the training views' 2D segments (the same number for each segment
    of each view), so that a small object seen in few views gets as many points per view as a large one; the
    rest are uniform over the pixels."""
    min_cluster_size: Optional[int] = None
    """HDBSCAN's smallest object, in sampled pixels. None chooses it per class among fractions of the class's
    sampled pixels (0.05 % to 12.8 %) by how well its clusters reproduce the 2D segments within each
    training view (see ``size_tolerance``), as the paper tunes it by hand on the training views' 2D segments."""
    size_tolerance: float = 0.01
    """When choosing min_cluster_size, the smallest size whose score is within this of the best wins. The score
    sees splits but not merges of objects never in one view, so on a flat score the larger sizes win by a hair
    while merging objects (at 100 objects, 0.005 of score for 11 fewer matched objects)."""
    outlier_sigma: float = 3.0
    """Points further than this many standard deviations from their class mean are left out of the fit."""
    recluster_every: int = 1000
    """Re-cluster every this many training steps once the instance loss is on (0: only at the end)."""

    def __post_init__(self) -> None:
        require(self, "num_pixels", self.num_pixels >= 100, "must be at least 100")
        require(self, "segment_share", 0.0 <= self.segment_share <= 1.0, "must lie in [0, 1]")
        require(
            self, "min_cluster_size", self.min_cluster_size is None or self.min_cluster_size >= 2, "must be at least 2"
        )
        require(self, "size_tolerance", self.size_tolerance >= 0, "must not be negative")
        require(self, "outlier_sigma", self.outlier_sigma > 0, "must be positive")
        require(self, "recluster_every", self.recluster_every >= 0, "must not be negative")


class InstanceClusters(nn.Module):
    """The cached objects, saved in checkpoints through ``get_extra_state``; their number varies.

    One row per object: its embedding centroid, class, id, cluster (``groups``: the parts of a split cluster
    share a group and a centroid), 3D position, size (sampled pixels) and confidence; plus the anchors (3D
    points) of the parts of split clusters.
    """

    def __init__(self, config: ClusteringConfig, thing_classes: Sequence[int]) -> None:
        super().__init__()
        self.config = replace(config)  # its own copy: the model's config is not changed behind its back
        self.thing_classes = tuple(thing_classes)
        self.centroids = torch.empty(0, 0)
        self.classes = torch.empty(0, dtype=torch.long)
        self.ids = torch.empty(0, dtype=torch.long)
        self.groups = torch.empty(0, dtype=torch.long)
        self.positions = torch.empty(0, 3)
        self.anchors = torch.empty(0, 3)
        self.anchor_objects = torch.empty(0, dtype=torch.long)
        self.sizes = torch.empty(0, dtype=torch.long)
        self.confidence = torch.empty(0)
        self.reserved_ids = 0
        """Ids up to this one are taken outside the clustering (by hand corrections); fresh ids start above."""
        self.min_cluster_sizes: Dict[int, int] = {}
        """The min_cluster_size each thing class was clustered with last (chosen or given)."""

    @property
    def fitted(self) -> bool:
        """Whether a clustering has run; it may have found no objects (its centroids then still have a width)."""
        return self.centroids.shape[-1] > 0

    def fit(
        self,
        embeddings: Float[Tensor, "M D"],
        classes: Int[Tensor, "M"],  # noqa: F821 (a jaxtyping shape, not a name)
        segments: Optional[Int[Tensor, "M"]] = None,  # noqa: F821
        views: Optional[Int[Tensor, "M"]] = None,  # noqa: F821
        min_cluster_size: Optional[int] = None,
        positions: Optional[Float[Tensor, "M 3"]] = None,
    ) -> Dict[str, Any]:
        """Replaces the objects with those of a new clustering; returns per-class statistics.

        ``min_cluster_size`` overrides the configured size for this clustering. ``segments`` and ``views`` (each
        pixel's 2D segment id and training view) choose the size when neither sets it. ``positions`` (each
        pixel's 3D point, NaN where it sees no surface) split clusters that lie apart in space.
        """
        min_cluster_size = min_cluster_size or self.config.min_cluster_size
        if min_cluster_size is None and (segments is None or views is None):
            raise ValueError("choosing min_cluster_size needs the sampled pixels' 2D segments and views")
        embeddings_np = embeddings.detach().cpu().double().numpy()
        classes_np = classes.detach().cpu().numpy()
        labels = None if segments is None else np.stack([views.cpu().numpy(), segments.cpu().numpy()], -1)
        positions_np = None if positions is None else positions.detach().cpu().double().numpy()
        objects: List[Dict[str, Any]] = []
        stats = {}
        for thing in self.thing_classes:
            chosen = classes_np == thing
            points = embeddings_np[chosen]
            if len(points) < 2:
                continue
            z = np.abs(points - points.mean(0)) / (points.std(0) + 1e-9)
            inlier = (z <= self.config.outlier_sigma).all(-1)
            points = points[inlier]
            pixel_labels = None if labels is None else labels[chosen][inlier]
            size, found, score = _cluster(points, pixel_labels, min_cluster_size, self.config.size_tolerance)
            if found is None:
                continue
            where = None if positions_np is None else positions_np[chosen][inlier]
            parts = _objects(points, found, where, pixel_labels, size, thing, first_group=len(objects))
            objects += parts
            stats[thing] = {
                "points": len(points),
                "min_cluster_size": size,
                "clusters": len(found),
                "objects": len(parts),
                "score": score,
            }
        self._set_objects(objects, embeddings.shape[-1])
        self._rate(embeddings, classes, positions, segments, views)
        self.min_cluster_sizes = {thing: stat["min_cluster_size"] for thing, stat in stats.items()}
        return stats

    def _set_objects(self, objects: List[Dict[str, Any]], dim: int) -> None:
        def column(key: str, dtype, width: Optional[int] = None) -> Tensor:
            if not objects:
                return torch.zeros((0,) if width is None else (0, width), dtype=dtype)
            return torch.as_tensor(np.stack([o[key] for o in objects]), dtype=dtype)

        centroids, classes = column("centroid", torch.float32, dim), column("class", torch.long)
        positions = column("position", torch.float32, 3)
        ids = self._stable_ids(centroids, classes, positions)
        split = [(index, o) for index, o in enumerate(objects) if o["anchors"] is not None]
        anchor_objects = [torch.full((len(o["anchors"]),), index) for index, o in split]
        self._set(
            centroids,
            classes,
            ids,
            column("group", torch.long),
            positions,
            torch.as_tensor(np.concatenate([o["anchors"] for _, o in split]) if split else np.zeros((0, 3))).float(),
            torch.cat(anchor_objects) if split else torch.zeros(0, dtype=torch.long),
        )

    def _rate(
        self, embeddings: Tensor, classes: Tensor, positions: Optional[Tensor], segments: Optional[Tensor], views
    ) -> None:
        """Each object's size in the sampled pixels (as ``assign`` labels them) and its confidence."""
        ids = _numpy(self.assign(embeddings, classes, positions))
        groups = dict(zip(self.ids.tolist(), self.groups.tolist()))
        rated = object_confidence(
            ids, _numpy(embeddings).astype(np.float64), _numpy(classes), _numpy(segments), _numpy(views), groups
        )
        rows = [rated.get(i, (0, 0.0)) for i in self.ids.tolist()]
        device = self.centroids.device
        self.sizes = torch.tensor([r[0] for r in rows], dtype=torch.long, device=device)
        self.confidence = torch.tensor([r[1] for r in rows], dtype=torch.float32, device=device)

    def _stable_ids(self, centroids: Tensor, classes: Tensor, positions: Tensor) -> Tensor:
        """Reuse the id of the previous object each new one is matched to (by embedding, and by 3D position
        where both have one, which tells the parts of a split cluster apart); fresh ids for the rest."""
        ids = torch.zeros(len(centroids), dtype=torch.long)
        if self.fitted and self.centroids.shape[-1] == centroids.shape[-1]:
            old_centroids, old_classes, old_ids = self.centroids.cpu(), self.classes.cpu(), self.ids.cpu()
            for thing in classes.unique().tolist():
                new_idx = torch.nonzero(classes == thing)[:, 0]
                old_idx = torch.nonzero(old_classes == thing)[:, 0]
                if len(old_idx):
                    cost = torch.cdist(centroids[new_idx], old_centroids[old_idx])
                    located = torch.cdist(positions[new_idx], self.positions.cpu()[old_idx])
                    cost = (cost + torch.nan_to_num(located, nan=0.0)).numpy()
                    rows, cols = linear_sum_assignment(cost)
                    ids[new_idx[rows]] = old_ids[old_idx[cols]]
        fresh = torch.nonzero(ids == 0)[:, 0]
        start = int(torch.cat([ids, self.ids.cpu(), torch.tensor([self.reserved_ids])]).max()) + 1
        ids[fresh] = torch.arange(start, start + len(fresh))
        return ids

    _STATE = ("centroids", "classes", "ids", "groups", "positions", "anchors", "anchor_objects", "sizes", "confidence")

    def _set(self, *values: Tensor) -> None:
        device = self.centroids.device
        for name, value in zip(self._STATE, values):
            setattr(self, name, value.to(device))

    def assign(
        self,
        embeddings: Float[Tensor, "*batch D"],
        classes: Int[Tensor, "*batch"],
        positions: Optional[Float[Tensor, "*batch 3"]] = None,
    ) -> Int[Tensor, "*batch"]:
        """The id of each pixel's nearest centroid of its own class (0 for stuff and unclustered classes); where
        that cluster was split in space, the part whose anchors are nearest the pixel's 3D point."""
        if len(self.ids) == 0:
            return torch.zeros_like(classes)
        distance = torch.cdist(embeddings.reshape(-1, embeddings.shape[-1]).float(), self.centroids)
        wrong_class = classes.reshape(-1, 1) != self.classes[None, :]
        nearest = distance.masked_fill(wrong_class, math.inf).argmin(-1)
        if positions is not None and len(self.anchors):
            nearest = self._nearest_part(nearest, positions.reshape(-1, 3).float())
        has_centroid = ~wrong_class.all(-1)
        ids = torch.where(has_centroid, self.ids[nearest], torch.zeros_like(nearest))
        return ids.reshape(classes.shape)

    def _nearest_part(self, nearest: Tensor, positions: Tensor) -> Tensor:
        """Moves each pixel whose object is part of a split cluster to the part with the nearest anchor."""
        anchor_groups = self.groups[self.anchor_objects]
        split = torch.isin(self.groups[nearest], anchor_groups) & torch.isfinite(positions).all(-1)
        chosen = nearest.clone()
        rows = torch.nonzero(split)[:, 0]
        for start in range(0, len(rows), _ASSIGN_CHUNK):
            chunk = rows[start : start + _ASSIGN_CHUNK]
            distance = torch.cdist(positions[chunk], self.anchors)
            other_group = self.groups[nearest[chunk]][:, None] != anchor_groups[None, :]
            chosen[chunk] = self.anchor_objects[distance.masked_fill(other_group, math.inf).argmin(-1)]
        return chosen

    def _apply(self, fn, recurse=True):  # keep the cache on the module's device through .to()/.cuda()
        for name in self._STATE:
            setattr(self, name, fn(getattr(self, name)))
        return super()._apply(fn, recurse)

    def get_extra_state(self) -> Dict[str, Any]:
        state = {name: getattr(self, name).cpu() for name in self._STATE}
        return {**state, "min_cluster_sizes": dict(self.min_cluster_sizes)}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        count = len(state["ids"])
        defaults = {  # checkpoints from before the spatial split: one object per cluster
            "groups": torch.arange(count),
            "positions": torch.full((count, 3), math.nan),
            "anchors": torch.zeros(0, 3),
            "anchor_objects": torch.zeros(0, dtype=torch.long),
            "sizes": torch.zeros(count, dtype=torch.long),  # and from before the confidence: unknown
            "confidence": torch.full((count,), math.nan),
        }
        self._set(*(state[name] if name in state else defaults[name] for name in self._STATE))
        self.min_cluster_sizes = dict(state.get("min_cluster_sizes", {}))


def _numpy(values: Optional[Tensor]) -> Optional[np.ndarray]:
    return None if values is None else values.detach().cpu().numpy()


def _objects(
    points: np.ndarray,
    centroids: np.ndarray,
    positions: Optional[np.ndarray],
    labels: Optional[np.ndarray],
    min_points: int,
    thing: int,
    first_group: int,
) -> List[Dict[str, Any]]:
    """One class's objects: each cluster, split into its parts in space when the points have positions."""
    member = cKDTree(centroids).query(points)[1] if len(centroids) else np.zeros(0, dtype=np.int64)
    objects = []
    for cluster, centroid in enumerate(centroids):
        group = first_group + cluster
        here = np.flatnonzero(member == cluster)
        if positions is None:
            nowhere = np.full(3, np.nan)
            objects.append({"centroid": centroid, "class": thing, "group": group, "position": nowhere, "anchors": None})
            continue
        where = positions[here]
        parts = spatial_parts(where, None if labels is None else labels[here], min_points)
        for part in parts:
            finite = where[part][np.isfinite(where[part]).all(-1)]
            objects.append(
                {
                    "centroid": centroid,
                    "class": thing,
                    "group": group,
                    "position": finite.mean(0) if len(finite) else np.full(3, np.nan),
                    "anchors": anchors(where, part) if len(parts) > 1 else None,
                }
            )
    return objects


def _cluster(points: np.ndarray, labels: Optional[np.ndarray], min_cluster_size: Optional[int], tolerance: float):
    """(min_cluster_size, centroids, score against the 2D segments) of the chosen clustering of one class."""
    if min_cluster_size is not None:
        sizes = [min_cluster_size]
    else:
        sizes = sorted({max(5, round(f * len(points))) for f in _SIZE_FRACTIONS})
    tried = []
    for size in sizes:
        if len(points) < max(size, 2):
            break
        found = _hdbscan_centroids(points, size)
        score = float("nan") if labels is None else segment_agreement(points, found, labels)
        tried.append((size, found, score))
    if not tried:
        return 0, None, -1.0
    if len(tried) == 1:
        return tried[0]
    return _smallest_near_best(tried, tolerance)


def _smallest_near_best(tried: List[Tuple[int, Any, float]], tolerance: float) -> Tuple[int, Any, float]:
    """The smallest size whose score is within ``tolerance`` of the best: the within-view score sees splits but
    not merges of objects never in one view, and those merges only grow with the size."""
    best = max(score for _, _, score in tried)
    return min((t for t in tried if t[2] >= best - tolerance), key=lambda t: t[0])


def segment_agreement(points: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """How well nearest-centroid ids reproduce the 2D segments within each view: panoptic quality with the
    segments as the reference, each (view, segment) and each (view, cluster) a segment of its own, so matches
    are made within views only. Pixels without a 2D segment are void (unlabelled by the segmenter)."""
    if len(centroids) == 0:
        return 0.0
    ids = cKDTree(centroids).query(points)[1] + 1
    views, segments = labels[:, 0], labels[:, 1]
    one_class = np.ones(len(points), dtype=np.int64)
    reference = np.where(segments > 0, np.unique(labels, axis=0, return_inverse=True)[1].reshape(-1) + 1, 0)
    predicted = np.unique(np.stack([views, ids], -1), axis=0, return_inverse=True)[1].reshape(-1) + 1
    result = panoptic_quality(one_class, predicted, one_class, reference, thing_classes=[1], min_class_fraction=0)
    return 0.0 if math.isnan(result.pq) else result.pq


def _hdbscan_centroids(points: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """Membership-weighted centroids of HDBSCAN's clusters (noise excluded)."""
    clusterer = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=1, allow_single_cluster=True)
    labels = clusterer.fit_predict(points)
    strength = clusterer.probabilities_
    found = []
    for label in range(labels.max() + 1):
        member = labels == label
        weight = strength[member] + 1e-12
        found.append((points[member] * weight[:, None]).sum(0) / weight.sum())
    return np.stack(found) if found else np.zeros((0, points.shape[1]))
