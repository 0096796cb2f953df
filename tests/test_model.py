"""The model in isolation: offline construction, detached label rendering, the instance rays' layout, the slow
field's EMA, the instance-field-only stage."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation

from contrastive_lift_ns.data.dataparser import ContrastiveLiftDataParserConfig
from contrastive_lift_ns.data.label_volume import LabelVolume
from contrastive_lift_ns.data.scene_format import SceneClasses
from contrastive_lift_ns.fields.label_field import LabelFieldConfig
from contrastive_lift_ns.generator.writer import MakeSceneConfig, make_scene
from contrastive_lift_ns.keys import Batch, Output, RayMetadata
from contrastive_lift_ns.method_configs import trainer_config
from contrastive_lift_ns.model import _surface_labels, quantile_samples

VOLUME = LabelVolume(center=(0.0, 0.0, 0.0), half_extent=(1.0, 1.0, 1.0), pixel_footprint=0.01)


def build_model(instance_loss: str = "slow-fast", **overrides):
    config = trainer_config("test", instance_loss, small=True).pipeline.model
    config.implementation = "torch"
    config.semantic_loss_start_step = config.instance_loss_start_step = 0
    for key, value in overrides.items():
        setattr(config, key, value)
    scene_box = SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
    metadata = {"scene_classes": SceneClasses(), "label_volume": VOLUME}
    return config.setup(scene_box=scene_box, num_train_data=4, metadata=metadata)


def random_rays(count: int, instance_rays: int = 0) -> RayBundle:
    """``count`` rays into the unit cube; the last ``instance_rays`` of them marked as instance rays."""
    generator = torch.Generator().manual_seed(0)
    origins = torch.tensor([0.0, 0.0, 2.5]).expand(count, 3)
    directions = torch.nn.functional.normalize(
        torch.randn(count, 3, generator=generator) * 0.2 + torch.tensor([0.0, 0.0, -1.0]), dim=-1
    )
    rays = RayBundle(
        origins=origins.clone(),
        directions=directions,
        pixel_area=torch.full((count, 1), 1e-4),
        camera_indices=torch.zeros(count, 1, dtype=torch.long),
    )
    if instance_rays:
        rays.metadata[RayMetadata.INSTANCE_RAY] = torch.arange(count)[:, None] >= count - instance_rays
    return rays


def training_batch(uniform: int, images: int, per_image: int) -> dict:
    """A batch as the pixel sampler makes it: uniform rays' labels, then the instance rays' segments."""
    generator = torch.Generator().manual_seed(1)
    return {
        "image": torch.rand(uniform, 3, generator=generator),
        Batch.SEMANTICS: torch.randint(0, 2, (uniform, 1), generator=generator),
        Batch.CONFIDENCE: torch.ones(uniform, 1),
        Batch.INSTANCE_SEGMENTS: torch.randint(1, 4, (images * per_image, 1), generator=generator),
        Batch.INSTANCE_CONFIDENCE: torch.ones(images * per_image, 1),
        Batch.RAYS_PER_IMAGE: per_image,
    }


def test_building_the_model_needs_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    model = build_model()
    assert not hasattr(model.lpips, "net")  # nerfacto's LPIPS (AlexNet download) is replaced


def test_quantile_label_samples_estimate_the_full_render():
    """A surface's weight spread over many nearby samples, as the proposal sampler leaves it."""
    generator = torch.Generator().manual_seed(0)
    rays, samples = 512, 24
    depths = torch.linspace(1.0, 3.0, samples).expand(rays, samples)
    surface = 1.5 + torch.rand(rays, 1, generator=generator)
    weights = torch.exp(-(((depths - surface) / 0.15) ** 2))
    weights = (0.95 * weights / weights.sum(-1, keepdim=True))[..., None]
    positions = torch.stack([depths, torch.zeros_like(depths), torch.zeros_like(depths)], -1)

    def field(points):  # a smooth label field along the ray
        return torch.stack([torch.sin(points[..., 0]), points[..., 0] ** 2], -1)

    full = (weights * field(positions)).sum(-2)
    chosen, share = quantile_samples(positions, weights, 4)
    assert chosen.shape == (rays, 4, 3) and share.shape == (rays, 4, 1)
    torch.testing.assert_close(share.sum(-2), weights.sum(-2))
    error = ((share * field(chosen)).sum(-2) - full).norm(dim=-1) / full.norm(dim=-1)
    heaviest, index = torch.topk(weights, 4, dim=-2)
    top_error = ((heaviest * field(positions.gather(-2, index.expand(-1, -1, 3)))).sum(-2) - full).norm(dim=-1)
    assert error.mean() < 0.03
    assert error.mean() < 0.25 * (top_error / full.norm(dim=-1)).mean()

    empty, empty_share = quantile_samples(positions, torch.zeros_like(weights), 4)  # rays that hit nothing
    assert torch.isfinite(empty).all() and (empty_share == 0).all()


