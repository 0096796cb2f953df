"""The training batch: uniform rays for colour and semantics, plus rays drawn from 2D segments for the instance
loss.

- **Uniform rays** (``num_rays_per_batch`` of them) are nerfstudio's own sample: pixels of random images,
  inside the mask if there is one. They train the colour, the density and the semantic field.
- **Instance rays** come ``rays_per_image`` from each of ``images_per_batch`` images, drawn only from pixels
  whose 2D segment id is not 0, as in the authors' code: a ray without a segment takes part in no pair of the
  contrastive loss, and on generated rooms only about a quarter of the pixels carry one. A share of them
  (``segment_balance``) is spread evenly over the image's segments, so that a small object gets rays, and pairs,
  in every image that shows it; uniform over segment pixels, a 60 px segment of a 128 px view gets about 2 of
  256 rays. The rays of one image are contiguous, so the loss can reshape them to ``(images, rays_per_image)`` and compare ids only
  within an image (2D ids are arbitrary per image). Within an image, even rays are rendered by the fast
  field and odd rays by the slow one.

The batch keeps nerfstudio's keys for the uniform rays (``image``, ``semantics``, ``confidence``…) and adds
``instance_segments``, ``instance_confidence`` and ``rays_per_image`` (``keys.Batch``); ``indices`` lists the
uniform rays first, then the instance rays, and the data manager marks the latter in the ray bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Type

import torch
from jaxtyping import Int
from nerfstudio.data.pixel_samplers import PixelSampler, PixelSamplerConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from contrastive_lift_ns.keys import Batch
from contrastive_lift_ns.validation import require


@dataclass
class ContrastivePixelSamplerConfig(PixelSamplerConfig):
    """nerfstudio's uniform rays, plus ``images_per_batch × rays_per_image`` rays from 2D segment pixels."""

    _target: Type = field(default_factory=lambda: ContrastivePixelSampler)
    """Target class to instantiate."""
    images_per_batch: int = 4
    """Images whose segment pixels give instance rays in each batch (the authors' code uses 1)."""
    rays_per_image: int = 512
    """Instance rays per image, half rendered by the fast field and half by the slow one (authors: 1024)."""
    segment_balance: float = 0.0
    """Share of the instance rays that every 2D segment of the image gets in equal parts; the rest are uniform
    over the segment pixels (0: all uniform, as the authors' code)."""

    def __post_init__(self) -> None:
        require(self, "images_per_batch", self.images_per_batch >= 1, "must be at least 1")
        even = self.rays_per_image >= 2 and self.rays_per_image % 2 == 0
        require(self, "rays_per_image", even, "must be even and at least 2 (the slow-fast loss halves them)")
        require(self, "segment_balance", 0.0 <= self.segment_balance <= 1.0, "must be between 0 and 1")


class ContrastivePixelSampler(PixelSampler):
    """Uniform pixels for colour and semantics; segment pixels of a few images for the instance loss."""

    config: ContrastivePixelSamplerConfig
    _warned = False

    def collate_image_dataset_batch(self, batch: Dict, num_rays_per_batch: int, keep_full_image: bool = False):
        collated = super().collate_image_dataset_batch(batch, num_rays_per_batch, keep_full_image)
        indices = self.instance_pixels(batch[Batch.SEGMENTS][..., 0], batch.get("mask"))
        c, y, x = indices.unbind(-1)
        collated[Batch.INSTANCE_SEGMENTS] = batch[Batch.SEGMENTS][c, y, x]
        collated[Batch.INSTANCE_CONFIDENCE] = batch[Batch.CONFIDENCE][c, y, x]
        collated[Batch.RAYS_PER_IMAGE] = self.config.rays_per_image
        indices[:, 0] = batch["image_idx"][c]  # positions in the batch → the images' camera indices
        collated["indices"] = torch.cat([collated["indices"], indices.to(collated["indices"])])
        return collated

    def instance_pixels(self, segments: Int[Tensor, "images H W"], mask: Optional[Tensor] = None) -> Tensor:
        """(image, y, x) of ``rays_per_image`` segment pixels in each of ``images_per_batch`` images, image by
        image; none when no image has a segment pixel."""
        labelled = segments != 0
        if isinstance(mask, Tensor) and not self.config.ignore_mask:
            labelled &= mask[..., 0].to(labelled.device).bool()
        candidates = torch.nonzero(labelled.flatten(1).any(1))[:, 0]
        if len(candidates) == 0:
            if not self._warned:
                CONSOLE.print(
                    "[bold yellow]No training image has a 2D segment (every segment map is 0): the instance loss has "
                    "nothing to learn from. Check the segments_path maps (cl-segment makes them)."
                )
                self._warned = True
            return torch.zeros(0, 3, dtype=torch.long)
        count = self.config.images_per_batch
        if len(candidates) >= count:
            images = candidates[torch.randperm(len(candidates))[:count]]
        else:  # fewer labelled images than a batch holds: some repeat, which is harmless
            images = candidates[torch.randint(len(candidates), (count,))]
        weights = _pixel_weights(segments[images].flatten(1), labelled[images].flatten(1), self.config.segment_balance)
        flat = torch.multinomial(weights, self.config.rays_per_image, replacement=True)
        width = segments.shape[-1]
        image = images[:, None].expand_as(flat)
        return torch.stack([image, flat // width, flat % width], -1).reshape(-1, 3).long()

    def collate_image_dataset_batch_list(self, batch: Dict, num_rays_per_batch: int, keep_full_image: bool = False):
        raise ValueError(
            "contrastive-lift needs all images at one resolution (the per-image label maps are stacked); "
            "resize the images or split the scene"
        )


def _pixel_weights(segments: Tensor, labelled: Tensor, balance: float) -> Tensor:
    """Per image (row), each pixel's chance of a ray: ``1 - balance`` spread over the labelled pixels, and
    ``balance`` in equal parts over the image's segments."""
    labelled = labelled.float()
    uniform = labelled / labelled.sum(1, keepdim=True).clamp(min=1)
    if balance == 0:
        return uniform
    segments = segments.long() - segments.min()
    rows = torch.arange(len(segments), device=segments.device)[:, None]
    keys = rows * (int(segments.max()) + 1) + segments  # one key per (image, segment)
    _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    share = labelled / counts[inverse].float()  # each segment's pixels add up to 1 in its image
    return (1 - balance) * uniform + balance * share / share.sum(1, keepdim=True).clamp(min=1e-9)
