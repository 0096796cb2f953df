"""A quiet console: while this plugin's models run, the known harmless upstream warnings are hidden (the filters in
``contrastive_lift_ns/workarounds.py``), the image loaders fit the machine, and the plugin's own warnings show."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contrastive_lift_ns import workarounds
from contrastive_lift_ns.data.scene_format import write_label_map
from contrastive_lift_ns.generator.writer import MakeSceneConfig, make_scene
from contrastive_lift_ns.method_configs import contrastive_lift_small
from tests.conftest import train_in_process

STEPS = 3


def _tiny_scene(folder: Path) -> Path:
    return make_scene(MakeSceneConfig(output_dir=folder, num_objects=3, num_views=8, resolution=32), progress=False)


def _train_recording(scene: Path, output_dir: Path):
    """Trains the demo's method for a few steps; returns every warning raised, each one recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # record repeats too, and whatever an earlier test has seen
        train_in_process(scene, output_dir, max_steps=STEPS)
    return caught


def _from(caught, path_end: str):
    return [w for w in caught if Path(w.filename).as_posix().endswith(path_end)]


@pytest.mark.slow
def test_training_prints_no_harmless_upstream_warning(tmp_path):
    caught = _train_recording(_tiny_scene(tmp_path / "scene"), tmp_path / "outputs")
    cameras = _from(caught, "nerfstudio/cameras/cameras.py")
    assert not cameras, [str(w.message)[:80] for w in cameras]
    loaders = [w for w in caught if "worker processes in total" in str(w.message)]
    assert not loaders, [str(w.message) for w in loaders]
    schedulers = [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert not schedulers


@pytest.mark.slow
def test_the_plugins_own_warnings_still_show(tmp_path, capsys):
    """A scene whose segment maps are all 0 trains, and says that the instance loss has nothing to learn from."""
    scene = _tiny_scene(tmp_path / "scene")
    for frame in json.loads((scene / "transforms.json").read_text())["frames"]:
        path = scene / frame["segments_path"]
        write_label_map(path, np.zeros_like(np.asarray(Image.open(path))))
    caught = _train_recording(scene, tmp_path / "outputs")
    assert not _from(caught, "nerfstudio/cameras/cameras.py")
    assert "No training image has a 2D segment" in " ".join(capsys.readouterr().out.split())


def test_the_filters_hide_only_the_listed_upstream_warnings():
    """The same message from another module, and any other message from nerfstudio's cameras, still show."""
    message = "Using a non-tuple sequence for multidimensional indexing is deprecated"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        workarounds.quiet_upstream_warnings()
        warnings.warn_explicit(message, UserWarning, "cameras.py", 1, module="nerfstudio.cameras.cameras")
        warnings.warn_explicit(message, UserWarning, "mine.py", 1, module="contrastive_lift_ns.mine")
        warnings.warn_explicit("something else", UserWarning, "cameras.py", 2, module="nerfstudio.cameras.cameras")
        warnings.warn_explicit(message, DeprecationWarning, "cameras.py", 3, module="nerfstudio.cameras.cameras")
    assert [(w.filename, w.lineno) for w in caught] == [("mine.py", 1), ("cameras.py", 2), ("cameras.py", 3)]


def test_the_image_loaders_get_a_share_of_the_machine(tmp_path):
    """nerfstudio asks for 4 loader workers per process whatever the machine; the plugin's data manager asks for
    no more than the cores, so torch has nothing to warn about."""
    config = copy.deepcopy(contrastive_lift_small.config.pipeline.datamanager)
    config.data = _tiny_scene(tmp_path / "scene")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        datamanager = config.setup(device="cpu", test_mode="val", world_size=1, local_rank=0)
    expected = workarounds.machine_workers(1)
    assert 0 < expected <= 4
    assert datamanager.train_image_dataloader.num_workers == expected
    assert datamanager.eval_image_dataloader.num_workers == expected
    assert not [w for w in caught if "worker processes in total" in str(w.message)]
    assert workarounds.machine_workers(world_size=1_000_000) == 0  # many processes: none each, not a crash
