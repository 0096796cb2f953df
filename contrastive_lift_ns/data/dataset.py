"""Per-pixel 2D segments, semantics and confidence for each image, loaded beside nerfstudio's RGB."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.data.utils.data_utils import get_depth_image_from_path
from PIL import Image

from contrastive_lift_ns.data import scene_format as sf
from contrastive_lift_ns.data.label_volume import label_volume
from contrastive_lift_ns.keys import Batch

LABEL_KEYS = ("segments", "semantics", "confidence")
GT_KEYS = ("gt_instance", "gt_semantics")
# PIL modes of single-channel images deep enough for depth (16-bit or 32-bit integers, 32-bit floats).
_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
_DEPTH_ASPECT_TOLERANCE = 0.02


def split_label_keys(split: str) -> tuple:
    """The label keys a split may load: ground truth is for evaluation only and never reaches training."""
    return LABEL_KEYS if split == "train" else LABEL_KEYS + GT_KEYS


def label_metadata(
    classes: sf.SceneClasses,
    files: Dict[str, Optional[List[Path]]],
    cameras: Cameras,
    scene_box: SceneBox,
    frame_names: List[str],
    to_poses: np.ndarray,
) -> Dict[str, Any]:
    """The dataparser metadata the dataset, the model and ``cl-export`` read. Every dataparser of the project
    fills it:

    - ``scene_classes``: the semantic classes; ``label_volume``: where the cameras look (``LabelVolume``);
    - ``<key>_filenames``: one file per image for each label key, or None (``<key>_path`` in transforms.json);
    - ``frame_names``: each image's name as the user's scene lists it (transforms.json's ``file_path``);
    - ``to_poses``: the 4×4 map from nerfstudio's normalised coordinates to those of the scene's own poses.
    """
    files = {f"{key}_filenames": files.get(key) for key in LABEL_KEYS + GT_KEYS}
    return {
        "scene_classes": classes,
        "label_volume": label_volume(cameras, scene_box),
        "frame_names": frame_names,
        "to_poses": to_poses,
        **files,
    }


class ContrastiveLiftDataset(InputDataset):
    """Adds ``segments`` (int64), ``semantics`` (int64) and ``confidence`` (float32) maps, each H×W×1.

    Without a semantics file, pixels with a segment id are class 1 and all others class 0; without a
    confidence file, confidence is 1. Negative instance ids mean "no instance", like 0. Eval splits also load
    ``gt_instance`` and ``gt_semantics`` when the scene has them (ground-truth semantics default the same way
    from the ground-truth instances). Label maps are resized to the loaded image with nearest-neighbour
    sampling.

    Where the dataparser lists depth maps (nerfstudio's ``depth_filenames`` metadata: ``depth_file_path`` in
    transforms.json, a paper layout's ``depth/``), ``depth_image`` (float32, H×W×1) holds each pixel's depth
    in nerfstudio's scaled units: the file's values times ``depth_unit_scale_factor`` (to metres) times the
    dataparser's scale, as nerfstudio's depth dataset does; 0 means no measurement. Every depth file's header is
    checked when the dataset is built, so a missing or misshapen one fails before training.
    """

    # An own list: the datamanager edits the base class's list in place.
    exclude_batch_keys_from_device: List[str] = ["image", "mask", *LABEL_KEYS, *GT_KEYS, Batch.DEPTH]

    def __init__(self, dataparser_outputs: DataparserOutputs, scale_factor: float = 1.0) -> None:
        super().__init__(dataparser_outputs, scale_factor)
        self.dataparser_scale = float(dataparser_outputs.dataparser_scale)
        """The dataparser's scale of the poses, which depth maps take too."""
        depth_files = self.metadata.get("depth_filenames")
        if depth_files is not None:
            for index, path in enumerate(depth_files):
                camera = self.cameras[index]
                image = (int(camera.height), int(camera.width))
                check_depth_file(Path(path), str(self.image_filenames[index]), image)

    def get_metadata(self, data: Dict) -> Dict:
        idx = data["image_idx"]
        size = tuple(data["image"].shape[:2])
        frame = str(self.image_filenames[idx])
        num_classes = len(self.metadata["scene_classes"].names)

        def labels(key: str, what: str) -> Optional[torch.Tensor]:
            files = self.metadata.get(f"{key}_filenames")
            if files is None:
                return None
            if not key.endswith("semantics"):
                return _resize_nearest(torch.from_numpy(_instance_ids(files[idx], frame, what)), size)
            ids = sf.read_label_map(files[idx], frame, what)
            outside = ids[(ids < 0) | (ids >= num_classes)]
            if outside.size:
                raise sf.SceneFormatError(
                    f"frame '{frame}': {files[idx]}: {what} holds class id {int(outside[0])}, outside the "
                    f"{num_classes} 'semantic_classes' of transforms.json (ids 0 to {num_classes - 1})"
                )
            return _resize_nearest(torch.from_numpy(ids), size)

        out = {"segments": labels("segments", "segments_path")}
        semantics = labels("semantics", "semantics_path")
        out["semantics"] = semantics if semantics is not None else (out["segments"] != 0).long()
        confidence_files = self.metadata.get("confidence_filenames")
        if confidence_files is None:
            out["confidence"] = torch.ones(*size, 1)
        else:
            confidence = torch.from_numpy(sf.read_confidence(confidence_files[idx], frame))
            out["confidence"] = _resize_nearest(confidence, size)
        depth_files = self.metadata.get("depth_filenames")
        if depth_files is not None:
            scale = self.metadata["depth_unit_scale_factor"] * self.dataparser_scale
            out[Batch.DEPTH] = get_depth_image_from_path(Path(depth_files[idx]), size[0], size[1], scale)
        gt_instance = labels("gt_instance", "gt_instance_path")
        if gt_instance is not None:
            out["gt_instance"] = gt_instance
            gt_semantics = labels("gt_semantics", "gt_semantics_path")
            out["gt_semantics"] = gt_semantics if gt_semantics is not None else (gt_instance != 0).long()
        return out

    def segments_of(self, idx: int) -> torch.Tensor:
        """One image's 2D segment ids at its camera's resolution (H×W), without loading the image."""
        camera = self.cameras[idx]
        size = (int(camera.height), int(camera.width))
        ids = _instance_ids(self.metadata["segments_filenames"][idx], str(self.image_filenames[idx]), "segments_path")
        return _resize_nearest(torch.from_numpy(ids), size)[..., 0]


def check_depth_file(path: Path, frame: str, image: tuple) -> None:
    """Raises SceneFormatError naming the frame and the file unless ``path`` is a readable single-channel depth
    map (a 16/32-bit PNG or TIFF, or an ``.npy``) with its (H, W) ``image``'s aspect ratio; nerfstudio resizes
    depth to the image, so only the shape must match."""
    where = f"frame '{frame}': {path}"
    if not path.is_file():
        raise sf.SceneFormatError(f"{where}: depth map not found")
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            shape, found = array.shape, f"an .npy of shape {array.shape} and dtype {array.dtype}"
            deep = array.dtype.kind in "uif" and (array.ndim == 2 or (array.ndim == 3 and shape[2] == 1))
        else:
            with Image.open(path) as depth:
                shape, found = depth.size[::-1], f"PIL mode '{depth.mode}'"
                deep = depth.mode in _DEPTH_MODES
    except Exception as err:  # numpy and PIL raise many types for corrupt files
        raise sf.SceneFormatError(f"{where}: unreadable depth map ({err})") from None
    if not deep:
        raise sf.SceneFormatError(f"{where}: a depth map must be one channel of 16/32-bit numbers, got {found}")
    height, width = shape[:2]
    aspect = image[1] / image[0]
    if abs(width / height - aspect) > _DEPTH_ASPECT_TOLERANCE * aspect:
        raise sf.SceneFormatError(
            f"{where}: depth map is {width}×{height} (W×H), which does not have the shape of its "
            f"{image[1]}×{image[0]} image"
        )


def _instance_ids(path: Path, frame: str, what: str) -> np.ndarray:
    """An instance id map; a negative id (-1, as some segmenters write) means "no instance", like 0."""
    return np.maximum(sf.read_label_map(path, frame, what), 0)


def _resize_nearest(values: torch.Tensor, size: tuple) -> torch.Tensor:
    """H×W map → size[0]×size[1]×1, nearest-neighbour so ids stay ids."""
    if tuple(values.shape) != size:
        dtype = values.dtype
        values = F.interpolate(values[None, None].double(), size=size, mode="nearest-exact")[0, 0].to(dtype)
    return values[..., None]
