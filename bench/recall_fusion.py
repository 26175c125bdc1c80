"""Fusion for the recall benchmark's hybrid rows: the labels, and the weight chosen on training questions."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.fusion import FusionConfig
from eval.evaluate import RANK_CUTOFF
from eval.retrieve import Retrieval, fuse

# interp weights tried on the training questions, dense-heavy first: ties keep the denser mix.
ALPHAS = tuple(round(0.95 - 0.05 * i, 2) for i in range(19))


def fusion_label(fusion: FusionConfig) -> str:
    """How a row's name shows its fusion."""
    return f"interp a={fusion.alpha:.2f}" if fusion.method == "interp" else f"rrf k={fusion.rrf_k}"


def fusion_choice(fusion: FusionConfig) -> dict[str, Any]:
    """How a report records a hybrid row's fusion (``chosen``, and each entry of the tuning grid)."""
    return {"method": fusion.method, "alpha_dense": fusion.alpha if fusion.method == "interp" else None}


def tune_fusion(dense: Retrieval, sparse: Retrieval, qrels: Mapping[str, Any], k: int) -> dict[str, Any]:
    """Pick the fusion (interp alpha, or RRF) with the best Recall@5, then MRR@10, on these queries.

    Called with the TRAINING questions only; the grid and every candidate's scores go into the report.
    """
    from common.metrics import mrr_at_k, recall_at_k

    candidates = [FusionConfig(method="interp", alpha=a) for a in ALPHAS] + [FusionConfig(method="rrf")]
    grid, best = [], None
    for fusion in candidates:
        run = fuse(dense, sparse, k, fusion).run
        entry = {**fusion_choice(fusion), "recall@5": recall_at_k(qrels, run, 5),
                 "mrr@10": mrr_at_k(qrels, run, RANK_CUTOFF)}
        grid.append(entry)
        if best is None or (entry["recall@5"], entry["mrr@10"]) > (best["recall@5"], best["mrr@10"]):
            best = entry
    return {"chosen": best, "grid": grid, "tuned_on": "training questions", "n_queries": len(qrels)}
