"""nerfstudio's data manager, plus the two samples of pixels the lift draws.

- **Training batches** (``next_train``): the pixel sampler's uniform rays and instance rays
  (``data/pixel_sampler.py``); the instance rays are marked in the ray bundle's metadata
  (``keys.RayMetadata.INSTANCE_RAY``), so the model knows which rays are which without seeing the batch.
- **Training pixels** (``training_pixels``): pixels of all training views with their 2D segment ids, which the
  model renders and clusters into objects, and ``cl-export`` turns into points. A share of them can be spread
  evenly over the 2D segments (the same number for every segment of every view), so that an object that is
  small and seen in few views still gets enough points to form a cluster; the rest are uniform.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, NamedTuple, Tuple, Type

import torch
from jaxtyping import Int
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from torch import Tensor

from contrastive_lift_ns import workarounds
from contrastive_lift_ns.data.dataset import ContrastiveLiftDataset
from contrastive_lift_ns.data.pixel_sampler import ContrastivePixelSamplerConfig
from contrastive_lift_ns.keys import RayMetadata


MIN_SEGMENT_PIXELS = 4
"""2D segments smaller than this (stray pixels of a segmenter) get no points of their own in a balanced sample."""


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

    # nerfstudio gives each process 4 loader workers whatever the machine; a share of its cores instead.
    def setup_train(self) -> None:
        with workarounds.loader_workers(workarounds.machine_workers(self.world_size)):
            super().setup_train()

    def setup_eval(self) -> None:
        with workarounds.loader_workers(workarounds.machine_workers(self.world_size)):
            super().setup_eval()

    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        return _mark_instance_rays(*super().next_train(step))

    def next_eval(self, step: int) -> Tuple[RayBundle, Dict]:
        return _mark_instance_rays(*super().next_eval(step))

    def training_pixels(self, count: int, seed: int, segment_share: float = 0.0) -> PixelSample:
        """``count`` pixels of the training views with their 2D segment ids; the same seed gives the same pixels.
        Render them with ``train_ray_generator``.

        ``segment_share`` of them are spread evenly over the 2D segments of at least ``MIN_SEGMENT_PIXELS``
        pixels: each (view, segment) gets the same number of distinct pixels, or all of its pixels if it has
        fewer. The rest are uniform: a view uniformly at random, then a pixel of it.
        """
        generator = torch.Generator().manual_seed(seed)
        parts = [self._segment_pixels(round(segment_share * count), generator)] if segment_share > 0 else []
        parts.append(self._uniform_pixels(count - sum(len(p.segments) for p in parts), generator))
        return PixelSample(torch.cat([p.indices for p in parts]), torch.cat([p.segments for p in parts]))

    def _uniform_pixels(self, count: int, generator: torch.Generator) -> PixelSample:
        dataset = self.train_dataset
        cameras = dataset.cameras
        views = torch.randint(len(cameras), (count,), generator=generator)
        size = torch.cat([cameras.height[views], cameras.width[views]], dim=-1)
        yx = (torch.rand(count, 2, generator=generator) * size).long()
        segments = torch.zeros(count, dtype=torch.long)
        for view in views.unique().tolist():  # one label map in memory at a time
            here = views == view
            segments[here] = dataset.segments_of(view)[yx[here, 0], yx[here, 1]]
        return PixelSample(torch.cat([views[:, None], yx], -1), segments)

    def _segment_pixels(self, count: int, generator: torch.Generator) -> PixelSample:
        dataset = self.train_dataset
        sizes = []  # per view: its segments' pixel counts, read once to share the budget out
        for view in range(len(dataset)):
            ids, areas = dataset.segments_of(view).unique(return_counts=True)
            sizes.append(areas[ids != 0])
        segment_views = sum(int((a >= MIN_SEGMENT_PIXELS).sum()) for a in sizes) or 1
        per_segment = max(1, count // segment_views)
        indices, segments = [], []
        for view in range(len(dataset)):
            labels = dataset.segments_of(view)
            flat = labels.reshape(-1)
            ids, inverse, areas = flat.unique(return_inverse=True, return_counts=True)
            # each pixel's rank among its segment's pixels in a random order: keep the first per_segment
            order = torch.randperm(len(flat), generator=generator)
            ordered = inverse[order]
            by_segment = torch.argsort(ordered, stable=True)
            starts = torch.cumsum(areas, 0) - areas
            rank = torch.empty_like(flat)
            rank[by_segment] = torch.arange(len(flat)) - starts[ordered[by_segment]]
            keep = (rank < per_segment) & (ids[ordered] != 0) & (areas[ordered] >= MIN_SEGMENT_PIXELS)
            pixels = order[keep]
            width = labels.shape[1]
            view_column = torch.full_like(pixels, view)
            indices.append(torch.stack([view_column, pixels // width, pixels % width], -1))
            segments.append(flat[pixels])
        return PixelSample(torch.cat(indices).long(), torch.cat(segments).long())


def _mark_instance_rays(ray_bundle: RayBundle, batch: Dict) -> Tuple[RayBundle, Dict]:
    uniform = len(batch["image"])
    instance = torch.zeros(len(ray_bundle), 1, dtype=torch.bool, device=ray_bundle.origins.device)
    instance[uniform:] = True
    ray_bundle.metadata[RayMetadata.INSTANCE_RAY] = instance
    return ray_bundle, batch
