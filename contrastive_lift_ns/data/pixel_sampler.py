"""Draws N rays from each of K images, so the contrastive loss can compare rays of one image only.

2D segment ids are arbitrary per image, so a pair of rays is informative only if both come from the same
image. nerfstudio's sampler spreads a batch over all images (about one ray per image); this one picks K
images and N pixels in each, and keeps the rays of an image contiguous: ray ``k * N + n`` is pixel ``n`` of
the ``k``-th picked image, so a loss can reshape any per-ray tensor to ``(K, N, ...)``.

``random_pixels`` is the other sample the project draws: pixels spread uniformly over all training views, which
clustering and ``cl-export`` render.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Type, Union

import torch
from jaxtyping import Float, Int
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.pixel_samplers import PixelSampler, PixelSamplerConfig
from torch import Tensor


@dataclass
class PerImagePixelSamplerConfig(PixelSamplerConfig):
    """Samples ``num_rays_per_batch / images_per_batch`` pixels from each of ``images_per_batch`` images."""

    _target: Type = field(default_factory=lambda: PerImagePixelSampler)
    """Target class to instantiate."""
    images_per_batch: int = 4
    """K: images per batch. The authors' code uses 1 image of up to 1024 rays; more images per step give the
    instance loss more variety at the same cost."""


class PerImagePixelSampler(PixelSampler):
    """Uniform pixels (or pixels inside the mask) from K distinct images, contiguous per image."""

    config: PerImagePixelSamplerConfig

    def set_num_rays_per_batch(self, num_rays_per_batch: int) -> None:
        images = self.config.images_per_batch
        if images < 1 or num_rays_per_batch % (2 * images):
            raise ValueError(
                f"num_rays_per_batch ({num_rays_per_batch}) must split into an even number of rays for each of "
                f"images_per_batch ({images}) images (the slow-fast loss halves each image's rays)"
            )
        self.num_rays_per_batch = num_rays_per_batch

    def sample_method(
        self,
        batch_size: int,
        num_images: int,
        image_height: int,
        image_width: int,
        mask: Optional[Tensor] = None,
        device: Union[torch.device, str] = "cpu",
    ) -> Int[Tensor, "batch_size 3"]:
        images = self.config.images_per_batch
        per_image = batch_size // images
        if num_images >= images:
            picked = torch.randperm(num_images, device=device)[:images]
        else:  # a split smaller than K (e.g. a few eval images): blocks may repeat an image, which is harmless
            picked = torch.randint(num_images, (images,), device=device)
        if isinstance(mask, Tensor) and not self.config.ignore_mask:
            weights = mask[picked, ..., 0].reshape(images, -1).float()
            if (weights.sum(-1) == 0).any():
                raise ValueError("a training image's mask is empty; there is no pixel to sample")
            flat = torch.multinomial(weights, per_image, replacement=True)
        else:
            flat = torch.randint(image_height * image_width, (images, per_image), device=device)
        image = picked[:, None].expand(-1, per_image)
        return torch.stack([image, flat // image_width, flat % image_width], dim=-1).reshape(-1, 3)

    def collate_image_dataset_batch(self, batch: Dict, num_rays_per_batch: int, keep_full_image: bool = False):
        collated = super().collate_image_dataset_batch(batch, num_rays_per_batch, keep_full_image)
        collated["rays_per_image"] = num_rays_per_batch // self.config.images_per_batch
        return collated

    def collate_image_dataset_batch_list(self, batch: Dict, num_rays_per_batch: int, keep_full_image: bool = False):
        raise ValueError(
            "contrastive-lift needs all images at one resolution (the per-image label maps are stacked); "
            "resize the images or split the scene"
        )


def random_pixels(cameras: Cameras, count: int, seed: int) -> Tuple[Int[Tensor, "count"], Float[Tensor, "count 2"]]:  # noqa: F821
    """``count`` pixels: a view uniformly at random, then a pixel of it; returns (view index, (y, x) of the pixel
    centre), on the CPU. The same seed gives the same pixels."""
    cameras = cameras.to("cpu")
    generator = torch.Generator().manual_seed(seed)
    views = torch.randint(len(cameras), (count,), generator=generator)
    size = torch.cat([cameras.height[views], cameras.width[views]], dim=-1)
    return views, (torch.rand(count, 2, generator=generator) * size).floor() + 0.5
