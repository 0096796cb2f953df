"""``panoptic-lifting``: Panoptic Lifting's preprocessed ScanNet, Replica or Hypersim scene, read in place.

Layout under ``--data``::

    color/<name>.jpg                  RGB
    pose/<name>.txt                   4×4 camera-to-world, OpenCV axes (x right, y down, z forward)
    intrinsic/intrinsic_color.txt     4×4; its top-left 3×3 is the pixel K of the colour images
    splits.json                       {"train": [...], "test": [...]} of frame names ("val" if there is no "test")
    m2f_instance/<name>.png           Mask2Former thing ids, 0 = stuff or none     -> segments (training)
    m2f_semantics/<name>.png          Mask2Former class                            -> semantics (training)
    m2f_probabilities/<name>.npz      its "confidence" array                       -> confidence (training)
    rs_instance/<name>.png            ground-truth instance ids                    -> evaluation only
    rs_semantics/<name>.png           ground-truth class                           -> evaluation only

Frames are the sorted stems of ``color/`` (numerically when they are numbers). Poses are turned to nerfstudio's
OpenGL axes by flipping the camera's y and z. All frames place the scene; only those named in splits.json are
trained or tested on, and the val split is the test split. The classes are the 21 "reduced ScanNet" classes of
Panoptic Lifting plus 0 = void (unlabelled, left out of the metrics); the label maps may be smaller than the
colour images (ScanNet's are) and are resized to them, and so may the optional ``depth/<name>.png`` (16-bit
millimetres, z-depth), which supervise the geometry when present. The ``m2f_probabilities`` soft targets,
``m2f_segments``, ``invalid/`` and ``segmentation_data.pkl`` are not read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple, Type

import numpy as np
from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from contrastive_lift_ns.data import scene_format as sf
from contrastive_lift_ns.data.layouts import (
    Layout,
    LayoutDataParser,
    LayoutDataParserConfig,
    frame_names,
    image_size,
    label_files,
    read_json,
)

# Panoptic Lifting's reduced ScanNet classes, in id order after 0 = void.
REDUCED_SCANNET_CLASSES = (
    "void", "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "counter", "shelves",
    "curtain", "ceiling", "refrigerator", "television", "person", "toilet", "sink", "lamp", "bag", "otherprop",
)  # fmt: skip
REDUCED_SCANNET_THINGS = (4, 5, 6, 14, 15, 16, 17, 18, 20)
_OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class PanopticLiftingDataParserConfig(LayoutDataParserConfig):
    """A scene preprocessed by Panoptic Lifting (color/, pose/, intrinsic/, splits.json, m2f_*/, rs_*/)."""

    _target: Type = field(default_factory=lambda: PanopticLifting)
    """Target class to instantiate."""


class PanopticLifting(LayoutDataParser):
    """Reads Panoptic Lifting's layout."""

    config: PanopticLiftingDataParserConfig

    def _read_layout(self) -> Layout:
        root = self.config.data
        names, images = frame_names(root / "color", (".jpg", ".jpeg", ".png"))
        width, height = image_size(images)
        poses = np.stack([_read_matrix(root / "pose" / f"{name}.txt") for name in names]) @ _OPENCV_TO_OPENGL
        train, test = _split(root / "splits.json", names)
        return Layout(
            image_filenames=images,
            camera_to_worlds=poses,
            intrinsics=_read_matrix(root / "intrinsic" / "intrinsic_color.txt")[:3, :3],
            width=width,
            height=height,
            train_indices=train,
            test_indices=test,
            label_files={
                "segments": label_files(root, "m2f_instance", names, ".png", required=True),
                "semantics": label_files(root, "m2f_semantics", names, ".png", required=False),
                "confidence": label_files(root, "m2f_probabilities", names, ".npz", required=False),
                "gt_instance": label_files(root, "rs_instance", names, ".png", required=False),
                "gt_semantics": label_files(root, "rs_semantics", names, ".png", required=False),
            },
            classes=sf.SceneClasses(names=REDUCED_SCANNET_CLASSES, thing_ids=REDUCED_SCANNET_THINGS, void_id=0),
        )


def _read_matrix(path: Path) -> np.ndarray:
    """A 4×4 text matrix (pose or intrinsics); ScanNet marks frames without tracking with -inf poses."""
    try:
        matrix = np.loadtxt(path, dtype=np.float64)
    except FileNotFoundError:
        raise sf.SceneFormatError(f"{path}: file not found") from None
    except ValueError as err:
        raise sf.SceneFormatError(f"{path}: not a text matrix ({err})") from None
    if matrix.shape != (4, 4):
        raise sf.SceneFormatError(f"{path}: expected a 4×4 matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise sf.SceneFormatError(f"{path}: holds non-finite values (ScanNet writes -inf for untracked frames)")
    return matrix


def _split(path: Path, names: List[str]) -> Tuple[List[int], List[int]]:
    """Train and test frame indices from splits.json, whose entries are frame stems or file names."""
    splits = read_json(path)
    index: Dict[str, int] = {name: i for i, name in enumerate(names)}
    result = []
    for key in ("train", "test" if isinstance(splits, dict) and "test" in splits else "val"):
        entries = splits.get(key) if isinstance(splits, dict) else None
        if not isinstance(entries, list):
            raise sf.SceneFormatError(f"{path}: needs a '{key}' list of frame names")
        indices = []
        for entry in entries:
            name = str(entry) if str(entry) in index else Path(str(entry)).stem
            if name not in index:
                raise sf.SceneFormatError(f"{path}: '{key}' names frame '{entry}', which is not in color/")
            indices.append(index[name])
        result.append(indices)
    return result[0], result[1]


panoptic_lifting_dataparser = DataParserSpecification(
    config=PanopticLiftingDataParserConfig(),
    description="a ScanNet/Replica/Hypersim scene preprocessed by Panoptic Lifting, read in place",
)
