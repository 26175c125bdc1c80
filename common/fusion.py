"""Fusing a dense and a sparse (BM25) ranking of the same query: pure functions, and the one set of
fusion parameters (:class:`FusionConfig`) that ``dpr serve``, ``dpr eval`` and ``dpr bench`` share.

Shared by the evaluation tools, the index (BM25 beside the dense vectors) and the search server.

A ranking is a sequence of ``(pid, score)`` pairs, best first. Both fusions return the union of the
inputs' passages as ``(pid, fused_score)`` best first; equal fused scores keep the order in which the
passages first appear (the first list before the second), so results are deterministic.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.choices import FUSION_METHODS, FusionMethod, check_choice

Ranking = Sequence[tuple[str, float]]

RRF_K = 60


@dataclass(frozen=True)
class FusionConfig:
    """How the hybrid mode fuses dense and BM25: the server's, ``dpr eval``'s and the benchmark's.

    The defaults were measured by ``dpr bench recall`` on nq_oracle, choosing on the 500 training
    questions only: interpolation beat RRF (R@5 100.0 vs 96.4) and a dense weight of 0.8 had the
    best R@5, then MRR@10 (`dpr bench recall`; README "Results").
    """

    method: FusionMethod = "interp"
    # Weight of the min-max-normalised dense score in "interp" (1 - alpha goes to BM25).
    alpha: float = 0.8
    rrf_k: int = RRF_K
    # Candidates taken from each of dense and BM25 before fusing (at least k): deep enough that a
    # passage ranked well by one side and poorly by the other still gets both scores.
    depth: int = 100

    def __post_init__(self) -> None:
        check_choice("fusion method", self.method, FUSION_METHODS)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.rrf_k < 0 or self.depth < 1:
            raise ValueError(f"rrf_k must be >= 0 and depth >= 1, got {self.rrf_k}, {self.depth}")

    def fuse(self, dense: Ranking, sparse: Ranking, depth: int | None = None) -> list[tuple[str, float]]:
        """The two rankings of one query fused by this method, cut at ``depth`` (k)."""
        if self.method == "interp":
            return interpolate(dense, sparse, alpha=self.alpha, depth=depth)
        return reciprocal_rank_fusion(dense, sparse, k=self.rrf_k, depth=depth)

    def describe(self) -> dict[str, Any]:
        """The parameters that matter for this method (for reports)."""
        keep = ("method", "alpha", "depth") if self.method == "interp" else ("method", "rrf_k", "depth")
        return {k: v for k, v in dataclasses.asdict(self).items() if k in keep}


def _check_unique(ranking: Ranking, name: str) -> None:
    pids = [pid for pid, _ in ranking]
    if len(set(pids)) != len(pids):
        raise ValueError(f"{name} ranking lists a passage more than once")


def _ordered(fused: dict[str, float], depth: int | None) -> list[tuple[str, float]]:
    # dict order is first appearance; sorted() is stable, so ties keep it.
    out = sorted(fused.items(), key=lambda item: -item[1])
    return out if depth is None else out[:depth]


def reciprocal_rank_fusion(first: Ranking, second: Ranking, k: int = RRF_K,
                           depth: int | None = None) -> list[tuple[str, float]]:
    """RRF (Cormack et al., 2009): ``sum 1 / (k + rank)`` over the lists a passage is in (rank from 1).

    Only ranks matter, so the two score scales never need reconciling.
    """
    if k < 0:
        raise ValueError(f"RRF k must be >= 0, got {k}")
    fused: dict[str, float] = {}
    for name, ranking in (("first", first), ("second", second)):
        _check_unique(ranking, name)
        for rank, (pid, _) in enumerate(ranking, start=1):
            fused[pid] = fused.get(pid, 0.0) + 1.0 / (k + rank)
    return _ordered(fused, depth)


def min_max(ranking: Ranking) -> dict[str, float]:
    """Scores mapped to [0, 1] within the list; a list of equal scores maps to 1.0 each."""
    if not ranking:
        return {}
    scores = [s for _, s in ranking]
    low, high = min(scores), max(scores)
    if high == low:
        return {pid: 1.0 for pid, _ in ranking}
    return {pid: (s - low) / (high - low) for pid, s in ranking}


def interpolate(dense: Ranking, sparse: Ranking, alpha: float = 0.5,
                depth: int | None = None) -> list[tuple[str, float]]:
    """``alpha * dense' + (1 - alpha) * sparse'`` with each list min-max normalised per query.

    A passage missing from a list gets 0 from it: it scored below that list's cut-off, and the
    list's own minimum already maps to 0.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_unique(dense, "dense")
    _check_unique(sparse, "sparse")
    d, s = min_max(dense), min_max(sparse)
    fused = {pid: alpha * d.get(pid, 0.0) + (1 - alpha) * s.get(pid, 0.0) for pid in [*d, *s]}
    return _ordered(fused, depth)


def fuse_runs(first: Mapping[str, Ranking], second: Mapping[str, Ranking], fusion: FusionConfig = FusionConfig(),
              depth: int | None = None) -> dict[str, list[tuple[str, float]]]:
    """Fuse two runs query by query; a query in only one run keeps it."""
    out = {}
    for qid in [*first, *(q for q in second if q not in first)]:
        out[qid] = fusion.fuse(first.get(qid, ()), second.get(qid, ()), depth=depth)
    return out
