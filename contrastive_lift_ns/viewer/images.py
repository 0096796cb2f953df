"""Writing rendered colour images as PNGs, through a temporary file so no reader sees half an image."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from PIL import Image


def _save_atomically(image: Image.Image, path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_rgb(path: Path, rgb: torch.Tensor) -> None:
    """An H×W×3 float image in [0, 1] as an 8-bit PNG."""
    array = (rgb.clamp(0, 1) * 255).round().byte().cpu().numpy()
    _save_atomically(Image.fromarray(array), path)
