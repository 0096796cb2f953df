"""Every use of a private nerfstudio API, in one place.

nerfstudio 1.1.5 has no public way to do these; ``tests/test_private_apis.py`` fails loudly when an update
changes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the dataparser imports this module, and must not import the trainer (a circular import)
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio
    from nerfstudio.engine.trainer import Trainer


def image_path(dataparser: "Nerfstudio", file_path: str, data_dir: Path) -> Path:
    """The image file nerfstudio loads for a transforms.json ``file_path``: the path itself, or its copy in
    ``images_<factor>/`` when the images are downscaled (``Nerfstudio._get_fname``)."""
    return dataparser._get_fname(Path(file_path), data_dir)


def start_step(trainer: "Trainer") -> int:
    """The step a trainer starts (or resumes) at (``Trainer._start_step``, set when it loads a checkpoint)."""
    return trainer._start_step
