"""``messy-rooms``: a scene of the Messy Rooms data set (Contrastive Lift), read in place.

Layout under ``--data``::

    color/<name>.png                 RGB (an alpha channel is composited away)
    metadata.json                    camera.K (normalised to the image size), camera.positions, camera.quaternions
    detic_instance/<name>.npy        2D segmenter instance ids, 0 = none          -> segments (training)
    detic_semantic/<name>.npy        0 background, 1 object                       -> semantics (training)
    detic_probabilities/<name>.npy   float confidence                             -> confidence (training)
    instance/<name>.npy              ground-truth instance ids                    -> evaluation only
    semantic/<name>.npy              ground-truth background/object               -> evaluation only

Frames are the sorted stems of ``color/`` (numerically when they are numbers); the poses in metadata.json follow
that order and are Blender camera-to-world matrices, whose camera axes are nerfstudio's. The last 20 % of the
frames are the test (and val) views. The classes are background (stuff) and object (thing). The optional
``depth/<name>.png`` (16-bit millimetres, z-depth) supervise the geometry when present; ``invalid/`` is not
read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Type

import numpy as np
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from scipy.spatial.transform import Rotation

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

_TRAIN_FRACTION = 0.8


@dataclass
class MessyRoomsDataParserConfig(LayoutDataParserConfig):
    """A Messy Rooms scene folder (color/, metadata.json, detic_*/, instance/, semantic/)."""

    _target: Type = field(default_factory=lambda: MessyRooms)
    """Target class to instantiate."""


class MessyRooms(LayoutDataParser):
    """Reads the Messy Rooms layout."""

    config: MessyRoomsDataParserConfig

    def _read_layout(self) -> Layout:
        root = self.config.data
        names, images = frame_names(root / "color", (".png",))
        width, height = image_size(images)
        path = root / "metadata.json"
        meta = read_json(path)
        try:
            camera = meta["camera"]
            k = np.asarray(camera["K"], dtype=np.float64).reshape(3, 3)
            positions = np.asarray(camera["positions"], dtype=np.float64).reshape(-1, 3)
            quaternions = np.asarray(camera["quaternions"], dtype=np.float64).reshape(-1, 4)
        except (KeyError, TypeError, ValueError) as err:
            raise sf.SceneFormatError(
                f"{path}: needs camera.K (3×3), camera.positions (N×3) and camera.quaternions (N×4) ({err!r})"
            ) from None
        if not len(positions) == len(quaternions) == len(names):
            raise sf.SceneFormatError(
                f"{path}: {len(positions)} positions and {len(quaternions)} quaternions for {len(names)} images in "
                f"{root / 'color'}"
            )
        if not (np.isfinite(positions).all() and np.isfinite(quaternions).all() and np.isfinite(k).all()):
            raise sf.SceneFormatError(f"{path}: camera values must be finite")
        poses = np.tile(np.eye(4), (len(names), 1, 1))
        poses[:, :3, :3] = Rotation.from_quat(quaternions[:, [1, 2, 3, 0]]).as_matrix()  # stored w, x, y, z
        poses[:, :3, 3] = positions
        first_test = int(_TRAIN_FRACTION * len(names))
        return Layout(
            image_filenames=images,
            camera_to_worlds=poses,
            intrinsics=np.abs(k * np.array([[width], [height], [1.0]])),
            width=width,
            height=height,
            train_indices=list(range(first_test)),
            test_indices=list(range(first_test, len(names))),
            label_files={
                "segments": label_files(root, "detic_instance", names, ".npy", required=True),
                "semantics": label_files(root, "detic_semantic", names, ".npy", required=False),
                "confidence": label_files(root, "detic_probabilities", names, ".npy", required=False),
                "gt_instance": label_files(root, "instance", names, ".npy", required=False),
                "gt_semantics": label_files(root, "semantic", names, ".npy", required=False),
            },
            classes=sf.SceneClasses(names=("background", "object"), thing_ids=(1,)),
        )


messy_rooms_dataparser = DataParserSpecification(
    config=MessyRoomsDataParserConfig(),
    description="a Messy Rooms scene (Contrastive Lift's data set), read in place",
)
