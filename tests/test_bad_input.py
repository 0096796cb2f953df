"""Nothing wrong passes silently: each bad input or flag a hostile but realistic user tried gets a clear error
(or a documented handling) before any long work starts. One test per case, so the table can only grow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrastive_lift_ns.clustering.instance_clusters import ClusteringConfig
from contrastive_lift_ns.data.dataset import ContrastiveLiftDataset
from contrastive_lift_ns.data.pixel_sampler import ContrastivePixelSamplerConfig
from contrastive_lift_ns.data.scene_format import SceneFormatError
from contrastive_lift_ns.fields.label_field import LabelFieldConfig
from contrastive_lift_ns.keys import Batch
from contrastive_lift_ns.model import ContrastiveLiftModelConfig

from .conftest import dataparser_outputs, edit_transforms


def _fails(scene: Path, *fragments: str, split: str = "train") -> str:
    with pytest.raises(SceneFormatError) as error:
        ContrastiveLiftDataset(dataparser_outputs(scene, split))[1]
    message = str(error.value)
    assert all(fragment in message for fragment in fragments), message
    return message


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "transforms.json: not found"),
        ("", "transforms.json: the file is empty"),
        ("{ not json", "transforms.json: not valid JSON"),
        ('{"frames": []}', "needs a non-empty 'frames' list"),
        ("[1, 2]", "must hold a JSON object"),
    ],
)
def test_a_broken_transforms_json_is_named_before_nerfstudio_parses_it(flat_scene, content, message):
    path = flat_scene / "transforms.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    with pytest.raises(SceneFormatError, match=message):
        dataparser_outputs(flat_scene)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("semantic_classes", "background", "'semantic_classes' must be a list of class names"),
        ("thing_classes", [1.5], "'thing_classes' must be a list of class ids"),
        ("test_filenames", "images/3.png", "'test_filenames' must be a list of file_path strings"),
        ("label_downscale_factor", "2", "'label_downscale_factor' must be a whole number"),
        ("fl_x", "16", "'fl_x' must be a number"),
    ],
)
def test_every_top_level_key_has_its_type_checked(flat_scene, key, value, message):
    edit_transforms(flat_scene, lambda meta: meta.update({key: value}))
    with pytest.raises(SceneFormatError, match=message):
        dataparser_outputs(flat_scene)


def test_a_frame_key_of_the_wrong_type_is_named(flat_scene):
    edit_transforms(flat_scene, lambda meta: meta["frames"][2].update(segments_path=["segments/2.png"]))
    with pytest.raises(SceneFormatError, match="frame 'images/2.png': 'segments_path' must be a file path string"):
        dataparser_outputs(flat_scene)


@pytest.mark.parametrize("suffix, shape", [(".png", (8, 8)), (".npy", (7, 13))])
def test_a_wrongly_sized_confidence_map_is_rejected_like_a_segment_map(flat_scene, suffix, shape):
    (flat_scene / "confidence").mkdir()
    for i in range(4):
        size = shape if i == 1 else (16, 16)
        path = flat_scene / f"confidence/{i}{suffix}"
        if suffix == ".png":
            Image.fromarray(np.full(size, 200, np.uint8)).save(path)
        else:
            np.save(path, np.full(size, 0.5, np.float32))
    edit_transforms(
        flat_scene,
        lambda meta: [f.update(confidence_path=f"confidence/{i}{suffix}") for i, f in enumerate(meta["frames"])],
    )
    _fails(flat_scene, "images/1.png", f"confidence/1{suffix}", f"{shape[1]}×{shape[0]} (W×H) but must be 16×16")


def test_label_maps_may_be_smaller_by_the_declared_factor_only(flat_scene):
    for i in range(4):
        Image.fromarray(np.kron(np.array([[i + 1, 0], [0, i + 2]], np.uint8), np.ones((4, 4), np.uint8))).save(
            flat_scene / f"segments/{i}.png"
        )  # 8×8 maps for 16×16 images
    _fails(flat_scene, "images/0.png", "8×8 (W×H) but must be 16×16")
    edit_transforms(flat_scene, lambda meta: meta.update(label_downscale_factor=2))
    item = ContrastiveLiftDataset(dataparser_outputs(flat_scene))[0]
    assert item[Batch.SEGMENTS].shape[:2] == (16, 16)  # resized to the image by nearest neighbour
    edit_transforms(flat_scene, lambda meta: meta.update(label_downscale_factor=4))
    _fails(flat_scene, "8×8 (W×H) but must be 4×4, its image's 16×16 divided by the scene's label_downscale_factor 4")


def test_negative_segment_ids_mean_no_instance(flat_scene):
    ids = np.full((16, 16), -1, np.int32)
    ids[:8, :8] = 7
    np.save(flat_scene / "segments/1.npy", ids)
    edit_transforms(flat_scene, lambda meta: meta["frames"][1].update(segments_path="segments/1.npy"))
    item = ContrastiveLiftDataset(dataparser_outputs(flat_scene))[1]
    segments = item[Batch.SEGMENTS][..., 0]
    assert set(segments.unique().tolist()) == {0, 7} and (segments[8:, 8:] == 0).all()
    assert (item[Batch.SEMANTICS][..., 0] == (segments != 0).long()).all()  # -1 is not an object either


def test_a_negative_semantic_id_is_quoted(flat_scene):
    (flat_scene / "sem").mkdir()
    for i in range(4):
        np.save(flat_scene / f"sem/{i}.npy", np.full((16, 16), -1 if i == 1 else 0, np.int32))
    edit_transforms(
        flat_scene, lambda meta: [f.update(semantics_path=f"sem/{i}.npy") for i, f in enumerate(meta["frames"])]
    )
    _fails(flat_scene, "images/1.png", "sem/1.npy", "class id -1, outside the 2 'semantic_classes'")


def test_images_of_different_sizes_stop_before_training(flat_scene):
    Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(flat_scene / "images/2.png")
    with pytest.raises(SceneFormatError, match="images differ in size: .*16×16.*images/2.png is 16×20"):
        dataparser_outputs(flat_scene)


def test_an_empty_test_split_is_named_when_the_data_is_set_up(flat_scene):
    edit_transforms(flat_scene, lambda meta: meta.update(test_filenames=[], val_filenames=[]))
    dataparser_outputs(flat_scene, "train")  # training alone would work
    with pytest.raises(SceneFormatError, match="the 'test' split has no frames"):
        dataparser_outputs(flat_scene, "test")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ContrastiveLiftModelConfig(embedding_dim=0), "embedding-dim must be at least 1, got 0"),
        (lambda: ContrastiveLiftModelConfig(label_samples_per_ray=0), "label-samples-per-ray must be at least 1"),
        (lambda: ContrastiveLiftModelConfig(slow_field_momentum=1.0), "slow-field-momentum must lie in \\[0, 1\\)"),
        (lambda: ContrastiveLiftModelConfig(instance_loss_start_step=-1), "instance-loss-start-step must not be"),
        (lambda: ClusteringConfig(num_pixels=0), "num-pixels must be at least 100, got 0"),
        (lambda: ClusteringConfig(min_cluster_size=1), "min-cluster-size must be at least 2"),
        (lambda: LabelFieldConfig(cell_pixels=0), "cell-pixels must be positive"),
        (lambda: LabelFieldConfig(max_res=4), "max-res must be at least base-res"),
        (lambda: ContrastivePixelSamplerConfig(rays_per_image=0), "rays-per-image must be even"),
    ],
)
def test_flags_that_make_training_useless_are_rejected_when_the_config_is_built(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_a_scene_without_any_segment_warns(flat_scene, capsys):
    for i in range(4):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(flat_scene / f"segments/{i}.png")
    dataset = ContrastiveLiftDataset(dataparser_outputs(flat_scene))
    keys = ("image", Batch.SEGMENTS, Batch.SEMANTICS, Batch.CONFIDENCE)
    batch = {key: torch.stack([dataset[i][key] for i in range(3)]) for key in keys}
    batch["image_idx"] = torch.arange(3)
    sampler = ContrastivePixelSamplerConfig(images_per_batch=2, rays_per_image=8).setup(num_rays_per_batch=32)
    out = sampler.sample(batch)
    assert out[Batch.INSTANCE_SEGMENTS].numel() == 0 and len(out["indices"]) == 32
    assert "No training image has a 2D segment" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (lambda m: m["frames"][2]["transform_matrix"][0].__setitem__(3, float("nan")), ("images/2.png", "nan", "row 0")),
        (lambda m: m["frames"][1]["transform_matrix"][1].__setitem__(1, float("inf")), ("images/1.png", "inf")),
        (lambda m: m["frames"][3].__setitem__("fl_x", float("nan")), ("images/3.png", "'fl_x' is nan")),
        (lambda m: m.__setitem__("fl_y", -3.0), ("'fl_y' is -3.0", "positive")),
        (lambda m: m["frames"][0].pop("transform_matrix"), ("images/0.png", "no 'transform_matrix'")),
        (lambda m: m.__setitem__("frames", m["frames"][:1]), ("single camera", "images/0.png")),
        (
            lambda m: [f["transform_matrix"][r].__setitem__(3, 1.0) for f in m["frames"] for r in range(3)],
            ("all 4 cameras stand at one point",),
        ),
    ],
)
def test_bad_poses_are_named_before_nerfstudio_normalises_them(flat_scene, edit, fragments):
    """nerfstudio would spread a NaN pose to every camera, or divide by the spread of one camera."""
    edit_transforms(flat_scene, edit)
    with pytest.raises(SceneFormatError) as error:
        dataparser_outputs(flat_scene)
    message = str(error.value)
    assert "transforms.json" in message and all(fragment in message for fragment in fragments), message