def test_a_pixel_at_an_edge_takes_the_label_of_the_surface_it_sees():
    """Half a ray's weight on an object at x < 0 and half on the one behind it: the blend of their labels lies
    between them, the surface point's label is the front object's; a ray that sees no surface keeps the blend."""

    class TwoObjects(torch.nn.Module):  # object A (embedding +1) for x < 0, object B (-1) behind it
        out_dim = 3

        def forward(self, points):
            return torch.where(points[..., :1] < 0, 1.0, -1.0).expand(*points.shape[:-1], 3)

    field = TwoObjects()
    positions = torch.tensor([[[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]]]).expand(2, 2, 3)
    weights = torch.full((2, 2, 1), 0.5)
    surface = torch.tensor([[-0.4, 0.0, 0.0], [math.nan] * 3])
    blended = (weights * field(positions)).sum(-2)
    labels = _surface_labels(field, surface, positions, weights)
    assert blended.abs().max() < 1e-6  # the blend is neither object
    torch.testing.assert_close(labels[0], torch.ones(3))
    torch.testing.assert_close(labels[1], blended[1])


@pytest.mark.parametrize("instance_loss", ["slow-fast", "vanilla", "linear-assignment"])
def test_label_losses_send_no_gradient_to_density_or_colour(instance_loss):
    model = build_model(instance_loss)
    model.train()
    outputs = model(random_rays(128, instance_rays=64))
    batch = training_batch(64, 2, 32)
    losses = model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch))
    assert {"rgb_loss", "semantic_loss", "instance_loss"} <= set(losses)
    label_loss = sum(
        value for key, value in losses.items() if key in ("semantic_loss", "instance_loss", "concentration_loss")
    )
    label_loss.backward()
    scene = list(model.field.parameters()) + list(model.proposal_networks.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in scene)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.instance_field.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.semantic_field.parameters())
    if model.slow_field is not None:
        assert all(p.grad is None for p in model.slow_field.parameters())


def test_semantic_geometry_gradient_lets_the_semantic_loss_alone_move_the_density():
    model = build_model(semantic_geometry_gradient=1.0)
    model.train()
    outputs = model(random_rays(128, instance_rays=64))
    batch = training_batch(64, 2, 32)
    losses = model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch))
    density = list(model.field.mlp_base.parameters())  # nerfacto's density grid and MLP

    def moves_density(loss) -> bool:
        model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in density)

    assert moves_density(losses["semantic_loss"])
    assert not moves_density(losses["instance_loss"] + losses["concentration_loss"])


def test_the_semantic_gradient_fades_to_nothing_over_its_share_of_the_run():
    model = build_model(semantic_geometry_gradient=1.0, semantic_geometry_fade=0.5)
    model.train()
    model.last_step = 99  # a 100-step run: the gradient is gone from step 50
    density = list(model.field.mlp_base.parameters())

    def density_grad(step: int) -> float:
        model.step = step
        outputs = model(random_rays(128, instance_rays=64))
        batch = training_batch(64, 2, 32)
        loss = model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch))["semantic_loss"]
        model.zero_grad(set_to_none=True)
        loss.backward()
        return sum(float(p.grad.abs().sum()) for p in density if p.grad is not None)

    assert density_grad(0) > 0 and model.semantic_geometry_scale == 1.0
    assert density_grad(25) > 0 and model.semantic_geometry_scale == pytest.approx(0.5)
    assert density_grad(50) == 0 and density_grad(90) == 0


