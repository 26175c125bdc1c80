"""Validation retrieval metrics for the trainer: encode a knowledge base, rank it, score with common.metrics."""
from __future__ import annotations

import logging
from collections.abc import Sequence

from common.data import Example, Passage
from common.metrics import mrr_at_k, ndcg_at_k, recall_at_k
from retriever.encoder import DualEncoder
from retriever.mining import dense_topk

logger = logging.getLogger(__name__)


def relevance(examples: Sequence[Example], kb: Sequence[Passage]) -> dict[str, dict[str, int]]:
    """``{qid: {pid: 1}}`` over knowledge-base ids: a hit is the gold passage's id or its exact text.

    Matching by text too matters because a knowledge base may hold one gold text under two ids.
    """
    by_text: dict[str, list[str]] = {}
    for p in kb:
        by_text.setdefault(p.text.strip(), []).append(p.pid)
    kb_pids = {p.pid for p in kb}
    qrels: dict[str, dict[str, int]] = {}
    for ex in examples:
        rel = qrels.setdefault(ex.qid, {})
        for gold in ex.positives:
            rel[gold.pid] = 1
            rel.update({pid: 1 for pid in by_text.get(gold.text.strip(), [])})
    missing = sum(not (rel.keys() & kb_pids) for rel in qrels.values())
    if missing:
        logger.warning("%d of %d validation questions have no gold passage in the knowledge base", missing,
                       len(qrels))
    return qrels


def evaluate(encoder: DualEncoder, examples: Sequence[Example], kb: Sequence[Passage],
             ks: Sequence[int] = (1, 5, 10, 20, 100), batch_size: int = 64,
             progress: bool = False) -> dict[str, float]:
    """Recall@k (share of questions with a gold passage in the top k) for each k, plus MRR@10 and nDCG@10."""
    depth = max(max(ks), 10)
    p_emb = encoder.encode_passages(kb, batch_size=batch_size, progress=progress)
    q_emb = encoder.encode_queries([ex.question for ex in examples], batch_size=batch_size, progress=progress)
    _, rows = dense_topk(q_emb, p_emb, depth)
    run: dict[str, list[str]] = {}
    for ex, row in zip(examples, rows):
        run.setdefault(ex.qid, [kb[j].pid for j in row])
    qrels = relevance(examples, kb)
    metrics = {f"recall@{k}": recall_at_k(qrels, run, k) for k in ks}
    metrics["mrr@10"] = mrr_at_k(qrels, run, 10)
    metrics["ndcg@10"] = ndcg_at_k(qrels, run, 10)
    return metrics
