"""nerfstudio's data manager, plus the two samples of pixels the lift draws.

- **Training batches** (``next_train``): the pixel sampler's uniform rays and instance rays
  (``data/pixel_sampler.py``); the instance rays are marked in the ray bundle's metadata
  (``keys.RayMetadata.INSTANCE_RAY``), so the model knows which rays are which without seeing the batch.
- **Training pixels** (``training_pixels``): pixels spread uniformly over all training views, with their 2D
  segment ids, which the model renders and clusters into objects, and ``cl-export`` turns into points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, NamedTuple, Tuple, Type

import torch
from jaxtyping import Int
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from torch import Tensor

from contrastive_lift_ns.data.dataset import ContrastiveLiftDataset
from contrastive_lift_ns.data.pixel_sampler import ContrastivePixelSamplerConfig
from contrastive_lift_ns.keys import RayMetadata


class PixelSample(NamedTuple):
    """Pixels of the training views."""

    indices: Int[Tensor, "count 3"]
    """(training view, row, column) of each pixel, as nerfstudio's ray generator takes them."""
    segments: Int[Tensor, "count"]  # noqa: F821
    """The 2D segment id of each pixel (0 = none)."""


@dataclass
class ContrastiveLiftDataManagerConfig(VanillaDataManagerConfig):
    """VanillaDataManager over the project's dataset, with instance rays from 2D segments."""

    _target: Type = field(default_factory=lambda: ContrastiveLiftDataManager)
    """Target class to instantiate."""
    pixel_sampler: ContrastivePixelSamplerConfig = field(default_factory=ContrastivePixelSamplerConfig)
    """Uniform rays for colour and semantics, and rays from segment pixels for the instance loss."""


class ContrastiveLiftDataManager(VanillaDataManager[ContrastiveLiftDataset]):
    """Marks the instance rays of each batch, and samples pixels for clustering."""

    config: ContrastiveLiftDataManagerConfig

    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        return _mark_instance_rays(*super().next_train(step))

    def next_eval(self, step: int) -> Tuple[RayBundle, Dict]:
        return _mark_instance_rays(*super().next_eval(step))

    def training_pixels(self, count: int, seed: int) -> PixelSample:
        """``count`` random pixels of the training views (a view uniformly at random, then a pixel of it), with
        their 2D segment ids; the same seed gives the same pixels. Render them with ``train_ray_generator``."""
        dataset = self.train_dataset
        cameras = dataset.cameras
        generator = torch.Generator().manual_seed(seed)
        views = torch.randint(len(cameras), (count,), generator=generator)
        size = torch.cat([cameras.height[views], cameras.width[views]], dim=-1)
        yx = (torch.rand(count, 2, generator=generator) * size).long()
        segments = torch.zeros(count, dtype=torch.long)
        for view in views.unique().tolist():  # one label map in memory at a time
            here = views == view
            segments[here] = dataset.segments_of(view)[yx[here, 0], yx[here, 1]]
        return PixelSample(torch.cat([views[:, None], yx], -1), segments)


def _mark_instance_rays(ray_bundle: RayBundle, batch: Dict) -> Tuple[RayBundle, Dict]:
    uniform = len(batch["image"])
    instance = torch.zeros(len(ray_bundle), 1, dtype=torch.bool, device=ray_bundle.origins.device)
    instance[uniform:] = True
    ray_bundle.metadata[RayMetadata.INSTANCE_RAY] = instance
    return ray_bundle, batch
