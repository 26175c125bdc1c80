"""Hard negatives: highly ranked passages that are not the gold one.

Sources: the current dense model, BM25, or the data file itself. A candidate is never the gold
passage (same id or same text: the knowledge base may hold a gold text twice under two ids) and,
optionally, never contains a normalised answer string (such a passage is likely a false negative).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.answers import has_answer
from common.choices import MINING_METHODS, check_choice
from common.data import DataError, Example, Passage, is_beir_dir, load_examples, parse_example, read_records
from common.files import atomic_write_text
from retriever.encoder import DualEncoder

logger = logging.getLogger(__name__)



def select_negatives(example: Example, ranked: Iterable[Passage], num: int,
                     skip_answer_passages: bool = False) -> list[Passage]:
    """The first ``num`` passages of ``ranked`` that are safe to use as negatives for ``example``."""
    gold_pids = {p.pid for p in example.positives}
    gold_texts = {p.text.strip() for p in example.positives}
    out: list[Passage] = []
    seen: set[str] = set()
    for p in ranked:
        if len(out) == num:
            break
        if p.pid in gold_pids or p.text.strip() in gold_texts or p.pid in seen:
            continue
        if skip_answer_passages and example.answers and has_answer(f"{p.title} {p.text}", example.answers):
            continue
        seen.add(p.pid)
        out.append(p)
    return out


def dense_topk(q_emb: np.ndarray, p_emb: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search: ``(scores [n, k'], rows [n, k'])`` best first, ``k' = min(k, P)``."""
    k = min(k, p_emb.shape[0])
    passages = torch.from_numpy(np.ascontiguousarray(p_emb, dtype=np.float32))
    scores = np.empty((q_emb.shape[0], k), dtype=np.float32)
    rows = np.empty((q_emb.shape[0], k), dtype=np.int64)
    # Chunks bound the [chunk, P] score matrix for large knowledge bases.
    for start in range(0, q_emb.shape[0], chunk):
        q = torch.from_numpy(np.ascontiguousarray(q_emb[start:start + chunk], dtype=np.float32))
        top = torch.topk(q @ passages.T, k, dim=1)
        scores[start:start + len(q)] = top.values.numpy()
        rows[start:start + len(q)] = top.indices.numpy()
    return scores, rows


def rank_with_model(encoder: DualEncoder, queries: Sequence[str], kb: Sequence[Passage], depth: int,
                    batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Rows of ``kb`` ranked by the dense model for each query: ``[n, min(depth, len(kb))]``."""
    p_emb = encoder.encode_passages(kb, batch_size=batch_size, progress=progress)
    q_emb = encoder.encode_queries(queries, batch_size=batch_size, progress=progress)
    return dense_topk(q_emb, p_emb, depth)[1]


def rank_with_bm25(queries: Sequence[str], kb: Sequence[Passage], depth: int, progress: bool = False) -> np.ndarray:
    from retriever.bm25 import BM25Index  # bm25s is only needed for this method

    scores, rows = BM25Index.build(kb, progress=progress).search(queries, depth, progress=progress)
    # Passages sharing no term with the question score 0 in arbitrary order: not "hard", so dropped.
    return np.where(scores > 0, rows, -1)


def mine_hard_negatives(
    examples: Sequence[Example],
    kb: Sequence[Passage],
    num: int,
    method: str = "model",
    encoder: DualEncoder | None = None,
    skip_answer_passages: bool = False,
    depth: int = 100,
    batch_size: int = 64,
    progress: bool = False,
) -> list[list[Passage]]:
    """Up to ``num`` hard negatives per example (aligned with ``examples``), best ranked first.

    Candidates come from the top ``max(depth, 4 * num)`` of the ranking; an example whose candidates
    are all gold or answer-bearing gets fewer (the batcher fills the gap with random passages).
    """
    check_choice("mining method", method, MINING_METHODS)
    if num < 1:
        raise ValueError(f"number of hard negatives must be >= 1, got {num}")
    if not kb:
        raise ValueError("cannot mine hard negatives from an empty knowledge base")
    depth = max(depth, 4 * num)
    queries = [ex.question for ex in examples]
    if method == "model":
        if encoder is None:
            raise ValueError("model mining needs an encoder")
        rows = rank_with_model(encoder, queries, kb, depth, batch_size=batch_size, progress=progress)
    else:
        rows = rank_with_bm25(queries, kb, depth, progress=progress)
    mined = [select_negatives(ex, (kb[j] for j in row if j >= 0), num, skip_answer_passages)
             for ex, row in zip(examples, rows)]
    short = sum(len(m) < num for m in mined)
    if short:
        logger.warning("%d of %d questions got fewer than %d hard negatives in the top %d", short,
                       len(examples), num, rows.shape[1])
    logger.info("mined %d hard negatives with %s for %d questions", sum(map(len, mined)), method, len(examples))
    return mined


# ----------------------------------------------------------------------------- mined files


def read_mining_input(path: str | Path, split: str = "train") -> tuple[list[dict[str, Any]], list[Example]]:
    """Raw records and their parsed examples, aligned. A BEIR folder becomes nq_oracle-shaped records."""
    path = Path(path)
    if is_beir_dir(path):
        examples = load_examples(path, split)
        records = [{"id": ex.qid, "question": ex.question, "answers": list(ex.answers),
                    "gold_context": [_context_record(p) for p in ex.positives]} for ex in examples]
        return records, examples
    records, examples = [], []
    for where, record in read_records(path):
        examples.append(parse_example(record, where))
        records.append(record)
    if not examples:
        raise DataError(f"{path}: no examples found")
    return records, examples


def with_hard_negatives(record: dict[str, Any], negatives: Sequence[Passage]) -> dict[str, Any]:
    """A copy of ``record`` whose hard negatives are ``negatives`` (DPR records keep DPR's key)."""
    out = {k: v for k, v in record.items() if k not in ("hard_negative", "hard_negatives", "hard_negative_ctxs")}
    key = "hard_negative_ctxs" if "positive_ctxs" in record and "gold_context" not in record else "hard_negatives"
    out[key] = [_context_record(p) for p in negatives]
    return out


def write_records(path: str | Path, records: Sequence[dict[str, Any]]) -> None:
    """JSON lines for ``.jsonl``, else a JSON array; written to a temporary file and renamed into place."""
    path = Path(path)
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n"
    atomic_write_text(path, text)


def _context_record(p: Passage) -> dict[str, str]:
    return {"passage_id": p.pid, "title": p.title, "text": p.text}
