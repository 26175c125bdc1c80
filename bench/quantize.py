"""What int8 costs in recall and buys in speed on nq_oracle: fp32 and int8 encodings of the same data.

The oracle knowledge base (gold passages of train + val, 1471 passages) and the val questions are
encoded once with fp32 torch and once per int8 runtime (torch dynamic int8, ONNX Runtime dynamic
int8: :func:`retriever.runtime.prepare_encoder`); Recall@k is computed (common.metrics) for every
pairing of fp32 with each int8, so the table also answers "may an int8 index be served with fp32
queries?" (and the reverse).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.data import corpus_from_examples, load_examples
from common.metrics import mrr_at_k, recall_at_k
from retriever.encoder import load_encoder

logger = logging.getLogger(__name__)

KS = (1, 5, 20)


def _run(q: np.ndarray, p: np.ndarray, qids: Sequence[str], pids: Sequence[str], k: int) -> dict[str, list[str]]:
    scores = q @ p.T                                                       # [Q, P]
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]                # [Q, k]
    return {qid: [pids[j] for j in row] for qid, row in zip(qids, top, strict=True)}


def int8_recall(model: str, train: str | Path, val: str | Path, batch_size: int = 64,
                limit: int | None = None, ks: Sequence[int] = KS,
                runtimes: Sequence[str] = ("torch", "onnx")) -> dict[str, Any]:
    """Recall@k (and MRR@10) of fp32 vs int8 on ``val``'s questions over the oracle KB of ``train`` + ``val``.

    ``limit``: use only the first ``limit`` val questions and their KB share (a quick run).
    ``runtimes``: the int8 runtimes compared with the fp32 torch encoder ("int8 torch", "int8 onnx").
    """
    from retriever.runtime import prepare_encoder

    train_ex, val_ex = load_examples(train), load_examples(val)
    if limit is not None:
        train_ex, val_ex = train_ex[:limit], val_ex[:limit]
    passages = corpus_from_examples([*train_ex, *val_ex])
    pids = [p.pid for p in passages]
    qids = [ex.qid for ex in val_ex]
    questions = [ex.question for ex in val_ex]
    qrels = {ex.qid: {p.pid: 1 for p in ex.positives} for ex in val_ex}
    vectors: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, dict[str, float]] = {}
    for precision in ("fp32", *(f"int8 {rt}" for rt in runtimes)):
        encoder = load_encoder(model)
        if precision != "fp32":
            prepare_encoder(encoder, precision.split()[1], "int8")
        encoder.encode_passages(passages[:batch_size], batch_size=batch_size)      # warm-up
        t0 = time.perf_counter()
        p = encoder.encode_passages(passages, batch_size=batch_size)
        t1 = time.perf_counter()
        q = encoder.encode_queries(questions, batch_size=batch_size)
        t2 = time.perf_counter()
        vectors[precision] = {"p": p, "q": q}
        seconds[precision] = {"passages": t1 - t0, "queries": t2 - t1}
        logger.info("%s: %d passages in %.1fs, %d questions in %.1fs", precision, len(passages), t1 - t0,
                    len(questions), t2 - t1)
    depth = max(max(ks), 10)
    rows = []
    pairs = [("fp32", "fp32")]
    for rt in runtimes:
        pairs += [(f"int8 {rt}", f"int8 {rt}"), (f"int8 {rt}", "fp32"), ("fp32", f"int8 {rt}")]
    for qp, pp in pairs:
        run = _run(vectors[qp]["q"], vectors[pp]["p"], qids, pids, depth)
        row: dict[str, Any] = {"queries": qp, "passages": pp}
        row.update({f"recall@{k}": round(100 * recall_at_k(qrels, run, k), 2) for k in ks})
        row["mrr@10"] = round(100 * mrr_at_k(qrels, run, 10), 2)
        rows.append(row)
    base = rows[0]
    for row in rows:
        row.update({f"delta@{k}": round(row[f"recall@{k}"] - base[f"recall@{k}"], 2) for k in ks})
    cosine, speedup = {}, {}
    for rt in runtimes:
        int8 = vectors[f"int8 {rt}"]
        cosine[rt] = {side: round(float(np.mean(np.sum(vectors["fp32"][key] * int8[key], axis=1))), 4)
                      for side, key in (("passages", "p"), ("queries", "q"))}
        speedup[rt] = {side: round(seconds["fp32"][side] / seconds[f"int8 {rt}"][side], 2)
                       for side in ("passages", "queries")}
    return {
        "model": model, "passages": len(passages), "questions": len(questions), "batch_size": batch_size,
        "rows": rows, "cosine_int8_vs_fp32": cosine,
        "seconds": {k: {s: round(v, 2) for s, v in d.items()} for k, d in seconds.items()},
        "int8_speedup": speedup,
    }
