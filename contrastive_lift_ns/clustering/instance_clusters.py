"""From embeddings to objects: HDBSCAN centroids per thing class, and nearest-centroid ids for every pixel.

Procedure (paper §3 "Rendering instance segmentation maps", Appendix B.3):

1. The model renders the fast embeddings and semantics of pixels sampled from training views.
2. The pixels are grouped by predicted semantic class; only thing classes get instances.
3. Each group is clustered with HDBSCAN: points more than ``outlier_sigma`` standard deviations from the
   class mean (in any dimension) are dropped, then ``min_samples=1`` and ``allow_single_cluster=True``.
   ``min_cluster_size`` matters most: too small splits objects into speckles, too large merges small
   objects. The paper tunes it by hand against the 2D segments of the training views; unless it is set, we
   do the same automatically: among sizes from 0.05 % to 12.8 % of the group's points, the one whose clusters
   best reproduce the 2D segments *within each view* wins, scored by panoptic quality with the 2D segments as
   the reference (a segment matches a cluster of its view when they overlap by IoU > 0.5 on the sampled
   pixels). PQ counts segments, not pixel pairs, so a merge of two small objects costs as much as a merge of
   two large ones (a pair-counting score is dominated by the largest segments and let merges through).
   Objects never seen together are not told apart by that score, nor by the loss.
4. Each cluster's centroid is the mean of its members weighted by HDBSCAN's membership strength.
5. Any pixel of any view gets the id of the nearest centroid of its own predicted class; stuff gets id 0.

One space for both steps: centroids are computed and pixels assigned in the raw embedding space, the space
whose distances the contrastive loss shaped. (The paper min-max rescales the embeddings for clustering; the
authors' code then assigns pixels in raw space, a mismatch we avoid.)

Noise and far-away pixels: HDBSCAN's noise points do not shape any centroid, but at render time every
thing pixel, noise or not and however far from every centroid, takes its nearest centroid's id. Leaving far
pixels unlabelled would only turn them into false negatives for PQ, while the nearest centroid is usually
the object the pixel belongs to.

Ids are stable across re-clusterings: new centroids are matched to the previous ones (Hungarian matching on
distance) and keep their ids, so the viewer's colours do not shuffle while training goes on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional, Sequence, Type

import hdbscan
import numpy as np
import torch
from jaxtyping import Float, Int
from nerfstudio.configs.base_config import InstantiateConfig
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from torch import Tensor, nn

from contrastive_lift_ns.evaluation.panoptic_quality import panoptic_quality
from contrastive_lift_ns.validation import require

_SIZE_FRACTIONS = tuple(0.0005 * 2**k for k in range(9))  # 0.05 % … 12.8 %


@dataclass
class ClusteringConfig(InstantiateConfig):
    """How embeddings become objects."""

    _target: Type = field(default_factory=lambda: InstanceClusters)
    """Target class to instantiate."""
    num_pixels: int = 50_000
    """Pixels sampled from training views and rendered for each clustering (the same pixels every time)."""
    min_cluster_size: Optional[int] = None
    """HDBSCAN's smallest object, in sampled pixels. None chooses it per class among fractions of the class's
    sampled pixels (0.05 % to 12.8 %): the size whose clusters best reproduce the 2D segments within each
    training view, as the paper tunes it by hand on the training views' 2D segments."""
    outlier_sigma: float = 3.0
    """Points further than this many standard deviations from their class mean are left out of the fit."""
    recluster_every: int = 1000
    """Re-cluster every this many training steps once the instance loss is on (0: only at the end)."""

    def __post_init__(self) -> None:
        require(self, "num_pixels", self.num_pixels >= 100, "must be at least 100")
        require(
            self, "min_cluster_size", self.min_cluster_size is None or self.min_cluster_size >= 2, "must be at least 2"
        )
        require(self, "outlier_sigma", self.outlier_sigma > 0, "must be positive")
        require(self, "recluster_every", self.recluster_every >= 0, "must not be negative")


