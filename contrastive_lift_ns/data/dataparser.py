"""Reads the project's scene format: nerfstudio's ``transforms.json`` plus per-frame label maps.

Cameras, splits and downscaling are nerfstudio's own (``NerfstudioDataParserConfig``); this parser adds the
file lists of the label maps to the outputs' metadata and checks every map's header up front, so a bad file
fails before training starts, with an error that names the frame and the file. The label volume is fitted to
the capture's sparse points (``ply_file_path``, as ``ns-process-data`` writes it) if it has them, else to its
depth maps (``depth_file_path``), else to the cameras alone (``data/label_volume.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type

import numpy as np
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.utils.data_utils import get_depth_image_from_path
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from PIL import Image
from plyfile import PlyData

from contrastive_lift_ns.data import scene_format as sf
from contrastive_lift_ns.data.dataset import check_depth_file, label_metadata, split_label_keys
from contrastive_lift_ns.data.label_volume import depth_points, label_volume
from contrastive_lift_ns.private_apis import image_path


@dataclass
class ContrastiveLiftDataParserConfig(NerfstudioDataParserConfig):
    """nerfstudio's dataparser, plus the 2D segments, semantics and confidence of each frame."""

    _target: Type = field(default_factory=lambda: ContrastiveLiftDataParser)
    """Target class to instantiate."""
    use_depth: bool = True
    """Use the frames' depth maps (depth_file_path), where they have them: to place the label volume and to train
    the geometry with nerfstudio's depth loss. False: RGB only, the paper's protocol."""


@dataclass
class ContrastiveLiftDataParser(Nerfstudio):
    """Adds ``segments``/``semantics``/``confidence`` file lists (and, for eval splits, ground truth) to metadata."""

    config: ContrastiveLiftDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train") -> DataparserOutputs:
        meta, transforms_path = sf.load_transforms(self.config.data)  # clear errors before nerfstudio's own
        classes = sf.SceneClasses.from_meta(meta, transforms_path)
        outputs = super()._generate_dataparser_outputs(split)
        if not self.config.use_depth:  # the dataset then loads no depth, and the model has no depth loss
            outputs.metadata.pop("depth_filenames", None)
        if not outputs.image_filenames:
            raise sf.SceneFormatError(
                f"{transforms_path}: the '{split}' split has no frames, so nothing can be evaluated; list some in "
                f"'{split}_filenames' (or 'test_filenames'), or pass --pipeline.datamanager.dataparser.eval-mode "
                "fraction"
            )
        root = transforms_path.parent
        by_image = {image_path(self, f["file_path"], root): f for f in meta["frames"]}
        frames = [by_image[name] for name in outputs.image_filenames]
        _check_one_image_size(outputs.image_filenames)
        factor = sf.label_downscale_factor(meta, transforms_path)
        files = {key: _frame_files(frames, root, f"{key}_path", meta, factor) for key in split_label_keys(split)}
        names = [f["file_path"] for f in frames]
        to_poses = nerfstudio_to_poses(outputs, meta, root)
        outputs.metadata.update(label_metadata(classes, files, outputs.cameras, outputs.scene_box, names, to_poses))
        content = capture_content(outputs, meta, transforms_path, to_poses)
        if content is not None:  # label_metadata fits the box to the cameras alone
            outputs.metadata["label_volume"] = label_volume(outputs.cameras, outputs.scene_box, content)
        return outputs


def _check_one_image_size(images: List[Path]) -> None:
    """The label maps of all images are stacked for sampling, so all images must have one size (read from the
    files' headers, so it fails before any training)."""
    sizes: Dict[Tuple[int, int], Path] = {}
    for path in images:
        try:
            with Image.open(path) as image:
                sizes.setdefault(image.size, path)
        except FileNotFoundError:
            raise sf.SceneFormatError(f"{path}: image not found") from None
        except Exception as err:  # PIL raises many types for corrupt files
            raise sf.SceneFormatError(f"{path}: unreadable image ({err})") from None
        if len(sizes) > 1:
            (size_a, path_a), (size_b, path_b) = sizes.items()
            raise sf.SceneFormatError(
                f"images differ in size: {path_a} is {size_a[0]}×{size_a[1]}, {path_b} is {size_b[0]}×{size_b[1]}; "
                "contrastive-lift needs one image size per scene (resize the images, or split the scene)"
            )