def test_uniform_rays_train_colour_and_semantics_and_instance_rays_the_instance_field(monkeypatch):
    model = build_model()
    model.train()
    rays = random_rays(96, instance_rays=32)
    rays.origins[:, 0] = torch.arange(96) * 0.01  # straight down, each at its own x: a field can tell them apart
    rays.directions[:] = torch.tensor([0.0, 0.0, -1.0])

    def marker(sign: float):
        return lambda positions: torch.stack(
            [positions[..., 0], torch.ones_like(positions[..., 0]), torch.full_like(positions[..., 0], sign)], -1
        )

    monkeypatch.setattr(model.instance_field, "forward", marker(1.0))
    monkeypatch.setattr(model.slow_field, "forward", marker(-1.0))
    outputs = model(rays)
    assert outputs["rgb"].shape == (64, 3) and outputs[Output.SEMANTIC_LOGITS].shape[0] == 64
    # Even instance rays are rendered by the fast field, odd ones by the slow one, which is how the loss pairs
    # them with the labels (labels[:, 0::2] are the fast rays').
    x = torch.arange(64, 96) * 0.01
    fast, slow = outputs[Output.FAST_EMBEDDING], outputs[Output.SLOW_EMBEDDING]
    torch.testing.assert_close(fast[:, 0] / fast[:, 1], x[0::2])
    torch.testing.assert_close(slow[:, 0] / slow[:, 1], x[1::2])
    assert (fast[:, 2] > 0).all() and (slow[:, 2] < 0).all()


def test_rendering_without_marks_gives_every_output_of_every_ray():
    model = build_model()
    outputs = model.render_rays(random_rays(40))
    assert outputs["rgb"].shape == (40, 3) and outputs[Output.EMBEDDING].shape == (40, 3)
    assert outputs[Output.SEMANTIC_LOGITS].shape == (40, 2)


def test_the_slow_field_is_in_no_optimizer_group_but_in_the_checkpoint():
    model = build_model()
    grouped = {id(p) for group in model.get_param_groups().values() for p in group}
    assert not any(id(p) in grouped for p in model.slow_field.parameters())
    assert any(key.startswith("slow_field.") for key in model.state_dict())


def test_slow_field_follows_the_fast_one_by_ema():
    model = build_model(slow_field_momentum=0.9)
    fast = list(model.instance_field.parameters())
    slow = list(model.slow_field.parameters())
    assert all(torch.equal(f, s) for f, s in zip(fast, slow))  # starts as a copy
    with torch.no_grad():
        for p in fast:
            p.add_(1.0)
    before = [s.clone() for s in slow]
    model.slow_field.update(model.instance_field)
    for f, s, b in zip(fast, slow, before):
        assert torch.allclose(s, 0.9 * b + 0.1 * f)


def test_label_fields_use_torch_or_tcnn_hash_grids():
    model = build_model()
    assert model.instance_field.network.tcnn_encoding is None  # torch path here; tcnn where installed
    assert isinstance(model.config.instance_field, LabelFieldConfig)


def test_the_instance_field_can_train_alone():
    model = build_model(instance_field_only=True)
    assert list(model.get_param_groups()) == ["instance_field"]
    model.train()
    outputs = model(random_rays(48, instance_rays=32))
    assert "rgb" not in outputs and Output.SEMANTIC_LOGITS not in outputs  # colour and semantics stay as loaded
    assert outputs[Output.FAST_EMBEDDING].requires_grad


