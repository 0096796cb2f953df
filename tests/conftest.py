"""Shared fixtures: small scenes in the project's format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_flat_scene(root: Path, frames: int = 4, size: int = 16, seed: int = 0) -> Path:
    """A minimal scene for data-path tests: noise images, blocky segments, cameras on a circle.

    Not a renderable scene (the images are noise); training tests use ``cl-make-scene`` output instead.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "segments").mkdir()
    meta = {"fl_x": size, "fl_y": size, "cx": size / 2, "cy": size / 2, "w": size, "h": size, "frames": []}
    for i in range(frames):
        angle = 2 * np.pi * i / frames
        position = np.array([3 * np.cos(angle), 3 * np.sin(angle), 1.0])
        forward = -position / np.linalg.norm(position)
        right = np.cross(forward, [0, 0, 1])
        right /= np.linalg.norm(right)
        pose = np.eye(4)
        pose[:3, :3] = np.stack([right, np.cross(right, forward), -forward], axis=1)
        pose[:3, 3] = position
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"images/{i}.png")
        segments = np.zeros((size, size), np.uint8)
        segments[: size // 2, : size // 2] = rng.integers(1, 50)
        segments[size // 2 :, size // 2 :] = rng.integers(50, 100)
        Image.fromarray(segments).save(root / f"segments/{i}.png")
        meta["frames"].append(
            {"file_path": f"images/{i}.png", "segments_path": f"segments/{i}.png", "transform_matrix": pose.tolist()}
        )
    names = [f["file_path"] for f in meta["frames"]]
    meta.update(train_filenames=names[:-1], val_filenames=names[-1:], test_filenames=names[-1:])
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def flat_scene(tmp_path: Path) -> Path:
    return write_flat_scene(tmp_path / "scene")
