"""The object table of an export: which objects there are, where, and in which training views.

An object is the largest spatially connected part of the points sharing an id > 0: parts separated by gaps
wider than ``_PART_GAP`` point spacings are detached and go back to id 0. They are patches of other surfaces
that took the id near an object boundary, and would stretch its box far beyond the object. Its semantic class
is the most common class among its points (for clustered models all of them share it: ids are assigned
within a class).

Visibility: an object counts as visible in a training view if at least ``min_view_points`` of its points were
sampled from that view. Views are sampled uniformly, so this finds the views in which it covers at least
about ``min_view_points / rays per view`` of the image (and is not hidden: points are first surfaces).

Confidence: the model's own, from its clustering (``clustering/confidence.py``), after the hand corrections.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from contrastive_lift_ns.drawing.palette import id_colours
from contrastive_lift_ns.export.point_cloud import LabelledPoints

_PART_GAP = 5.0  # in median nearest-neighbour distances of the object's points, so it follows the density


@dataclass
class ExportedObject:
    """One row of objects.json."""

    id: int
    """The object's instance id, as in the PLY files and the viewer."""
    semantic_class: int
    """Index of the object's semantic class."""
    class_name: str
    """Name of the semantic class."""
    num_points: int
    """Number of points in objects/<id>.ply."""
    centroid: List[float]
    """Mean of the object's points."""
    bbox_min: List[float]
    """Smallest x, y, z of the object's points."""
    bbox_max: List[float]
    """Largest x, y, z of the object's points."""
    colour: List[int]
    """The object's palette colour (the viewer's), RGB 0-255."""
    views: List[str]
    """The training views (``file_path`` of their frames) in which the object is visible."""
    confidence: Optional[float] = None
    """How far to trust the object, in [0, 1] (``clustering/confidence.py``); null where the model has none
    (linear-assignment-lift, or a checkpoint from before confidences)."""

    def row(self) -> Dict[str, Any]:
        return asdict(self)


def find_objects(
    points: LabelledPoints,
    class_names: Sequence[str],
    view_names: Sequence[str],
    min_points: int,
    min_view_points: int,
    confidence: Optional[Dict[int, float]] = None,
) -> Tuple[List[ExportedObject], LabelledPoints]:
    """The objects with at least ``min_points`` points, by id, and the points relabelled to match them: detached
    parts and objects with fewer points get id 0, so every id left in the points has its row. ``confidence``
    gives each id's confidence (none: null)."""
    instance = points.instance.copy()
    for object_id in np.unique(instance[instance > 0]):
        member = np.nonzero(instance == object_id)[0]
        instance[member[~_largest_part(points.xyz[member])]] = 0
    ids, counts = np.unique(instance[instance > 0], return_counts=True)
    instance[np.isin(instance, ids[counts < min_points])] = 0
    points = replace(points, instance=instance)
    objects = []
    for object_id in ids[counts >= min_points].tolist():
        member = points.subset(points.instance == object_id)
        semantic_class = int(np.bincount(member.semantic_class).argmax())
        per_view = np.bincount(member.view, minlength=len(view_names))
        objects.append(
            ExportedObject(
                id=object_id,
                semantic_class=semantic_class,
                class_name=class_names[semantic_class],
                num_points=len(member),
                centroid=_floats(member.xyz.mean(0)),
                bbox_min=_floats(member.xyz.min(0)),
                bbox_max=_floats(member.xyz.max(0)),
                colour=(id_colours(torch.tensor(object_id)) * 255).round().int().tolist(),
                views=[view_names[v] for v in np.nonzero(per_view >= min_view_points)[0]],
                confidence=_confidence((confidence or {}).get(object_id)),
            )
        )
    return objects, points


def _largest_part(xyz: np.ndarray) -> np.ndarray:
    """Mask of the points in the largest part, where parts are split by gaps wider than ``_PART_GAP`` spacings
    (connected components of the graph joining points closer than that)."""
    if len(xyz) < 2:
        return np.ones(len(xyz), dtype=bool)
    tree = cKDTree(xyz)
    spacing = float(np.median(tree.query(xyz, k=2)[0][:, 1]))
    if spacing == 0.0:
        return np.ones(len(xyz), dtype=bool)
    pairs = tree.query_pairs(_PART_GAP * spacing, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(xyz), len(xyz)))
    parts = connected_components(graph, directed=False)[1]
    return parts == np.bincount(parts).argmax()


def _confidence(value: Optional[float]) -> Optional[float]:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def _floats(values: np.ndarray) -> List[float]:
    return [round(float(v), 6) for v in values]
