"""The instance losses on hand-made embeddings."""

from __future__ import annotations

import pytest
import torch

from contrastive_lift_ns.losses.concentration import concentration_loss
from contrastive_lift_ns.losses.contrastive import slow_fast_contrastive_loss, vanilla_contrastive_loss
from contrastive_lift_ns.losses.linear_assignment import linear_assignment_loss, match_segments


def _clustered(labels: torch.Tensor, spread: float, separation: float, seed: int = 0) -> torch.Tensor:
    """Embeddings around one centre per label: ``spread`` inside a cluster, ``separation`` between centres."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(int(labels.max()) + 1, 3, generator=generator) * separation
    return centres[labels] + torch.randn(*labels.shape, 3, generator=generator) * spread


LABELS = torch.tensor([[1, 1, 2, 2, 3, 3, 1, 2, 3, 0] * 4, [5, 5, 5, 7, 7, 7, 9, 9, 0, 0] * 4])


@pytest.mark.parametrize("loss_name", ["vanilla", "slow-fast"])
def test_loss_falls_as_clusters_tighten_and_separate(loss_name):
    values = []
    for spread, separation in [(2.0, 0.5), (1.0, 2.0), (0.3, 4.0), (0.05, 8.0)]:
        embeddings = _clustered(LABELS, spread, separation)
        if loss_name == "vanilla":
            values.append(vanilla_contrastive_loss(embeddings, LABELS).item())
        else:
            fast, slow = embeddings[:, 0::2], _clustered(LABELS, spread, separation, seed=0)[:, 1::2]
            values.append(slow_fast_contrastive_loss(fast, slow, LABELS[:, 0::2], LABELS[:, 1::2]).item())
    # vanilla's logits are exp(exp(-d²)): a perfect clustering still leaves each negative at e⁰ = 1 against a
    # positive's e¹, so its range is narrow (here 0.74 → 0.64)
    drop = 0.05 if loss_name == "vanilla" else 0.3
    assert values == sorted(values, reverse=True) and values[0] - values[-1] > drop, values


def test_vanilla_follows_the_authors_kernel():
    """s = exp(-d² / 100) for positive pairs and exp(-d²) for negative ones, the ray itself in the denominator,
    summed over the rays with a positive and divided by the number of labelled rays."""
    embeddings = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [0.0, 2, 0], [0.0, 0, 0]]])
    labels = torch.tensor([[1, 1, 2, 0]])
    d2 = torch.cdist(embeddings[0, :3], embeddings[0, :3]).square()
    same = labels[0, :3, None] == labels[0, None, :3]
    logits = torch.exp(torch.exp(-torch.where(same, d2 / 100, d2)))
    positive = same & ~torch.eye(3, dtype=torch.bool)
    ratio = (logits * positive).sum(-1) / logits.sum(-1)
    expected = -torch.log(ratio[:2]).sum() / 3  # ray 2 has no positive; 3 rays carry a label
    torch.testing.assert_close(vanilla_contrastive_loss(embeddings, labels), expected)


def test_gradient_descent_on_embeddings_lowers_the_loss():
    embeddings = _clustered(LABELS, 1.0, 0.1).requires_grad_(True)
    optimizer = torch.optim.Adam([embeddings], lr=0.1)
    first = vanilla_contrastive_loss(embeddings, LABELS).item()
    for _ in range(100):
        optimizer.zero_grad()
        vanilla_contrastive_loss(embeddings, LABELS).backward()
        optimizer.step()
    assert vanilla_contrastive_loss(embeddings, LABELS).item() < first - 0.05


def test_losses_ignore_how_an_image_numbers_its_segments():
    embeddings = _clustered(LABELS, 0.7, 1.0)
    relabelled = LABELS.clone()
    relabelled[0] = torch.tensor([0, 40, 17, 3])[LABELS[0]]  # a permutation of the image's ids, 0 kept
    relabelled[1] = torch.where(LABELS[1] > 0, 1000 - LABELS[1], 0)
    fast, slow = embeddings[:, 0::2], embeddings[:, 1::2] + 0.1
    confidence = torch.rand(LABELS[:, 0::2].shape)
    for labels_a, labels_b in [(LABELS, relabelled)]:
        assert torch.allclose(
            vanilla_contrastive_loss(embeddings, labels_a), vanilla_contrastive_loss(embeddings, labels_b)
        )
        assert torch.allclose(
            slow_fast_contrastive_loss(fast, slow, labels_a[:, 0::2], labels_a[:, 1::2]),
            slow_fast_contrastive_loss(fast, slow, labels_b[:, 0::2], labels_b[:, 1::2]),
        )
        assert torch.allclose(
            concentration_loss(fast, slow, labels_a[:, 0::2], labels_a[:, 1::2], confidence),
            concentration_loss(fast, slow, labels_b[:, 0::2], labels_b[:, 1::2], confidence),
        )


def test_ids_are_compared_within_an_image_only():
    """The same id in two images is not a positive pair: moving image 1 changes nothing for image 0."""
    labels = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2]])
    embeddings = _clustered(labels, 0.5, 1.0).requires_grad_(True)
    vanilla_contrastive_loss(embeddings, labels).backward()
    grad_a = embeddings.grad[0].clone()
    shifted = embeddings.detach().clone()
    shifted[1] += 100.0
    shifted.requires_grad_(True)
    vanilla_contrastive_loss(shifted, labels).backward()
    assert torch.allclose(grad_a, shifted.grad[0])


def test_one_label_or_background_only_images_add_no_contrastive_term():
    embeddings = torch.randn(3, 8, 3, requires_grad=True)
    labels = torch.tensor([[4] * 8, [0] * 8, [1, 1, 2, 2, 1, 2, 1, 2]])
    fast, slow = embeddings[:, 0::2], embeddings[:, 1::2].detach()
    loss = slow_fast_contrastive_loss(fast, slow, labels[:, 0::2], labels[:, 1::2])
    loss.backward()
    assert torch.isfinite(loss)
    assert embeddings.grad[:2].abs().sum() == 0  # no pair term for the one-label and the all-zero image
    assert embeddings.grad[2].abs().sum() > 0
    # the loss equals that of the informative image alone
    alone = slow_fast_contrastive_loss(fast[2:].detach(), slow[2:], labels[2:, 0::2], labels[2:, 1::2])
    assert torch.allclose(loss, alone)
    # vanilla, as in the authors' code, still pulls a one-label image's rays together; an all-zero one adds nothing
    embeddings.grad = None
    vanilla_contrastive_loss(embeddings, labels).backward()
    assert embeddings.grad[1].abs().sum() == 0 and embeddings.grad[0].abs().sum() > 0


def test_label_zero_is_ignored():
    embeddings = _clustered(LABELS, 0.5, 1.0)
    moved = embeddings.clone()
    moved[LABELS == 0] = torch.randn(int((LABELS == 0).sum()), 3) * 50
    assert torch.allclose(vanilla_contrastive_loss(embeddings, LABELS), vanilla_contrastive_loss(moved, LABELS))


def test_a_single_ray_gives_zero_not_nan():
    embedding = torch.randn(1, 1, 3, requires_grad=True)
    for loss in (
        vanilla_contrastive_loss(embedding, torch.tensor([[3]])),
        slow_fast_contrastive_loss(embedding, torch.randn(1, 1, 3), torch.tensor([[3]]), torch.tensor([[3]])),
        concentration_loss(embedding, torch.randn(1, 1, 3), torch.tensor([[3]]), torch.tensor([[5]]), torch.ones(1, 1)),
    ):
        loss.backward()
        assert loss.item() == 0 and torch.isfinite(embedding.grad).all()


def test_slow_fast_loss_sends_no_gradient_to_the_slow_embeddings():
    fast = torch.randn(2, 6, 3, requires_grad=True)
    slow = torch.randn(2, 6, 3, requires_grad=True)
    labels = torch.tensor([[1, 2, 3, 1, 2, 3]] * 2)
    (
        slow_fast_contrastive_loss(fast, slow, labels, labels)
        + concentration_loss(fast, slow, labels, labels, torch.ones(2, 6))
    ).backward()
    assert slow.grad is None and fast.grad.abs().sum() > 0


def test_concentration_pulls_fast_embeddings_to_their_slow_centroid():
    labels = torch.tensor([[1, 1, 2, 2, 3, 3]])
    slow = torch.tensor([[[0.0, 0, 0], [0, 0, 0], [5, 0, 0], [5, 0, 0], [0, 5, 0], [0, 5, 0]]])
    at_centroid = slow.clone()
    off_centroid = slow + 0.8
    confidence = torch.ones(1, 6)
    assert concentration_loss(at_centroid, slow, labels, labels, confidence).item() == pytest.approx(-1.0)
    assert concentration_loss(off_centroid, slow, labels, labels, confidence) > -0.5
    # each label counts once however many rays it has: five rays on their centroid and one far ray of a
    # second label average to -0.5 (a per-ray mean would give -5/6)
    labels_skewed = torch.tensor([[1, 1, 1, 1, 1, 2]])
    slow_skewed = torch.zeros(1, 6, 3)
    slow_skewed[0, 5] = torch.tensor([5.0, 0, 0])
    fast = slow_skewed.clone()
    fast[0, 5] += 10.0
    loss = concentration_loss(fast, slow_skewed, labels_skewed, labels_skewed, confidence)
    assert loss.item() == pytest.approx(-0.5, abs=1e-4)


def test_linear_assignment_matches_segments_to_channels_one_to_one():
    logits = torch.full((1, 6, 4), -5.0)
    # the field says pixels 0–1 are channel 2, pixels 2–3 channel 0, pixels 4–5 channel 3
    logits[0, [0, 1], 2] = logits[0, [2, 3], 0] = logits[0, [4, 5], 3] = 5.0
    labels = torch.tensor([[17, 17, 4, 4, 9, 0]])
    targets = match_segments(logits, labels)
    assert targets.tolist() == [[2, 2, 0, 0, 3, -1]]
    assert linear_assignment_loss(logits, labels, torch.ones(1, 6)) < 0.01
    # more segments than channels: the extra ones are ignored, not crashed on
    many = torch.arange(1, 7)[None]
    assert (match_segments(logits, many) >= 0).sum() == 4


def test_losses_under_autocast_match_float32():
    """Mixed precision must not change the losses: |a|² + |b|² − 2a·b cancels in half precision for embeddings
    much closer to each other than to their mean, so the losses run in float32 whatever autocast says."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(1, 4, (2, 16), generator=generator)
    centres = torch.tensor([[0.0, 0, 0], [3.0, 0, 0], [0.0, 3, 0], [0.0, 0, 3]])  # one per label, far apart
    fast = centres[labels] + 0.01 * torch.randn(2, 16, 3, generator=generator)
    slow = centres[labels] + 0.01 * torch.randn(2, 16, 3, generator=generator)
    confidence = torch.rand(2, 16, generator=generator)
    logits = torch.randn(2, 16, 6, generator=generator)
    losses = {
        "slow-fast": lambda: slow_fast_contrastive_loss(fast, slow, labels, labels),
        "vanilla": lambda: vanilla_contrastive_loss(fast, labels),
        "concentration": lambda: concentration_loss(fast, slow, labels, labels, confidence),
        "linear-assignment": lambda: linear_assignment_loss(logits, labels, confidence),
    }
    for name, loss in losses.items():
        reference = loss()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = loss()
        assert mixed.dtype == torch.float32, name
        torch.testing.assert_close(mixed, reference, msg=name)

    # What the guard prevents: unguarded, the distances between these embeddings are rounding noise in bfloat16,
    # and so is the gradient that should separate them.
    def gradient(loss, mixed: bool) -> torch.Tensor:
        leaf = fast.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            value = loss(leaf, slow, labels, labels)
        value.backward()  # outside autocast, as nerfstudio's trainer does
        return leaf.grad.flatten().float()

    reference = gradient(slow_fast_contrastive_loss, mixed=False)
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(gradient(slow_fast_contrastive_loss, mixed=True), reference, dim=0) > 0.999
    assert cosine(gradient(slow_fast_contrastive_loss.__wrapped__, mixed=True), reference, dim=0) < 0.9