def _frame_files(frames: List[Dict], root: Path, key: str, meta: Dict, factor: int) -> Optional[List[Path]]:
    """The files named by ``key``, checked against their image's size divided by ``factor`` (the scene's
    ``label_downscale_factor``); None if no frame has an optional key.

    Segments are required; an optional key that only some frames have is an error for the first without it.
    """
    present = [key in f for f in frames]
    if not any(present) and key != sf.SEGMENTS_KEY:
        return None
    if not all(present):
        missing = frames[present.index(False)]["file_path"]
        why = (
            "every frame needs the 2D segmenter's instance ids (cl-segment makes them)"
            if key == sf.SEGMENTS_KEY
            else "other frames have one"
        )
        raise sf.SceneFormatError(f"frame '{missing}': has no '{key}'; {why}")
    paths = []
    for frame in frames:
        path = root / frame[key]
        size = sf.map_size(path, frame["file_path"], what=key)
        image = (int(frame.get("h", meta.get("h"))), int(frame.get("w", meta.get("w"))))
        sf.check_label_size(size, image, factor, path, frame["file_path"], key)
        paths.append(path)
    return paths


_DEPTH_VIEWS = 64
_DEPTH_POINTS_PER_VIEW = 4096


def capture_content(
    outputs: DataparserOutputs, meta: Dict[str, Any], transforms_path: Path, to_poses: np.ndarray
) -> Optional[np.ndarray]:
    """Points on the capture's surfaces in nerfstudio's normalised coordinates: its sparse points (nerfstudio's
    ``points3D_xyz`` if it loaded them, else the ``ply_file_path`` file, in the coordinates of the poses), else
    its depth maps back-projected (up to ``_DEPTH_VIEWS`` views); None without either."""
    if "points3D_xyz" in outputs.metadata:
        return outputs.metadata["points3D_xyz"].double().cpu().numpy()
    if "ply_file_path" in meta:
        path = transforms_path.parent / meta["ply_file_path"]
        try:
            vertex = PlyData.read(str(path))["vertex"]
            points = np.stack([np.asarray(vertex[axis], dtype=np.float64) for axis in "xyz"], -1)
        except FileNotFoundError:
            raise sf.SceneFormatError(f"{transforms_path}: 'ply_file_path' {path}: file not found") from None
        except Exception as err:  # plyfile raises many types for broken files
            raise sf.SceneFormatError(
                f"{transforms_path}: 'ply_file_path' {path}: unreadable point cloud ({err})"
            ) from None
        return (np.concatenate([points, np.ones_like(points[:, :1])], -1) @ np.linalg.inv(to_poses).T)[:, :3]
    depth_files = outputs.metadata.get("depth_filenames")
    if not depth_files:
        return None
    cameras = outputs.cameras
    scale = float(outputs.metadata["depth_unit_scale_factor"]) * float(outputs.dataparser_scale)
    points = []
    for index in np.unique(np.linspace(0, len(depth_files) - 1, _DEPTH_VIEWS).round().astype(int)):
        height, width = int(cameras.height[index]), int(cameras.width[index])
        check_depth_file(Path(depth_files[index]), str(outputs.image_filenames[index]), (height, width))
        depth = get_depth_image_from_path(Path(depth_files[index]), height, width, scale)[..., 0].numpy()
        stride = max(1, int(np.sqrt(height * width / _DEPTH_POINTS_PER_VIEW)))
        points.append(depth_points(cameras, int(index), depth, stride))
    return np.concatenate(points)


def nerfstudio_to_poses(outputs: DataparserOutputs, meta: Dict[str, Any], root: Path) -> np.ndarray:
    """The 4×4 map from nerfstudio's normalised coordinates to those of the poses in transforms.json.

    nerfstudio maps a pose position x to ``dataparser_scale · dataparser_transform · [x; 1]``, except that
    both also fold in the scene's ``applied_transform`` and ``applied_scale`` (how some earlier capture's
    coordinates became the transforms.json ones). Those are taken out again, so the result is in the
    coordinates the user's poses are written in.
    """
    transform = np.eye(4)
    transform[:3] = outputs.dataparser_transform.double().cpu().numpy()
    scale = float(outputs.dataparser_scale)
    applied = meta.get("applied_transform")
    if applied is None and (root / "colmap" / "sparse" / "0").exists():
        applied = sf.COLMAP_APPLIED_TRANSFORM
    if applied is not None:
        applied_4x4 = np.eye(4)
        applied_4x4[:3] = np.asarray(applied, dtype=np.float64)[:3]
        transform = transform @ np.linalg.inv(applied_4x4)
    scale /= float(meta.get("applied_scale", 1.0))
    return np.linalg.inv(transform) @ np.diag([1 / scale, 1 / scale, 1 / scale, 1.0])


contrastive_lift_dataparser = DataParserSpecification(
    config=ContrastiveLiftDataParserConfig(),
    description="transforms.json with per-frame 2D instance segments (contrastive-lift-ns scene format)",
)
