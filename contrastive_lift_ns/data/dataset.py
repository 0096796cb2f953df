"""Per-pixel 2D segments, semantics and confidence for each image, loaded beside nerfstudio's RGB."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.scene_box import SceneBox

from contrastive_lift_ns.data import scene_format as sf
from contrastive_lift_ns.data.label_volume import label_volume

LABEL_KEYS = ("segments", "semantics", "confidence")
GT_KEYS = ("gt_instance", "gt_semantics")


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
    """

    # An own list: the datamanager edits the base class's list in place.
    exclude_batch_keys_from_device: List[str] = ["image", "mask", *LABEL_KEYS, *GT_KEYS]

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


def _instance_ids(path: Path, frame: str, what: str) -> np.ndarray:
    """An instance id map; a negative id (-1, as some segmenters write) means "no instance", like 0."""
    return np.maximum(sf.read_label_map(path, frame, what), 0)


def _resize_nearest(values: torch.Tensor, size: tuple) -> torch.Tensor:
    """H×W map → size[0]×size[1]×1, nearest-neighbour so ids stay ids."""
    if tuple(values.shape) != size:
        dtype = values.dtype
        values = F.interpolate(values[None, None].double(), size=size, mode="nearest-exact")[0, 0].to(dtype)
    return values[..., None]
