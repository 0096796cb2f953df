"""Depth supervision: the dataset loads a frame's depth map in nerfstudio's scaled units, the model adds
nerfstudio's depth loss where a batch has depth (and not with the flag off), bad depth files fail before
training, and on a generated scene depth supervision lowers the rendered depth's error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from nerfstudio.utils.eval_utils import eval_setup
from PIL import Image

from contrastive_lift_ns.data.dataset import ContrastiveLiftDataset
from contrastive_lift_ns.data.scene_format import SceneFormatError
from contrastive_lift_ns.generator.writer import MakeSceneConfig, make_scene
from contrastive_lift_ns.keys import Batch
from contrastive_lift_ns.method_configs import contrastive_lift_small
from tests.conftest import dataparser_outputs, train_in_process
from tests.test_model import build_model, random_rays, training_batch


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("depth") / "scene"
    return make_scene(MakeSceneConfig(output_dir=out, num_objects=6, num_views=24, resolution=40, seed=5), progress=False)


def test_the_dataset_loads_depth_in_nerfstudio_units(scene):
    outputs = dataparser_outputs(scene)
    item = ContrastiveLiftDataset(outputs)[0]
    frames = {Path(f["file_path"]).name: f for f in json.loads((scene / "transforms.json").read_text())["frames"]}
    frame = frames[Path(outputs.image_filenames[0]).name]
    millimetres = np.asarray(Image.open(scene / frame["depth_file_path"]), dtype=np.float32)
    expected = torch.from_numpy(millimetres / 1000 * float(outputs.dataparser_scale))[..., None]
    assert item[Batch.DEPTH].shape == (40, 40, 1)
    assert torch.allclose(item[Batch.DEPTH], expected, rtol=1e-5)


def _rays_with_norms(count: int, instance_rays: int):
    rays = random_rays(count, instance_rays)
    rays.metadata["directions_norm"] = torch.full((count, 1), 1.05)
    return rays


@pytest.mark.parametrize("mult, expected", [(1e-3, True), (0.0, False)])
def test_a_batch_with_depth_gets_a_depth_loss_unless_it_is_off(mult, expected):
    model = build_model(depth_loss_mult=mult)
    model.train()
    uniform = 32
    batch = training_batch(uniform, images=2, per_image=8)
    rays = _rays_with_norms(uniform + 16, 16)


    def losses():
        outputs = model(rays)
        return model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch))

    assert "depth_loss" not in losses()  # no depth in the batch: RGB only
    batch[Batch.DEPTH] = torch.full((uniform, 1), 2.0)
    losses = losses()
    assert ("depth_loss" in losses) == expected
    if expected:
        assert torch.isfinite(losses["depth_loss"]) and losses["depth_loss"] > 0
        losses["depth_loss"].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.field.parameters())


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: Image.fromarray(np.zeros((40, 20), np.uint16)).save(p), r"depth map is 20×40 .* 40×40 image"),
        (lambda p: Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(p), r"16/32-bit numbers, got PIL mode 'RGB'"),
        (lambda p: p.write_bytes(b"not a png"), r"unreadable depth map"),
        (lambda p: p.unlink(), r"depth map not found"),
    ],
)
def test_bad_depth_files_fail_naming_the_frame_and_file(scene, tmp_path, write, message):
    copy = Path(shutil.copytree(scene, tmp_path / "scene"))
    outputs = dataparser_outputs(copy)
    write(outputs.metadata["depth_filenames"][2])  # after parsing: the dataset checks every depth file itself
    with pytest.raises(SceneFormatError, match=r"frame '.*frame_00003\.png': .*depth/frame_00003\.png: .*" + message):
        ContrastiveLiftDataset(outputs)


def _depth_error(config: Path) -> float:
    """Median absolute error (m) of the rendered depth on the training views, against the generator's depth
    (the median, as rays through still-empty space render depths near the far plane)."""
    pipeline = eval_setup(config, test_mode="test")[1]
    dataset = pipeline.datamanager.train_dataset
    scale = dataset.dataparser_scale
    errors = []
    for index in range(len(dataset)):
        camera = dataset.cameras[index : index + 1].to(pipeline.device)
        rays = camera.generate_rays(camera_indices=0, keep_shape=True)
        rendered = pipeline.model.get_outputs_for_camera_ray_bundle(rays)["depth"]
        measured = dataset[index][Batch.DEPTH] * rays.metadata["directions_norm"].cpu()  # distance along the ray
        valid = measured > 0
        errors.append((rendered.cpu()[valid] - measured[valid]).abs() / scale)
    return float(torch.cat(errors).median())


@pytest.mark.slow
def test_depth_supervision_lowers_the_depth_error(scene, tmp_path, monkeypatch):
    monkeypatch.setattr(contrastive_lift_small.config.pipeline.datamanager, "train_num_rays_per_batch", 256)
    rgb_only = dict(semantic_loss_start_step=10**6, instance_loss_start_step=10**6)
    errors = {}
    for mult in (0.0, 1e-2):
        config = train_in_process(scene, tmp_path / f"mult{mult}", max_steps=150, depth_loss_mult=mult, **rgb_only)
        errors[mult] = _depth_error(config)
    print(f"depth error on the training views: {errors[0.0]:.3f} m RGB only, {errors[1e-2]:.3f} m with depth")
    assert errors[1e-2] < 0.8 * errors[0.0], errors
