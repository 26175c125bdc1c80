"""The contrastive, symmetric and distillation losses against hand computations, and the label layout."""
from __future__ import annotations

import math

import pytest
import torch

from retriever.loss import (
    LossConfig,
    batch_loss,
    contrastive_labels,
    contrastive_loss,
    distillation_loss,
    group_size,
    symmetric_contrastive_loss,
)


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


def _log_softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    norm = top + math.log(sum(math.exp(x - top) for x in xs))
    return [x - norm for x in xs]


def test_symmetric_loss_equals_a_hand_computation() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    p = torch.tensor([[0.8, 0.6], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])   # H = 1
    t = 0.5
    # Passage -> query: positive j (row 2j) against every query; its own query is the label.
    backward = 0.0
    for j in range(3):
        logits = [float(q[i] @ p[2 * j]) / t for i in range(3)]
        backward -= _log_softmax(logits)[j]
    expected = (naive_loss(q, p, t, 1) + backward / 3) / 2
    assert symmetric_contrastive_loss(q, p, t).item() == pytest.approx(expected, rel=1e-6)
    assert batch_loss(q, p, config=LossConfig(temperature=t, symmetric=True))[0].item() == pytest.approx(expected)


def test_distillation_kl_equals_a_hand_computation_and_leaves_unscored_passages_out() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9],       # query 0: positive, 2 negatives
                      [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])      # query 1: the last one is a filler
    teacher = torch.tensor([[0.9, 0.5, 0.1], [1.0, 0.2, float("nan")]])
    t_s, t_t = 0.5, 0.25
    expected = 0.0
    for i, n in ((0, 3), (1, 2)):
        student = [float(q[i] @ p[3 * i + j]) / t_s for j in range(n)]
        teach = [float(teacher[i, j]) / t_t for j in range(n)]
        log_t, log_s = _log_softmax(teach), _log_softmax(student)
        expected += sum(math.exp(a) * (a - b) for a, b in zip(log_t, log_s))
    got = distillation_loss(q, p, teacher, t_s, t_t)
    assert got.item() == pytest.approx(expected / 2, rel=1e-5)
    # batch_loss adds it with its weight to the contrastive loss.
    config = LossConfig(temperature=0.1, distill_weight=0.3, teacher_temperature=t_t, student_temperature=t_s)
    total, terms = batch_loss(q, p, teacher, config)
    assert terms["distill"].item() == pytest.approx(got.item())
    assert total.item() == pytest.approx(contrastive_loss(q, p, 0.1).item() + 0.3 * got.item(), rel=1e-6)
    # A query with no scored passage adds 0 (and no NaN).
    none = torch.full((2, 3), float("nan"))
    assert distillation_loss(q, p, none, t_s, t_t).item() == 0.0


def test_no_gradient_reaches_the_teacher_scores_and_the_student_gets_a_finite_one() -> None:
    q = torch.randn(2, 4, requires_grad=True)
    p = torch.randn(6, 4, requires_grad=True)
    teacher = torch.tensor([[2.0, 1.0, 0.0], [1.0, float("nan"), 0.5]], requires_grad=True)
    distillation_loss(q, p, teacher, 0.1, 1.0).backward()
    assert teacher.grad is None
    assert torch.isfinite(q.grad).all() and torch.isfinite(p.grad).all() and q.grad.abs().sum() > 0
    assert torch.equal(p.grad[4], torch.zeros(4))                 # the unscored filler gets nothing from the KL


def test_default_loss_is_exactly_the_contrastive_loss() -> None:
    gen = torch.Generator().manual_seed(3)
    q, p = torch.randn(4, 8, generator=gen), torch.randn(8, 8, generator=gen)
    total, terms = batch_loss(q, p, config=LossConfig(temperature=0.05))
    assert torch.equal(total, contrastive_loss(q, p, 0.05)) and set(terms) == {"contrastive"}
    with pytest.raises(ValueError, match="teacher's scores"):
        batch_loss(q, p, config=LossConfig(distill_weight=1.0))