def test_proposal_annealing_does_not_restart_when_the_instance_field_trains_alone():
    """The loaded proposal networks are trained: sampling keeps their trained state (anneal 1) from step 0."""
    attributes = TrainingCallbackAttributes(optimizers=None, grad_scaler=None, pipeline=None, trainer=None)
    for alone in (False, True):
        model = build_model(instance_field_only=alone)
        for callback in model.get_training_callbacks(attributes):
            callback.run_callback_at_location(0, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        assert model.proposal_sampler._anneal == (1.0 if alone else 0.0)


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    """Generated rooms of 25 and 500 objects (128 px), by object count."""
    root = tmp_path_factory.mktemp("rooms")
    return {
        count: make_scene(
            MakeSceneConfig(output_dir=root / str(count), num_objects=count, num_views=64, resolution=128),
            progress=False,
        )
        for count in (25, 500)
    }


def _model_of(scene):
    outputs = ContrastiveLiftDataParserConfig(data=scene).setup().get_dataparser_outputs("train")
    config = trainer_config("test", "slow-fast", small=True).pipeline.model
    config.implementation = "torch"
    config.scene_cell_pixels = 1.5  # the full presets' cell (the small preset's is 1.6 px)
    model = config.setup(
        scene_box=outputs.scene_box, num_train_data=len(outputs.image_filenames), metadata=outputs.metadata
    )
    return model, outputs


def test_the_scene_field_grows_with_the_room_and_the_proposal_grids_keep_their_size(rooms):
    """nerfstudio scales every room into one cube: a fixed grid's finest cell spans ~1.3 px in a 25-object room
    and ~7 px in a 500-object one. The grown scene grid keeps it about the same, with a hash table to match; the
    proposal networks, which only place samples, keep the preset's sizes."""
    built = {count: _model_of(scene) for count, scene in rooms.items()}
    cell_pixels = {}
    for count, (model, outputs) in built.items():
        footprint = outputs.metadata["label_volume"].pixel_footprint
        cell_pixels[count] = 4.0 / model.config.max_res / footprint  # nerfacto's grids span [-2, 2]
    assert 0.67 < cell_pixels[500] / cell_pixels[25] < 1.5, cell_pixels
    preset = trainer_config("test", "slow-fast", small=True).pipeline.model.proposal_net_args_list
    assert all(model.config.proposal_net_args_list == preset for model, _ in built.values())
    small_model, large_model = built[25][0], built[500][0]
    grown = min(small_model.config.log2_hashmap_size + 3, large_model.config.scene_log2_hashmap_limit)
    assert grown <= large_model.config.log2_hashmap_size <= large_model.config.scene_log2_hashmap_limit
    tables = [sum(p.numel() for p in m.field.mlp_base.parameters()) for m in (small_model, large_model)]
    assert tables[1] >= 3 * tables[0]


def test_label_fields_resolve_the_objects_of_a_500_object_room(rooms):
    """The median object spans at least 4 finest cells of each label field, wherever it stands (objects near
    the room's edge are measured with the cells there)."""
    scene = rooms[500]
    model, outputs = _model_of(scene)
    objects = json.loads((scene / "transforms.json").read_text())["scene_objects"]
    transform = outputs.dataparser_transform.double()
    centers = torch.tensor([o["center"] for o in objects], dtype=torch.float64)
    centers = (outputs.dataparser_scale * (centers @ transform[:, :3].T + transform[:, 3])).float()
    sizes = outputs.dataparser_scale * torch.tensor([max(o["size"]) for o in objects])
    for field in (model.semantic_field, model.instance_field):
        step = 1e-4 * torch.eye(3)
        stretch = torch.stack(  # d(grid coordinate)/d(position) along each axis, at each object
            [
                (field.grid_coordinates(centers + step[a])[:, a] - field.grid_coordinates(centers - step[a])[:, a])
                / 2e-4
                for a in range(3)
            ],
            -1,
        )
        cell = 1.0 / (int(field.resolution) * stretch.min(-1).values)
        spans = sizes / cell
        assert spans.median() >= 4, (spans.median(), int(field.resolution))


def test_a_checkpoint_brings_its_own_scene_grid_sizes():
    """The cameras that size the scene grids can differ when a run is loaded (another split, moved cameras):
    the model takes the sizes saved with the weights instead of failing on a size mismatch."""
    fine = LabelVolume(center=(0.0, 0.0, 0.0), half_extent=(1.0, 1.0, 1.0), pixel_footprint=0.001)
    trained = build_model(scene_cell_pixels=1.5)  # the full preset's growing grids
    trained.kwargs["metadata"]["label_volume"] = fine
    config = trained.config
    scene_box = SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
    large = config.setup(
        scene_box=scene_box, num_train_data=4, metadata={"scene_classes": SceneClasses(), "label_volume": fine}
    )
    assert large.config.max_res > trained.config.max_res
    trained.load_state_dict(large.state_dict())
    assert trained.scene_grid_sizes.tolist() == large.scene_grid_sizes.tolist()
    assert trained.field.mlp_base.model[0].hash_table.shape == large.field.mlp_base.model[0].hash_table.shape
