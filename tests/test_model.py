"""The model in isolation: offline construction, detached label rendering, the slow field's EMA."""

from __future__ import annotations

import socket

import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox

from contrastive_lift_ns.data.scene_format import SceneClasses
from contrastive_lift_ns.fields.label_field import LabelFieldConfig
from contrastive_lift_ns.method_configs import trainer_config
from contrastive_lift_ns.model import quantile_samples


def build_model(instance_loss: str = "slow-fast", **overrides):
    config = trainer_config("test", instance_loss, small=True).pipeline.model
    config.implementation = "torch"
    config.semantic_loss_start_step = config.instance_loss_start_step = 0
    for key, value in overrides.items():
        setattr(config, key, value)
    scene_box = SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
    return config.setup(scene_box=scene_box, num_train_data=4, metadata={"scene_classes": SceneClasses()})


def random_rays(count: int) -> RayBundle:
    generator = torch.Generator().manual_seed(0)
    origins = torch.tensor([0.0, 0.0, 2.5]).expand(count, 3)
    directions = torch.nn.functional.normalize(
        torch.randn(count, 3, generator=generator) * 0.2 + torch.tensor([0.0, 0.0, -1.0]), dim=-1
    )
    return RayBundle(
        origins=origins.clone(),
        directions=directions,
        pixel_area=torch.full((count, 1), 1e-4),
        camera_indices=torch.zeros(count, 1, dtype=torch.long),
    )


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


@pytest.mark.parametrize("instance_loss", ["slow-fast", "vanilla", "linear-assignment"])
def test_label_losses_send_no_gradient_to_density_or_colour(instance_loss):
    model = build_model(instance_loss)
    model.train()
    outputs = model(random_rays(64))
    batch = {
        "segments": torch.randint(1, 4, (64, 1)),
        "semantics": torch.randint(0, 2, (64, 1)),
        "confidence": torch.ones(64, 1),
        "rays_per_image": 32,
    }
    losses = model.get_loss_dict(
        outputs,
        {**batch, "image": torch.rand(64, 3)},
        model.get_metrics_dict(outputs, batch | {"image": torch.rand(64, 3)}),
    )
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


def test_scene_can_be_frozen_for_instance_only_training():
    model = build_model(freeze_scene=True)
    assert list(model.get_param_groups()) == ["instance_field"]
    model.train()
    outputs = model(random_rays(16))
    assert not outputs["rgb"].requires_grad and outputs["fast_embedding"].requires_grad
