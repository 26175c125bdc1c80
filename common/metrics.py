"""Retrieval metrics as pure functions over qrels and runs (after tevatron's ``eval/metrics.py``).

- qrels: ``{qid: {pid: grade}}`` (grade > 0 is relevant, fractional grades too); a ``{qid: set(pids)}``
  is accepted as well.
- run: ``{qid: [pid, ...]}`` ranked best first.

Each function averages over the queries in ``qrels`` that have at least one relevant passage; a query
missing from the run counts as retrieving nothing.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Set

Qrels = Mapping[str, Mapping[str, float] | Set[str]]
Run = Mapping[str, Sequence[str]]


def _grades(judged: Mapping[str, float] | Set[str]) -> dict[str, float]:
    if isinstance(judged, Mapping):
        return {pid: float(g) for pid, g in judged.items() if g > 0}
    return {pid: 1.0 for pid in judged}


def _per_query(qrels: Qrels) -> dict[str, dict[str, float]]:
    out = {qid: _grades(j) for qid, j in qrels.items()}
    return {qid: g for qid, g in out.items() if g}


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def hits_at_k(qrels: Qrels, run: Run, k: int) -> dict[str, float]:
    """Per query: 1.0 if any relevant passage is in the top k, else 0.0 (DPR's top-k accuracy)."""
    _check_k(k)
    return {qid: float(any(pid in rel for pid in run.get(qid, [])[:k])) for qid, rel in _per_query(qrels).items()}


def recall_at_k(qrels: Qrels, run: Run, k: int) -> float:
    """Share of queries with at least one relevant passage in the top k."""
    return _mean(hits_at_k(qrels, run, k))


def full_recall_per_query(qrels: Qrels, run: Run, k: int) -> dict[str, float]:
    """Per query: the fraction of its relevant passages found in the top k."""
    _check_k(k)
    return {qid: len(set(run.get(qid, [])[:k]) & rel.keys()) / len(rel) for qid, rel in _per_query(qrels).items()}


def full_recall_at_k(qrels: Qrels, run: Run, k: int) -> float:
    """Mean fraction of all relevant passages retrieved in the top k (for multi-relevant sets)."""
    return _mean(full_recall_per_query(qrels, run, k))


def reciprocal_rank_per_query(qrels: Qrels, run: Run, k: int) -> dict[str, float]:
    _check_k(k)
    out = {}
    for qid, rel in _per_query(qrels).items():
        out[qid] = next((1.0 / rank for rank, pid in enumerate(run.get(qid, [])[:k], start=1) if pid in rel), 0.0)
    return out


def mrr_at_k(qrels: Qrels, run: Run, k: int) -> float:
    """Mean reciprocal rank of the first relevant passage within the top k (0 when none)."""
    return _mean(reciprocal_rank_per_query(qrels, run, k))


def ndcg_per_query(qrels: Qrels, run: Run, k: int) -> dict[str, float]:
    """nDCG@k with linear gain (grade / log2(rank + 1)), as in trec_eval and BEIR."""
    _check_k(k)
    out = {}
    for qid, rel in _per_query(qrels).items():
        ranked = run.get(qid, [])[:k]
        # A passage listed twice earns its gain once, at its first rank, so nDCG cannot pass 1
        # (trec_eval refuses a run that lists a document twice for one query).
        firsts = {pid: rank for rank, pid in reversed(list(enumerate(ranked, start=1)))}
        dcg = sum(rel.get(pid, 0) / math.log2(rank + 1) for pid, rank in firsts.items())
        ideal = sorted(rel.values(), reverse=True)[:k]
        idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
        out[qid] = dcg / idcg
    return out


def ndcg_at_k(qrels: Qrels, run: Run, k: int) -> float:
    return _mean(ndcg_per_query(qrels, run, k))


def _mean(values: Mapping[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0
