"""Binary PLY point clouds with per-point instance ids and semantic classes, written with plyfile.

Vertex properties: x, y, z (float32), red, green, blue (uint8), instance and semantic_class (int32). Readers
that know only positions and colours (Open3D, MeshLab) skip the two label properties; plyfile and trimesh
read them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from plyfile import PlyData, PlyElement

from contrastive_lift_ns.export.point_cloud import LabelledPoints

_VERTEX = np.dtype(
    [
        ("x", "<f4"),
        ("y", "<f4"),
        ("z", "<f4"),
        ("red", "u1"),
        ("green", "u1"),
        ("blue", "u1"),
        ("instance", "<i4"),
        ("semantic_class", "<i4"),
    ]
)


def write_ply(path: Path, points: LabelledPoints, comments: Sequence[str] = ()) -> None:
    """Writes the points as a binary little-endian PLY."""
    vertex = np.empty(len(points), dtype=_VERTEX)
    for axis, name in enumerate("xyz"):
        vertex[name] = points.xyz[:, axis]
    for channel, name in enumerate(("red", "green", "blue")):
        vertex[name] = points.rgb[:, channel]
    vertex["instance"] = points.instance
    vertex["semantic_class"] = points.semantic_class
    ply = PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<", comments=list(comments))
    ply.write(str(path))
