"""Rendered images as files: colour PNGs written atomically, and contact sheets of several views."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from contrastive_lift_ns.atomic import atomic_save_image
from contrastive_lift_ns.drawing.palette import id_colours


def save_rgb(path: Path, rgb: torch.Tensor) -> None:
    """An H×W×3 float image in [0, 1] as an 8-bit PNG."""
    array = (rgb.clamp(0, 1) * 255).round().byte().cpu().numpy()
    atomic_save_image(Image.fromarray(array), path)


def id_image(ids: np.ndarray) -> np.ndarray:
    """An id map in the palette's colours, as 8-bit RGB."""
    return (id_colours(torch.from_numpy(np.asarray(ids, dtype=np.int64))).numpy() * 255).round().astype(np.uint8)


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], tile: int = 192) -> np.ndarray:
    """Rows of equally sized 8-bit RGB images, upscaled to at least ``tile`` pixels, under column titles."""
    scale = max(1, int(np.ceil(tile / rows[0][0].shape[0])))
    gap, header = 4, 22
    tiles = [[image.repeat(scale, 0).repeat(scale, 1) for image in row] for row in rows]
    height, width = tiles[0][0].shape[:2]
    columns = len(titles)
    sheet = np.full((header + len(tiles) * (height + gap), columns * (width + gap) - gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, image in enumerate(row):
            top, left = header + r * (height + gap), c * (width + gap)
            sheet[top : top + height, left : left + width] = image
    canvas = Image.fromarray(sheet)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    for c, title in enumerate(titles):
        draw.text((c * (width + gap) + 4, 3), title, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
