"""Fusing a dense and a sparse (BM25) ranking of the same query: pure functions.

Shared by the evaluation tools, the index (BM25 beside the dense vectors) and the search server.

A ranking is a sequence of ``(pid, score)`` pairs, best first. Both fusions return the union of the
inputs' passages as ``(pid, fused_score)`` best first; equal fused scores keep the order in which the
passages first appear (the first list before the second), so results are deterministic.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

Ranking = Sequence[tuple[str, float]]

RRF_K = 60


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


def fuse_runs(first: Mapping[str, Ranking], second: Mapping[str, Ranking], method: str = "rrf",
              alpha: float = 0.5, k: int = RRF_K, depth: int | None = None) -> dict[str, list[tuple[str, float]]]:
    """Fuse two runs query by query (``method`` ``rrf`` or ``interp``); a query in only one run keeps it."""
    if method not in ("rrf", "interp"):
        raise ValueError(f"fusion method must be 'rrf' or 'interp', got {method!r}")
    out = {}
    for qid in [*first, *(q for q in second if q not in first)]:
        a, b = first.get(qid, ()), second.get(qid, ())
        out[qid] = (reciprocal_rank_fusion(a, b, k=k, depth=depth) if method == "rrf"
                    else interpolate(a, b, alpha=alpha, depth=depth))
    return out
