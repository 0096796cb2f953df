"""The scene format's data path: dataparser, dataset, pixel sampler, and the errors bad files get."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from PIL import Image

from contrastive_lift_ns.data.datamanager import (
    MIN_SEGMENT_PIXELS,
    ContrastiveLiftDataManagerConfig,
    _mark_instance_rays,
)
from contrastive_lift_ns.data.dataparser import ContrastiveLiftDataParserConfig
from contrastive_lift_ns.data.dataset import ContrastiveLiftDataset
from contrastive_lift_ns.data.pixel_sampler import ContrastivePixelSamplerConfig
from contrastive_lift_ns.data.scene_format import SceneFormatError
from contrastive_lift_ns.generator.writer import MakeSceneConfig, make_scene
from contrastive_lift_ns.keys import Batch, RayMetadata

from .conftest import dataparser_outputs, edit_transforms


def test_dataset_loads_segments_semantics_and_confidence(flat_scene):
    dataset = ContrastiveLiftDataset(dataparser_outputs(flat_scene))
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

    edit_transforms(flat_scene, add)
    outputs = dataparser_outputs(flat_scene)
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

    edit_transforms(flat_scene, add)
    train = ContrastiveLiftDataset(dataparser_outputs(flat_scene, "train"))
    assert not {"gt_instance", "gt_semantics"} & set(train[0])
    assert train.metadata["gt_instance_filenames"] is None
    test = ContrastiveLiftDataset(dataparser_outputs(flat_scene, "test"))
    assert (test[0]["gt_instance"] == 1).all()


def test_labels_are_resized_with_nearest_neighbour(flat_scene):
    dataset = ContrastiveLiftDataset(dataparser_outputs(flat_scene), scale_factor=0.5)
    item = dataset[0]
    assert item["image"].shape[:2] == item["segments"].shape[:2] == (8, 8)
    original = ContrastiveLiftDataset(dataparser_outputs(flat_scene))[0]["segments"]
    assert set(item["segments"].unique().tolist()) <= set(original.unique().tolist())


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no_key", "has no 'segments_path'"),
        ("missing_file", "file not found"),
        ("corrupt_file", "unreadable"),
        ("size", "is 16×12 (W×H) but must be 16×16, its image's size"),
        ("float_npy", "must hold integer ids"),
        ("rgb_png", "single-channel"),
    ],
)
def test_bad_segment_maps_get_errors_naming_frame_and_file(flat_scene, breakage, message):
    segments = flat_scene / "segments/1.png"
    if breakage == "no_key":
        edit_transforms(flat_scene, lambda meta: meta["frames"][1].pop("segments_path"))
    elif breakage == "missing_file":
        segments.unlink()
    elif breakage == "corrupt_file":
        segments.write_bytes(b"not a png")
    elif breakage == "size":
        Image.fromarray(np.zeros((12, 16), np.uint8)).save(segments)
    elif breakage == "float_npy":
        np.save(flat_scene / "segments/1.npy", np.zeros((16, 16), np.float32))
        edit_transforms(flat_scene, lambda meta: meta["frames"][1].update(segments_path="segments/1.npy"))
    elif breakage == "rgb_png":
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(segments)
    with pytest.raises(SceneFormatError) as error:
        dataparser_outputs(flat_scene)
    assert message in str(error.value) and "images/1.png" in str(error.value)
    if breakage != "no_key":
        assert "segments/1." in str(error.value)


def test_semantic_id_outside_the_class_list_is_an_error(flat_scene):
    (flat_scene / "sem").mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16), 5 if i == 2 else 1, np.uint8)).save(flat_scene / f"sem/{i}.png")
    edit_transforms(
        flat_scene, lambda meta: [f.update(semantics_path=f"sem/{i}.png") for i, f in enumerate(meta["frames"])]
    )
    dataset = ContrastiveLiftDataset(dataparser_outputs(flat_scene))
    with pytest.raises(SceneFormatError, match=r"images/2.png.*sem/2.png.*class id 5.*2 'semantic_classes'"):
        dataset[2]


def test_instance_rays_lie_on_segment_pixels_image_by_image(flat_scene):
    dataset = ContrastiveLiftDataset(dataparser_outputs(flat_scene))
    keys = ("image", Batch.SEGMENTS, Batch.SEMANTICS, Batch.CONFIDENCE)
    batch = {key: torch.stack([dataset[i][key] for i in range(3)]) for key in keys}
    batch["image_idx"] = torch.tensor([10, 11, 12])  # absolute camera indices of the cached images
    sampler = ContrastivePixelSamplerConfig(images_per_batch=2, rays_per_image=16).setup(num_rays_per_batch=40)
    out = sampler.sample(batch)
    # nerfstudio's uniform rays first (colour and semantics), then the instance rays
    assert len(out["image"]) == len(out[Batch.SEMANTICS]) == 40 and len(out["indices"]) == 40 + 2 * 16
    assert out[Batch.RAYS_PER_IMAGE] == 16 and out[Batch.INSTANCE_SEGMENTS].shape == (32, 1)
    instance = out["indices"][40:]
    cameras = instance[:, 0].view(2, 16)
    assert (cameras == cameras[:, :1]).all() and cameras[0, 0] != cameras[1, 0]  # one image per block
    assert set(cameras[:, 0].tolist()) <= {10, 11, 12}
    for (c, y, x), segment in zip(instance.tolist(), out[Batch.INSTANCE_SEGMENTS][:, 0].tolist()):
        assert segment != 0 and segment == dataset[c - 10][Batch.SEGMENTS][y, x]  # a segment pixel, its own id


def test_uniform_rays_still_cover_pixels_without_a_segment(flat_scene):
    dataset = ContrastiveLiftDataset(dataparser_outputs(flat_scene))
    keys = ("image", Batch.SEGMENTS, Batch.SEMANTICS, Batch.CONFIDENCE)
    batch = {key: torch.stack([dataset[i][key] for i in range(3)]) for key in keys}
    batch["image_idx"] = torch.arange(3)
    out = (
        ContrastivePixelSamplerConfig(images_per_batch=1, rays_per_image=8).setup(num_rays_per_batch=400).sample(batch)
    )
    assert (out[Batch.SEGMENTS][:, 0] == 0).float().mean() > 0.2  # half of each flat image has no segment


def test_balanced_instance_rays_give_a_small_segment_its_share():
    """Uniform over segment pixels, a 4-pixel object beside a 1,020-pixel one gets about 0.4 % of the rays;
    balanced over the segments it gets about half, and both kinds stay on segment pixels."""
    segments = torch.zeros(1, 40, 40, dtype=torch.long)
    segments[0, :30, :34] = 7  # 1,020 px
    segments[0, 35:37, 35:37] = 3  # 4 px
    torch.manual_seed(0)
    share = {}
    for balance in (0.0, 1.0):
        sampler = ContrastivePixelSamplerConfig(images_per_batch=1, rays_per_image=2000, segment_balance=balance)
        _, y, x = sampler.setup(num_rays_per_batch=8).instance_pixels(segments).unbind(-1)
        hit = segments[0, y, x]
        assert (hit != 0).all()
        share[balance] = (hit == 3).float().mean().item()
    assert share[0.0] < 0.02 and 0.4 < share[1.0] < 0.6


def test_data_manager_marks_the_instance_rays():
    rays = RayBundle(
        origins=torch.zeros(7, 3),
        directions=torch.ones(7, 3),
        pixel_area=torch.ones(7, 1),
        camera_indices=torch.zeros(7, 1, dtype=torch.long),
    )
    marked, _ = _mark_instance_rays(rays, {"image": torch.zeros(4, 3)})
    assert marked.metadata[RayMetadata.INSTANCE_RAY][:, 0].tolist() == [False] * 4 + [True] * 3


def test_sampler_rejects_odd_or_empty_instance_batches():
    for rays in (0, 7):
        with pytest.raises(ValueError, match="rays-per-image"):
            ContrastivePixelSamplerConfig(rays_per_image=rays)
    with pytest.raises(ValueError, match="images-per-batch"):
        ContrastivePixelSamplerConfig(images_per_batch=0)
    with pytest.raises(ValueError, match="segment-balance"):
        ContrastivePixelSamplerConfig(segment_balance=1.5)


def test_the_clustering_sample_holds_every_2d_segment_of_more_than_a_few_pixels(tmp_path):
    """A uniform sample of pixels misses small objects seen in few views; the balanced share gives every
    (view, segment) points, as many for a small segment as for a large one (up to its size)."""
    scene = make_scene(
        MakeSceneConfig(output_dir=tmp_path / "room", num_objects=40, num_views=12, resolution=64), progress=False
    )
    manager = ContrastiveLiftDataManagerConfig(data=scene, dataparser=ContrastiveLiftDataParserConfig()).setup(
        device="cpu"
    )
    dataset = manager.train_dataset
    sample = manager.training_pixels(4000, seed=0, segment_share=0.75)
    assert len(sample.segments) == 4000 and torch.equal(manager.training_pixels(4000, 0, 0.75).indices, sample.indices)
    per_view = {}
    for view in range(len(dataset)):
        ids, areas = dataset.segments_of(view).unique(return_counts=True)
        per_view[view] = {int(i): int(a) for i, a in zip(ids, areas) if i != 0 and a >= MIN_SEGMENT_PIXELS}
    views = sample.indices[:, 0]
    for view, segments in per_view.items():
        here = sample.segments[views == view]
        found = dict(zip(*[t.tolist() for t in here.unique(return_counts=True)]))
        for segment, area in segments.items():
            assert found.get(segment, 0) >= min(area, 4), (view, segment, area)
    # the sampled segment ids are the ones at the sampled pixels
    view, y, x = sample.indices[0].tolist()
    assert int(dataset.segments_of(view)[y, x]) == int(sample.segments[0])
    # a uniform sample alone misses some of them
    uniform = manager.training_pixels(4000, seed=0)
    pairs = set(zip(uniform.indices[:, 0].tolist(), uniform.segments.tolist()))
    assert any((v, s) not in pairs for v, segments in per_view.items() for s in segments)
