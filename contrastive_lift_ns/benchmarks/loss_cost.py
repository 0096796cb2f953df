"""Cost of the instance losses against the number of segment labels per image (forward + backward).

The contrastive and concentration losses work on (K, N, N) pair masks, so their cost should not depend on
the number of labels; Panoptic Lifting's linear assignment solves a Hungarian problem per image whose size
grows with it.

cl-bench losses
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch

from contrastive_lift_ns.losses.concentration import concentration_loss
from contrastive_lift_ns.losses.contrastive import slow_fast_contrastive_loss, vanilla_contrastive_loss
from contrastive_lift_ns.losses.linear_assignment import linear_assignment_loss


def _time(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


@dataclass
class LossCostBenchmark:
    """Milliseconds per forward + backward pass of each instance loss against labels per image."""

    labels: Tuple[int, ...] = (5, 50, 500)
    """Numbers of distinct segment labels per image."""
    images: int = 4
    """K, images per batch."""
    rays_per_image: int = 1024
    """N, rays per image (split in half for slow-fast)."""
    dim: int = 3
    """Embedding size D (linear assignment uses as many logits as labels)."""
    repeats: int = 10
    """Timed repetitions after one warm-up."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Torch device."""

    def main(self) -> List[Dict[str, Any]]:
        return _run(self.labels, self.images, self.rays_per_image, self.dim, self.repeats, self.device)


def _time_losses(
    count: int, images: int, rays_per_image: int, dim: int, repeats: int, device: str, generator: torch.Generator
) -> Dict[str, Any]:
    """Milliseconds per forward and backward of each loss, with ``count`` labels per image."""
    segment = torch.randint(1, count + 1, (images, rays_per_image), generator=generator).to(device)
    embeddings = torch.randn(images, rays_per_image, dim, generator=generator).to(device).requires_grad_(True)
    logits = torch.randn(images, rays_per_image, count, generator=generator).to(device).requires_grad_(True)
    confidence = torch.ones(images, rays_per_image, device=device)
    fast, slow = embeddings[:, 0::2], embeddings[:, 1::2].detach()
    fast_labels, slow_labels = segment[:, 0::2], segment[:, 1::2]
    losses = {
        "slow_fast_ms": lambda: (
            slow_fast_contrastive_loss(fast, slow, fast_labels, slow_labels)
            + concentration_loss(fast, slow, fast_labels, slow_labels, confidence[:, 0::2])
        ),
        "vanilla_ms": lambda: vanilla_contrastive_loss(embeddings, segment),
        "linear_assignment_ms": lambda: linear_assignment_loss(logits, segment, confidence),
    }
    row: Dict[str, Any] = {"labels_per_image": count}
    for name, loss in losses.items():
        row[name] = 1000 * _time(lambda loss=loss: loss().backward(), repeats, device)
    return row


def _run(labels, images: int, rays_per_image: int, dim: int, repeats: int, device: str) -> List[Dict[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    rows = [_time_losses(count, images, rays_per_image, dim, repeats, device, generator) for count in labels]
    print(f"Instance losses, K={images} images x N={rays_per_image} rays, D={dim}, {device} (ms per forward+backward)")
    print(f"{'labels/image':>12} {'slow-fast+conc.':>16} {'vanilla':>10} {'linear assign.':>15}")
    for row in rows:
        print(
            f"{row['labels_per_image']:>12} {row['slow_fast_ms']:>16.1f} {row['vanilla_ms']:>10.1f} "
            f"{row['linear_assignment_ms']:>15.1f}"
        )
    return rows
