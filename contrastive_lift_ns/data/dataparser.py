"""Reads the project's scene format: nerfstudio's ``transforms.json`` plus per-frame label maps.

Cameras, splits and downscaling are nerfstudio's own (``NerfstudioDataParserConfig``); this parser adds the
file lists of the label maps to the outputs' metadata and checks every map's header up front, so a bad file
fails before training starts, with an error that names the frame and the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Type

from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from contrastive_lift_ns.data import scene_format as sf
from contrastive_lift_ns.data.dataset import label_metadata, split_label_keys


@dataclass
class ContrastiveLiftDataParserConfig(NerfstudioDataParserConfig):
    """nerfstudio's dataparser, plus the 2D segments, semantics and confidence of each frame."""

    _target: Type = field(default_factory=lambda: ContrastiveLiftDataParser)
    """Target class to instantiate."""


@dataclass
class ContrastiveLiftDataParser(Nerfstudio):
    """Adds ``segments``/``semantics``/``confidence`` file lists (and, for eval splits, ground truth) to metadata."""

    config: ContrastiveLiftDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train") -> DataparserOutputs:
        outputs = super()._generate_dataparser_outputs(split)
        meta, transforms_path = sf.load_transforms(self.config.data)
        root = transforms_path.parent
        classes = sf.SceneClasses.from_meta(meta, transforms_path)
        by_image = {self._get_fname(Path(f["file_path"]), root): f for f in meta["frames"]}
        frames = [by_image[name] for name in outputs.image_filenames]

        files = {key: _frame_files(frames, root, f"{key}_path", meta) for key in split_label_keys(split)}
        outputs.metadata.update(label_metadata(classes, files))
        return outputs


def _frame_files(frames: List[Dict], root: Path, key: str, meta: Dict) -> Optional[List[Path]]:
    """The files named by ``key``, checked against their image's size; None if no frame has an optional key.

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
        if key != sf.CONFIDENCE_KEY:
            size = sf.label_map_size(path, frame["file_path"], what=key)
            expected = (int(frame.get("h", meta.get("h"))), int(frame.get("w", meta.get("w"))))
            sf.check_same_size(size, expected, path, frame["file_path"], key)
        elif not path.exists():
            raise sf.SceneFormatError(f"frame '{frame['file_path']}': {path}: file not found")
        paths.append(path)
    return paths


contrastive_lift_dataparser = DataParserSpecification(
    config=ContrastiveLiftDataParserConfig(),
    description="transforms.json with per-frame 2D instance segments (contrastive-lift-ns scene format)",
)
