"""Shared fixtures: small scenes in the project's format; how the tests share the CPU between pytest-xdist
workers (``make test`` runs two)."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from nerfstudio.scripts.train import train_loop
from PIL import Image

from contrastive_lift_ns.data.dataparser import ContrastiveLiftDataParserConfig
from contrastive_lift_ns.generator.writer import MakeSceneConfig, make_scene
from contrastive_lift_ns.method_configs import contrastive_lift_small

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:  # the cores shared equally, also by the commands the tests start (OpenMP spins when oversubscribed)
    _THREADS = str(max(1, len(os.sched_getaffinity(0)) // _WORKERS))
    os.environ["OMP_NUM_THREADS"] = _THREADS
    torch.set_num_threads(int(_THREADS))


_COSTLY_FIXTURES = ("trained_run", "tiny_run", "rooms")  # trained models and a 500-object room


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items) -> None:
    """The tests that share a costly fixture go to one worker, which builds it once (``--dist loadgroup``)."""
    for item in items:
        shared = [name for name in _COSTLY_FIXTURES if name in item.fixturenames]
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))


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


def dataparser_outputs(scene: Path, split: str = "train"):
    """The project's dataparser's outputs for a scene folder."""
    return ContrastiveLiftDataParserConfig(data=scene).setup().get_dataparser_outputs(split)


def edit_transforms(scene: Path, edit) -> None:
    """Rewrites the scene's transforms.json after ``edit(meta)`` changed it in place."""
    meta = json.loads((scene / "transforms.json").read_text())
    edit(meta)
    (scene / "transforms.json").write_text(json.dumps(meta))


@pytest.fixture
def flat_scene(tmp_path: Path) -> Path:
    return write_flat_scene(tmp_path / "scene")


@dataclass
class TrainedRun:
    """A contrastive-lift-small model trained on a generated scene; shared by the tests of one session."""

    scene: Path
    config: Path


def train_in_process(
    scene: Path, output_dir: Path, max_steps: int, steps_per_save: Optional[int] = None, **model_overrides
) -> Path:
    """Trains ``contrastive-lift-small`` the way ``ns-train`` does, without a subprocess; returns config.yml."""
    config = copy.deepcopy(contrastive_lift_small.config)
    config.pipeline.datamanager.data = scene
    config.output_dir = output_dir
    config.vis = "tensorboard"
    config.max_num_iterations = max_steps
    config.steps_per_save = steps_per_save or max_steps
    config.save_only_latest_checkpoint = steps_per_save is None
    config.machine.device_type = "cpu"
    config.viewer.quit_on_train_completion = True
    config.logging.local_writer.enable = False  # its console table crashes on a 0.0 rate in-process
    for key, value in model_overrides.items():
        setattr(config.pipeline.model, key, value)
    config.set_timestamp()
    config.save_config()
    train_loop(local_rank=0, world_size=0, config=config)
    return config.get_base_dir() / "config.yml"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    root = tmp_path_factory.mktemp("trained")
    scene = make_scene(
        MakeSceneConfig(output_dir=root / "scene", num_objects=8, num_views=40, resolution=64, seed=1), progress=False
    )
    # 900 steps: PQ^scene 0.95 with all 8 objects matched (the 2D input: 0.48), consistency 0.98 (2026-12-07)
    return TrainedRun(scene=scene, config=train_in_process(scene, root / "outputs", max_steps=900))
