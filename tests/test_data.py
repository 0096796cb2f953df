"""The scene format's data path: dataparser, dataset, pixel sampler, and the errors bad files get."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrastive_lift_ns.data.dataparser import ContrastiveLiftDataParserConfig
from contrastive_lift_ns.data.dataset import ContrastiveLiftDataset
from contrastive_lift_ns.data.pixel_sampler import PerImagePixelSamplerConfig
from contrastive_lift_ns.data.scene_format import SceneFormatError


def _outputs(scene: Path, split: str = "train"):
    return ContrastiveLiftDataParserConfig(data=scene).setup().get_dataparser_outputs(split)


def _edit(scene: Path, edit) -> None:
    meta = json.loads((scene / "transforms.json").read_text())
    edit(meta)
    (scene / "transforms.json").write_text(json.dumps(meta))


def test_dataset_loads_segments_semantics_and_confidence(flat_scene):
    dataset = ContrastiveLiftDataset(_outputs(flat_scene))
    item = dataset[0]
    assert item["segments"].shape == (16, 16, 1) and item["segments"].dtype == torch.int64
    # without semantics_path: class 1 where there is a segment
    assert torch.equal(item["semantics"], (item["segments"] != 0).long())
    assert torch.equal(item["confidence"], torch.ones(16, 16, 1))
    assert len(np.unique(item["segments"])) == 3


def test_optional_maps_and_classes_are_read(flat_scene):
    (flat_scene / "extra").mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16), 2, np.uint8)).save(flat_scene / f"extra/sem{i}.png")
        np.save(flat_scene / f"extra/conf{i}.npy", np.full((16, 16), 0.25, np.float32))

    def add(meta):
        meta["semantic_classes"] = ["wall", "chair", "table"]
        meta["thing_classes"] = [1, 2]
        for i, frame in enumerate(meta["frames"]):
            frame["semantics_path"] = f"extra/sem{i}.png"
            frame["confidence_path"] = f"extra/conf{i}.npy"

    _edit(flat_scene, add)
    outputs = _outputs(flat_scene)
    assert outputs.metadata["scene_classes"].names == ("wall", "chair", "table")
    item = ContrastiveLiftDataset(outputs)[0]
    assert (item["semantics"] == 2).all() and torch.allclose(item["confidence"], torch.tensor(0.25))


def test_ground_truth_never_reaches_training(flat_scene):
    (flat_scene / "gt").mkdir()
    for i in range(4):
        Image.fromarray(np.ones((16, 16), np.uint8)).save(flat_scene / f"gt/{i}.png")

    def add(meta):
        for i, frame in enumerate(meta["frames"]):
            frame["gt_instance_path"] = frame["gt_semantics_path"] = f"gt/{i}.png"

    _edit(flat_scene, add)
    train = ContrastiveLiftDataset(_outputs(flat_scene, "train"))
    assert not {"gt_instance", "gt_semantics"} & set(train[0])
    assert train.metadata["gt_instance_filenames"] is None
    test = ContrastiveLiftDataset(_outputs(flat_scene, "test"))
    assert (test[0]["gt_instance"] == 1).all()


def test_labels_are_resized_with_nearest_neighbour(flat_scene):
    dataset = ContrastiveLiftDataset(_outputs(flat_scene), scale_factor=0.5)
    item = dataset[0]
    assert item["image"].shape[:2] == item["segments"].shape[:2] == (8, 8)
    original = ContrastiveLiftDataset(_outputs(flat_scene))[0]["segments"]
    assert set(item["segments"].unique().tolist()) <= set(original.unique().tolist())


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no_key", "has no 'segments_path'"),
        ("missing_file", "file not found"),
        ("corrupt_file", "unreadable"),
        ("size", "but its image is 16×16"),
        ("float_npy", "must hold integer ids"),
        ("rgb_png", "single-channel"),
    ],
)
def test_bad_segment_maps_get_errors_naming_frame_and_file(flat_scene, breakage, message):
    segments = flat_scene / "segments/1.png"
    if breakage == "no_key":
        _edit(flat_scene, lambda meta: meta["frames"][1].pop("segments_path"))
    elif breakage == "missing_file":
        segments.unlink()
    elif breakage == "corrupt_file":
        segments.write_bytes(b"not a png")
    elif breakage == "size":
        Image.fromarray(np.zeros((12, 16), np.uint8)).save(segments)
    elif breakage == "float_npy":
        np.save(flat_scene / "segments/1.npy", np.zeros((16, 16), np.float32))
        _edit(flat_scene, lambda meta: meta["frames"][1].update(segments_path="segments/1.npy"))
    elif breakage == "rgb_png":
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(segments)
    with pytest.raises(SceneFormatError) as error:
        _outputs(flat_scene)
    assert message in str(error.value) and "images/1.png" in str(error.value)
    if breakage != "no_key":
        assert "segments/1." in str(error.value)


def test_semantic_id_outside_the_class_list_is_an_error(flat_scene):
    (flat_scene / "sem").mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16), 5 if i == 2 else 1, np.uint8)).save(flat_scene / f"sem/{i}.png")
    _edit(flat_scene, lambda meta: [f.update(semantics_path=f"sem/{i}.png") for i, f in enumerate(meta["frames"])])
    dataset = ContrastiveLiftDataset(_outputs(flat_scene))
    with pytest.raises(SceneFormatError, match=r"images/2.png.*sem/2.png.*class id 5.*2 'semantic_classes'"):
        dataset[2]


def test_sampler_draws_contiguous_rays_from_k_images(flat_scene):
    dataset = ContrastiveLiftDataset(_outputs(flat_scene))
    batch = {key: torch.stack([dataset[i][key] for i in range(3)]) for key in ("image", "segments")}
    batch["image_idx"] = torch.tensor([10, 11, 12])  # absolute camera indices of the cached images
    sampler = PerImagePixelSamplerConfig(images_per_batch=2).setup(num_rays_per_batch=64)
    out = sampler.sample(batch)
    assert out["rays_per_image"] == 32
    cameras = out["indices"][:, 0].view(2, 32)
    assert (cameras == cameras[:, :1]).all() and cameras[0, 0] != cameras[1, 0]
    assert set(cameras[:, 0].tolist()) <= {10, 11, 12}
    # each ray carries its own pixel's segment id
    for ray in range(0, 64, 7):
        c, y, x = out["indices"][ray].tolist()
        assert out["segments"][ray] == dataset[c - 10]["segments"][y, x]


def test_sampler_rejects_batches_that_do_not_split_evenly():
    with pytest.raises(ValueError, match="images_per_batch"):
        PerImagePixelSamplerConfig(images_per_batch=3).setup(num_rays_per_batch=64)
