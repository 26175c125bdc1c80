"""The contrastive loss against a naive per-query loop, and its label layout."""
from __future__ import annotations

import math

import pytest
import torch

from retriever.loss import contrastive_labels, contrastive_loss, group_size


def naive_loss(q: torch.Tensor, p: torch.Tensor, temperature: float, hard_per_query: int) -> float:
    """One query at a time: its positive sits at i * (1 + H); every other passage is a negative."""
    group = 1 + hard_per_query
    total = 0.0
    for i in range(q.shape[0]):
        logits = [float(q[i] @ p[j]) / temperature for j in range(p.shape[0])]
        top = max(logits)
        log_norm = top + math.log(sum(math.exp(x - top) for x in logits))
        total += log_norm - logits[i * group]
    return total / q.shape[0]


@pytest.mark.parametrize("hard", [0, 1, 3])
@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_loss_equals_naive_loop(hard: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(hard * 10 + int(temperature * 100))
    q = torch.nn.functional.normalize(torch.randn(5, 16, generator=gen), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(5 * (1 + hard), 16, generator=gen), dim=-1)
    got = contrastive_loss(q, p, temperature).item()
    assert got == pytest.approx(naive_loss(q, p, temperature, hard), rel=1e-5)


def test_labels_point_at_each_querys_positive() -> None:
    assert contrastive_labels(4, 4).tolist() == [0, 1, 2, 3]            # in-batch only
    assert contrastive_labels(4, 8).tolist() == [0, 2, 4, 6]            # one hard negative each
    assert contrastive_labels(3, 9).tolist() == [0, 3, 6]               # two hard negatives each
    assert group_size(3, 9) == 3


def test_hard_negatives_change_what_the_loss_rewards() -> None:
    # With the grouped layout, moving the positive out of slot i*(1+H) must change the loss.
    q = torch.eye(2)
    p = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])   # positives at rows 0 and 2
    good = contrastive_loss(q, p, 0.1).item()
    swapped = contrastive_loss(q, p[[1, 0, 3, 2]], 0.1).item()
    assert good < 0.01 < swapped


def test_uneven_groups_are_rejected() -> None:
    with pytest.raises(ValueError, match="do not split"):
        contrastive_loss(torch.randn(3, 4), torch.randn(7, 4))


def test_loss_backpropagates_to_both_sides() -> None:
    q = torch.randn(3, 4, requires_grad=True)
    p = torch.randn(6, 4, requires_grad=True)
    contrastive_loss(q, p).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert p.grad is not None and p.grad.abs().sum() > 0