class InstanceClusters(nn.Module):
    """The cached centroids, saved in checkpoints through ``get_extra_state``; their number varies."""

    def __init__(self, config: ClusteringConfig, thing_classes: Sequence[int]) -> None:
        super().__init__()
        self.config = replace(config)  # its own copy: the model's config is not changed behind its back
        self.thing_classes = tuple(thing_classes)
        self.centroids = torch.empty(0, 0)
        self.classes = torch.empty(0, dtype=torch.long)
        self.ids = torch.empty(0, dtype=torch.long)
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
    ) -> Dict[str, Any]:
        """Replaces the centroids with those of a new clustering; returns per-class statistics.

        ``min_cluster_size`` overrides the configured size for this clustering. ``segments`` and ``views`` (each
        pixel's 2D segment id and training view) choose the size when neither sets it.
        """
        min_cluster_size = min_cluster_size or self.config.min_cluster_size
        if min_cluster_size is None and (segments is None or views is None):
            raise ValueError("choosing min_cluster_size needs the sampled pixels' 2D segments and views")
        embeddings_np = embeddings.detach().cpu().double().numpy()
        classes_np = classes.detach().cpu().numpy()
        labels = None if segments is None else np.stack([views.cpu().numpy(), segments.cpu().numpy()], -1)
        centroids, centroid_classes, stats = [], [], {}
        for thing in self.thing_classes:
            chosen = classes_np == thing
            points = embeddings_np[chosen]
            if len(points) < 2:
                continue
            z = np.abs(points - points.mean(0)) / (points.std(0) + 1e-9)
            inlier = (z <= self.config.outlier_sigma).all(-1)
            points = points[inlier]
            pixel_labels = None if labels is None else labels[chosen][inlier]
            size, found, score = _cluster(points, pixel_labels, min_cluster_size)
            if found is None:
                continue
            centroids.append(found)
            centroid_classes += [thing] * len(found)
            stats[thing] = {"points": len(points), "min_cluster_size": size, "clusters": len(found), "score": score}
        dim = embeddings.shape[-1]
        new = torch.from_numpy(np.concatenate(centroids) if centroids else np.zeros((0, dim))).float()
        new_classes = torch.tensor(centroid_classes, dtype=torch.long)
        self._set(new, new_classes, self._stable_ids(new, new_classes))
        self.min_cluster_sizes = {thing: stat["min_cluster_size"] for thing, stat in stats.items()}
        return stats

    def _stable_ids(self, centroids: Tensor, classes: Tensor) -> Tensor:
        """Reuse the id of the previous centroid each new one is matched to; fresh ids for the rest."""
        ids = torch.zeros(len(centroids), dtype=torch.long)
        if self.fitted and self.centroids.shape[-1] == centroids.shape[-1]:
            old_centroids, old_classes, old_ids = self.centroids.cpu(), self.classes.cpu(), self.ids.cpu()
            for thing in classes.unique().tolist():
                new_idx = torch.nonzero(classes == thing)[:, 0]
                old_idx = torch.nonzero(old_classes == thing)[:, 0]
                if len(old_idx):
                    cost = torch.cdist(centroids[new_idx], old_centroids[old_idx]).numpy()
                    rows, cols = linear_sum_assignment(cost)
                    ids[new_idx[rows]] = old_ids[old_idx[cols]]
        fresh = torch.nonzero(ids == 0)[:, 0]
        start = int(torch.cat([ids, self.ids.cpu(), torch.zeros(1, dtype=torch.long)]).max()) + 1
        ids[fresh] = torch.arange(start, start + len(fresh))
        return ids

    def _set(self, centroids: Tensor, classes: Tensor, ids: Tensor) -> None:
        device = self.centroids.device
        self.centroids, self.classes, self.ids = centroids.to(device), classes.to(device), ids.to(device)

    def assign(self, embeddings: Float[Tensor, "*batch D"], classes: Int[Tensor, "*batch"]) -> Int[Tensor, "*batch"]:
        """The id of each pixel's nearest centroid of its own class; 0 for stuff and unclustered classes."""
        if len(self.ids) == 0:
            return torch.zeros_like(classes)
        distance = torch.cdist(embeddings.reshape(-1, embeddings.shape[-1]).float(), self.centroids)
        wrong_class = classes.reshape(-1, 1) != self.classes[None, :]
        nearest = distance.masked_fill(wrong_class, math.inf).argmin(-1)
        has_centroid = ~wrong_class.all(-1)
        ids = torch.where(has_centroid, self.ids[nearest], torch.zeros_like(nearest))
        return ids.reshape(classes.shape)

    def _apply(self, fn, recurse=True):  # keep the cache on the module's device through .to()/.cuda()
        self.centroids, self.classes, self.ids = fn(self.centroids), fn(self.classes), fn(self.ids)
        return super()._apply(fn, recurse)

    def get_extra_state(self) -> Dict[str, Any]:
        return {
            "centroids": self.centroids.cpu(),
            "classes": self.classes.cpu(),
            "ids": self.ids.cpu(),
            "min_cluster_sizes": dict(self.min_cluster_sizes),
        }

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self._set(state["centroids"], state["classes"], state["ids"])
        self.min_cluster_sizes = dict(state.get("min_cluster_sizes", {}))


def _cluster(points: np.ndarray, labels: Optional[np.ndarray], min_cluster_size: Optional[int]):
    """(min_cluster_size, centroids, score against the 2D segments) of the chosen clustering of one class."""
    if min_cluster_size is not None:
        sizes = [min_cluster_size]
    else:
        sizes = sorted({max(5, round(f * len(points))) for f in _SIZE_FRACTIONS})
    best = (0, None, -1.0)
    for size in sizes:
        if len(points) < max(size, 2):
            break
        found = _hdbscan_centroids(points, size)
        score = float("nan") if labels is None else segment_agreement(points, found, labels)
        if len(sizes) == 1 or score > best[2]:
            best = (size, found, score)
    return best


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
