"""Contrastive loss over in-batch and hard negatives, computed from embeddings outside the model.

:func:`batch_loss` is the one loss of a training step: the contrastive loss (optionally symmetric)
plus, when distilling, a KL term towards a teacher's scores. It is a function of the batch's
embeddings (and the teacher's constant scores) only, so the plain, gradient-cached and multi-process
steps (:mod:`retriever.train_step`) all compute it the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def group_size(n_queries: int, n_passages: int) -> int:
    """Passages per query in the grouped layout (1 positive + H hard negatives)."""
    if n_queries == 0 or n_passages % n_queries:
        raise ValueError(f"{n_passages} passages do not split into groups for {n_queries} queries")
    return n_passages // n_queries


def contrastive_labels(n_queries: int, n_passages: int, device: torch.device | None = None) -> Tensor:
    """Index of each query's positive: passages are grouped ``[pos_i, neg_i1 .. neg_iH]`` per query."""
    return torch.arange(n_queries, device=device) * group_size(n_queries, n_passages)


def contrastive_loss(q_emb: Tensor, p_emb: Tensor, temperature: float = 1.0) -> Tensor:
    """Cross-entropy of each query against every passage in the batch.

    ``p_emb`` holds, for query i, its positive at row ``i*(1+H)`` followed by its H hard negatives,
    so each query sees B(1+H)-1 negatives: the other queries' positives and everyone's hard negatives.
    """
    scores = q_emb @ p_emb.T / temperature                                    # [B, B*(1+H)]
    labels = contrastive_labels(q_emb.shape[0], p_emb.shape[0], q_emb.device)  # [B]
    return F.cross_entropy(scores, labels)


def symmetric_contrastive_loss(q_emb: Tensor, p_emb: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean of the query->passage loss (:func:`contrastive_loss`) and a passage->query loss: each
    query's positive against every query of the batch (sentence-transformers'
    MultipleNegativesSymmetricRankingLoss). Hard negatives take part in the first direction only."""
    scores = q_emb @ p_emb.T / temperature                                    # [B, B*(1+H)]
    labels = contrastive_labels(q_emb.shape[0], p_emb.shape[0], q_emb.device)  # [B]
    forward = F.cross_entropy(scores, labels)
    by_positive = scores[:, labels].T                                         # [B, B]: positive j vs query i
    backward = F.cross_entropy(by_positive, torch.arange(q_emb.shape[0], device=q_emb.device))
    return (forward + backward) / 2


def own_group_scores(q_emb: Tensor, p_emb: Tensor) -> Tensor:
    """Each query's similarity to its own group ``[pos_i, neg_i1 .. neg_iH]``: ``[B, 1+H]``."""
    n, g = q_emb.shape[0], group_size(q_emb.shape[0], p_emb.shape[0])
    groups = p_emb.reshape(n, g, -1)                                          # [B, 1+H, D]
    return torch.einsum("bd,bgd->bg", q_emb, groups)                          # [B, 1+H]


def distillation_loss(q_emb: Tensor, p_emb: Tensor, teacher_scores: Tensor, student_temperature: float,
                      teacher_temperature: float) -> Tensor:
    """``KL(softmax(teacher / T_t) || softmax(student / T_s))`` over each query's own group, batch mean.

    ``teacher_scores`` [B, 1+H] is aligned with the grouped layout; NaN marks a passage the teacher
    never scored (a random filler), which is left out of both distributions. The teacher's scores are
    constants: no gradient flows into them. A query with fewer than two scored passages adds 0.
    """
    teacher = teacher_scores.detach()                                         # [B, 1+H]
    scored = ~torch.isnan(teacher)                                            # [B, 1+H]
    student = own_group_scores(q_emb, p_emb) / student_temperature           # [B, 1+H]
    lonely = scored.sum(dim=1, keepdim=True) == 0                             # [B, 1]: nothing scored
    scored = scored | lonely                                                  # [B, 1+H]: keeps log_softmax finite
    t_logits = torch.where(scored, torch.nan_to_num(teacher) / teacher_temperature, float("-inf"))  # [B, 1+H]
    t_log = F.log_softmax(t_logits, dim=1)                                    # [B, 1+H], -inf where unscored
    s_log = F.log_softmax(student.masked_fill(~scored, float("-inf")), dim=1)  # [B, 1+H]
    t_prob = t_log.exp().masked_fill(lonely, 0.0)                             # [B, 1+H], 0 where unscored
    # masked_fill, not arithmetic on -inf: an unscored slot must add exactly 0 and pass no NaN gradient.
    kl = t_prob * (t_log.masked_fill(~scored, 0.0) - s_log.masked_fill(~scored, 0.0))  # [B, 1+H]
    return kl.sum(dim=1).mean()


@dataclass(frozen=True)
class LossConfig:
    """What :func:`batch_loss` computes; built from the training config (``loss_config_for``)."""

    temperature: float = 1.0                 # the model's contrastive softmax temperature
    symmetric: bool = False
    distill_weight: float = 0.0
    teacher_temperature: float = 1.0
    student_temperature: float | None = None  # None: ``temperature``

    @property
    def distills(self) -> bool:
        return self.distill_weight > 0


def batch_loss(q_emb: Tensor, p_emb: Tensor, teacher_scores: Tensor | None = None,
               config: LossConfig = LossConfig()) -> tuple[Tensor, dict[str, Tensor]]:
    """The training loss of one (global) batch and its terms (detached): ``contrastive`` and, when
    distilling, ``distill`` (before its weight). ``teacher_scores`` [B, 1+H]: see :func:`distillation_loss`."""
    if config.symmetric:
        contrastive = symmetric_contrastive_loss(q_emb, p_emb, config.temperature)
    else:
        contrastive = contrastive_loss(q_emb, p_emb, config.temperature)
    terms = {"contrastive": contrastive.detach()}
    if not config.distills:
        return contrastive, terms
    if teacher_scores is None:
        raise ValueError("distillation needs the teacher's scores of the batch's passages")
    distill = distillation_loss(q_emb, p_emb, teacher_scores, config.student_temperature or config.temperature,
                                config.teacher_temperature)
    terms["distill"] = distill.detach()
    return contrastive + config.distill_weight * distill, terms
