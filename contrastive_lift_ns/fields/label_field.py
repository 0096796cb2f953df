"""A field of labels: a hash grid and a small MLP that map 3D points to a vector.

The same architecture serves every label the model renders: the fast and slow instance embeddings, the
semantic logits and Panoptic Lifting's instance logits. It reads positions only (no view direction), and the
caller passes detached positions, so nothing it learns moves the geometry.

**Where its cells are.** The grid covers the label volume (``data/label_volume.py``): the box of the capture's
surfaces fills its middle ``1 / (1 + shell)``, and everything outside the box is contracted into the thin shell
around it (``x / r · (1 + shell · (1 - 1 / r))`` for ``r = ‖x‖∞ > 1`` in box units), so the sky and distant walls
still get labels while the objects keep most of the cells. By default the finest level's cells are
``cell_pixels`` pixels wide at the distance the cameras look at, so small objects in a large room get as many
cells as in a small one. The cells are cubes in the world: a flat box uses a flat part of the grid, rather than
finer cells on its short axes. nerfstudio's scene contraction over [-2, 2] would instead give a fixed grid that
coarsens as the room grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Optional, Type

import torch
from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from nerfstudio.field_components.mlp import MLPWithHashEncoding
from torch import Tensor, nn

from contrastive_lift_ns.data.label_volume import LabelVolume
from contrastive_lift_ns.validation import require

SHELL = 0.25
"""Width of the contracted shell around the label box, in box half-sides."""


@dataclass
class LabelFieldConfig(InstantiateConfig):
    """Size of one label field's hash grid and MLP."""

    _target: Type = field(default_factory=lambda: LabelField)
    """Target class to instantiate."""
    num_levels: int = 12
    """Hash grid levels."""
    base_res: int = 16
    """Coarsest grid resolution."""
    max_res: Optional[int] = None
    """Finest grid resolution; None sets it from the cameras so that a finest cell is ``cell_pixels`` wide."""
    cell_pixels: float = 2.0
    """With max_res unset: width of a finest cell, in pixels at the distance the cameras look at."""
    max_res_limit: int = 4096
    """With max_res unset: the largest resolution it may get."""
    log2_hashmap_size: int = 17
    """log2 of the entries per level."""
    features_per_level: int = 2
    """Features per hash entry."""
    hidden_dim: int = 64
    """Width of the MLP's hidden layers."""
    num_layers: int = 2
    """MLP layers (hidden layers + 1)."""

    def __post_init__(self) -> None:
        for name in ("num_levels", "base_res", "features_per_level", "hidden_dim", "num_layers"):
            require(self, name, getattr(self, name) >= 1, "must be at least 1")
        require(self, "max_res", self.max_res is None or self.max_res >= self.base_res, "must be at least base-res")
        require(self, "cell_pixels", self.cell_pixels > 0, "must be positive")
        require(self, "max_res_limit", self.max_res_limit >= self.base_res, "must be at least base-res")
        require(self, "log2_hashmap_size", 4 <= self.log2_hashmap_size <= 30, "must lie in [4, 30]")

    def resolution(self, volume: LabelVolume) -> int:
        """The finest grid resolution this field gets for ``volume``."""
        if self.max_res is not None:
            return self.max_res
        # The grid's cells are cubes (see ``LabelField.grid_coordinates``), so the longest side sets the count.
        cells = volume.cells(2.0 * max(volume.half_extent) * (1.0 + SHELL), self.cell_pixels)
        return int(min(max(math.ceil(cells), 2 * self.base_res), self.max_res_limit))


class LabelField(nn.Module):
    """Maps world positions to ``out_dim`` label values."""

    def __init__(
        self,
        config: LabelFieldConfig,
        out_dim: int,
        volume: LabelVolume,
        implementation: Literal["tcnn", "torch"] = "tcnn",
    ) -> None:
        super().__init__()
        self.config, self.out_dim, self.implementation = config, out_dim, implementation
        self.register_buffer("center", torch.tensor(volume.center, dtype=torch.float32))
        self.register_buffer("half_extent", torch.tensor(volume.half_extent, dtype=torch.float32))
        self.register_buffer("resolution", torch.tensor(config.resolution(volume)))
        self.network = self._network(int(self.resolution))
        self.register_load_state_dict_pre_hook(_take_saved_resolution)

    def _network(self, resolution: int) -> MLPWithHashEncoding:
        config = self.config
        return MLPWithHashEncoding(
            num_levels=config.num_levels,
            min_res=config.base_res,
            max_res=resolution,
            log2_hashmap_size=config.log2_hashmap_size,
            features_per_level=config.features_per_level,
            num_layers=config.num_layers,
            layer_width=config.hidden_dim,
            out_dim=self.out_dim,
            activation=nn.ReLU(),
            out_activation=None,
            implementation=self.implementation,
        )

    def finest_cell(self) -> float:
        """World size of a finest-level cell inside the label box (the same along every axis)."""
        return 2.0 * float(self.half_extent.max()) * (1.0 + SHELL) / int(self.resolution)

    def grid_coordinates(self, positions: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3"]:
        """Positions in [0, 1]³: the label box in the middle, the rest of space contracted around it. Each axis
        spans the share of [0, 1] that its side is of the longest side, so a flat box's cells are cubes in the
        world, not finer on its short axes than on its long one."""
        box = (positions - self.center) / self.half_extent
        radius = box.abs().amax(-1, keepdim=True)
        outside = radius > 1.0
        safe = torch.where(outside, radius, torch.ones_like(radius))
        contracted = torch.where(outside, box / safe * (1.0 + SHELL * (1.0 - 1.0 / safe)), box)
        aspect = self.half_extent / self.half_extent.max()
        return (contracted * aspect / (1.0 + SHELL) + 1.0) / 2.0

    def forward(self, positions: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch out_dim"]:
        unit = self.grid_coordinates(positions).clamp(0.0, 1.0)
        values = self.network(unit.reshape(-1, 3))
        return values.reshape(*positions.shape[:-1], self.out_dim).to(torch.float32)


def _take_saved_resolution(field: LabelField, state_dict: Dict[str, Any], prefix: str, *args) -> None:
    """A checkpoint brings its own grid resolution, even if the cameras (and so the default) changed since."""
    saved = state_dict.get(prefix + "resolution")
    if saved is not None and int(saved) != int(field.resolution):
        field.network = field._network(int(saved)).to(field.resolution.device)
        field.resolution.fill_(int(saved))
