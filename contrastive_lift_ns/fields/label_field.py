"""A field of labels: a hash grid and a small MLP that map 3D points to a vector.

The same architecture serves every label the model renders: the fast and slow instance embeddings, the
semantic logits and Panoptic Lifting's instance logits. It reads positions only (no view direction), and the
caller passes detached positions, so nothing it learns moves the geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Type

import torch
from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.mlp import MLPWithHashEncoding
from nerfstudio.field_components.spatial_distortions import SpatialDistortion
from torch import Tensor, nn


@dataclass
class LabelFieldConfig(InstantiateConfig):
    """Size of one label field's hash grid and MLP."""

    _target: Type = field(default_factory=lambda: LabelField)
    """Target class to instantiate."""
    num_levels: int = 12
    """Hash grid levels."""
    base_res: int = 16
    """Coarsest grid resolution."""
    max_res: int = 512
    """Finest grid resolution; objects a few voxels wide at this resolution can still be told apart."""
    log2_hashmap_size: int = 17
    """log2 of the entries per level."""
    features_per_level: int = 2
    """Features per hash entry."""
    hidden_dim: int = 64
    """Width of the MLP's hidden layers."""
    num_layers: int = 2
    """MLP layers (hidden layers + 1)."""


class LabelField(nn.Module):
    """Maps world positions to ``out_dim`` label values."""

    def __init__(
        self,
        config: LabelFieldConfig,
        out_dim: int,
        aabb: Tensor,
        spatial_distortion: Optional[SpatialDistortion],
        implementation: Literal["tcnn", "torch"] = "tcnn",
    ) -> None:
        super().__init__()
        self.register_buffer("aabb", aabb.clone())
        self.spatial_distortion = spatial_distortion
        self.out_dim = out_dim
        self.network = MLPWithHashEncoding(
            num_levels=config.num_levels,
            min_res=config.base_res,
            max_res=config.max_res,
            log2_hashmap_size=config.log2_hashmap_size,
            features_per_level=config.features_per_level,
            num_layers=config.num_layers,
            layer_width=config.hidden_dim,
            out_dim=out_dim,
            activation=nn.ReLU(),
            out_activation=None,
            implementation=implementation,
        )

    def forward(self, positions: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch out_dim"]:
        if self.spatial_distortion is not None:
            unit = (self.spatial_distortion(positions) + 2.0) / 4.0  # contracted space is [-2, 2]^3
        else:
            unit = SceneBox.get_normalized_positions(positions, self.aabb)
        unit = unit.clamp(0.0, 1.0)
        values = self.network(unit.reshape(-1, 3))
        return values.reshape(*positions.shape[:-1], self.out_dim).to(torch.float32)
