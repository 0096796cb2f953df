"""What the dataparsers of the paper's data sets (``messy-rooms``, ``panoptic-lifting``) share.

Each of them reads its folder layout into a `Layout`: the sorted frames, OpenGL camera-to-world poses, one
pixel K, the per-frame label files and the split. `LayoutDataParser` does the rest in one place: it orients,
centres and scales the poses exactly as nerfstudio's own dataparser does by default (so a scene gives the same
cameras in the project's format and in a paper layout), checks the label maps' headers, and fills
`DataparserOutputs.metadata` with the keys `ContrastiveLiftDataset` reads.

Label maps may be smaller or larger than their images (ScanNet's 640×480 labels beside its 1296×968 colour
images, for example): the dataset resizes them to the image with nearest-neighbour sampling, as the authors'
code does. Their aspect ratio must match the image's within 2 %, which catches maps of the wrong frame or
layout.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from nerfstudio.cameras import camera_utils
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from PIL import Image

from contrastive_lift_ns.data import scene_format as sf
from contrastive_lift_ns.data.dataset import label_metadata, split_label_keys

_ASPECT_TOLERANCE = 0.02


@dataclass
class Layout:
    """One scene of a paper data set, as its reader found it on disk."""

    image_filenames: List[Path]
    """The frames' images, in the data set's frame order."""
    camera_to_worlds: np.ndarray
    """(N, 4, 4) camera-to-world poses with OpenGL axes (x right, y up, z backward), in the data set's units."""
    intrinsics: np.ndarray
    """(3, 3) pixel K shared by all frames."""
    width: int
    """Image width in pixels, shared by all frames."""
    height: int
    """Image height in pixels, shared by all frames."""
    train_indices: List[int]
    """Frames to train on."""
    test_indices: List[int]
    """Frames to evaluate on; nerfstudio's "val" split uses them too."""
    label_files: Dict[str, Optional[List[Path]]]
    """For each of the dataset's LABEL_KEYS and GT_KEYS, one file per frame, or None where the data set has none."""
    classes: sf.SceneClasses
    """The semantic classes of the label maps."""


@dataclass
class LayoutDataParserConfig(DataParserConfig):
    """Options shared by the paper data sets' dataparsers; the pose defaults are nerfstudio-data's."""

    data: Path = Path()
    """Folder of one scene in the data set's layout."""
    scale_factor: float = 1.0
    """How much to scale the camera origins by, after the automatic scaling."""
    scene_scale: float = 1.0
    """Half the side of the scene box, in the scaled units."""
    orientation_method: Literal["pca", "up", "vertical", "none"] = "up"
    """How to rotate the poses (nerfstudio's camera_utils.auto_orient_and_center_poses)."""
    center_method: Literal["poses", "focus", "none"] = "poses"
    """How to translate the poses (nerfstudio's camera_utils.auto_orient_and_center_poses)."""
    auto_scale_poses: bool = True
    """Scale the poses so that the camera origins fit in [-1, 1]."""
    depth_unit_scale_factor: float = 1e-3
    """Metres per unit of the optional depth/ maps (both data sets write millimetres)."""


