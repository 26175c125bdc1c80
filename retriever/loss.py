"""Contrastive loss over in-batch and hard negatives, computed from embeddings outside the model."""
from __future__ import annotations

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