class LayoutDataParser(DataParser):
    """Turns a subclass's `Layout` into nerfstudio cameras plus the project's label metadata."""

    config: LayoutDataParserConfig

    @abstractmethod
    def _read_layout(self) -> Layout:
        """Reads the scene at ``self.config.data``; raises SceneFormatError naming the file for bad input."""

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs: Any) -> DataparserOutputs:
        if not self.config.data.is_dir():
            raise sf.SceneFormatError(f"--data {self.config.data}: no such folder")
        layout = self._read_layout()
        if split == "train":
            indices = layout.train_indices
        elif split in ("val", "test"):
            indices = layout.test_indices
        else:
            raise ValueError(f"unknown split '{split}'")
        if not indices:
            raise sf.SceneFormatError(f"{self.config.data}: the '{split}' split has no frames")

        poses, transform = camera_utils.auto_orient_and_center_poses(
            torch.from_numpy(layout.camera_to_worlds.astype(np.float32)),
            method=self.config.orientation_method,
            center_method=self.config.center_method,
        )
        scale = 1.0
        if self.config.auto_scale_poses:
            scale /= float(torch.max(torch.abs(poses[:, :3, 3])))
        scale *= self.config.scale_factor
        poses[:, :3, 3] *= scale

        k = layout.intrinsics
        cameras = Cameras(
            fx=float(k[0, 0]),
            fy=float(k[1, 1]),
            cx=float(k[0, 2]),
            cy=float(k[1, 2]),
            width=layout.width,
            height=layout.height,
            camera_to_worlds=poses[torch.tensor(indices, dtype=torch.long)],
            camera_type=CameraType.PERSPECTIVE,
        )
        images = [layout.image_filenames[i] for i in indices]
        files = {key: _checked(layout, key, indices) for key in split_label_keys(split)}
        scale_box = self.config.scene_scale
        scene_box = SceneBox(aabb=torch.tensor([[-scale_box] * 3, [scale_box] * 3], dtype=torch.float32))
        metadata = label_metadata(
            layout.classes,
            files,
            cameras,
            scene_box,
            [path.relative_to(self.config.data).as_posix() for path in images],
            np.linalg.inv(np.diag([scale, scale, scale, 1.0]) @ np.vstack([transform.double().numpy(), [0, 0, 0, 1]])),
        )
        # Both data sets keep optional depth maps in depth/, one PNG per frame named as its image.
        depth = label_files(self.config.data, "depth", [path.stem for path in images], ".png", required=False)
        metadata.update(depth_filenames=depth, depth_unit_scale_factor=self.config.depth_unit_scale_factor)
        return DataparserOutputs(
            image_filenames=images,
            cameras=cameras,
            # The paper's renders are opaque; compositing keeps them as they are and gives every image 3 channels.
            alpha_color=torch.zeros(3),
            scene_box=scene_box,
            dataparser_scale=scale,
            dataparser_transform=transform,
            metadata=metadata,
        )


def frame_names(folder: Path, suffixes: Sequence[str]) -> Tuple[List[str], List[Path]]:
    """The frames of an image folder: stems sorted numerically when all are numbers, else by name."""
    if not folder.is_dir():
        raise sf.SceneFormatError(f"{folder}: no such folder; the data set keeps its images there")
    images = [p for p in folder.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith(".")]
    if not images:
        raise sf.SceneFormatError(f"{folder}: no {'/'.join(suffixes)} images")
    numeric = all(p.stem.isdigit() for p in images)
    images.sort(key=lambda p: (int(p.stem), p.stem) if numeric else p.stem)
    return [p.stem for p in images], images


def image_size(images: Sequence[Path]) -> Tuple[int, int]:
    """The (width, height) shared by all images, read from their headers."""
    sizes = {}
    for path in images:
        try:
            with Image.open(path) as image:
                sizes.setdefault(image.size, path)
        except Exception as err:  # PIL raises many types for corrupt files
            raise sf.SceneFormatError(f"{path}: unreadable image ({err})") from None
    if len(sizes) > 1:
        (size_a, path_a), (size_b, path_b) = list(sizes.items())[:2]
        raise sf.SceneFormatError(
            f"images differ in size: {path_a} is {size_a[0]}×{size_a[1]}, {path_b} is {size_b[0]}×{size_b[1]}; "
            "all frames of a scene must share one camera"
        )
    return next(iter(sizes))


def label_files(root: Path, folder: str, names: Sequence[str], suffix: str, required: bool) -> Optional[List[Path]]:
    """``root/folder/<name><suffix>`` for every frame; None if an optional folder is absent."""
    directory = root / folder
    if not directory.is_dir():
        if required:
            raise sf.SceneFormatError(f"{directory}: no such folder; it holds the 2D segmenter's instance ids")
        return None
    paths = [directory / f"{name}{suffix}" for name in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise sf.SceneFormatError(f"{missing[0]}: file not found ({len(missing)} of {len(paths)} frames lack one)")
    return paths


def read_json(path: Path) -> Any:
    """Loads a JSON file with an error that names it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise sf.SceneFormatError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise sf.SceneFormatError(f"{path}: not valid JSON ({err})") from None


def _checked(layout: Layout, key: str, indices: Sequence[int]) -> Optional[List[Path]]:
    """The split's files of one label key; label maps (not confidence) get their headers checked."""
    files = layout.label_files.get(key)
    if files is None:
        return None
    files = [files[i] for i in indices]
    if key != "confidence":
        aspect = layout.width / layout.height
        for path in files:
            height, width = sf.label_map_size(path, what=key)
            if abs(width / height - aspect) > _ASPECT_TOLERANCE * aspect:
                raise sf.SceneFormatError(
                    f"{path}: {key} map is {width}×{height} (W×H), which does not have the shape of its "
                    f"{layout.width}×{layout.height} image"
                )
    return files
