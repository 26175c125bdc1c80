"""Hard negatives: highly ranked passages that are not the gold one.

Sources: the current dense model, BM25, or the data file itself. A candidate is never the gold
passage (same id or same text: the knowledge base may hold a gold text twice under two ids) and,
optionally, never contains a normalised answer string (such a passage is likely a false negative).
Negatives that teach rather than mislead: a rank window skips the very top of the ranking (where
unlabelled positives gather) and samples below it, and a relative margin drops candidates scored
almost as high as the positive (:func:`select_negatives`).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from common.answers import has_answer
from common.choices import MINING_METHODS, check_choice
from common.data import DataError, Example, Passage, is_beir_dir, load_examples, parse_example, read_records
from common.files import atomic_write_text
from retriever.encoder import DualEncoder

if TYPE_CHECKING:
    from retriever.bm25 import BM25Index

logger = logging.getLogger(__name__)


def select_negatives(example: Example, ranked: Sequence[Passage], num: int, skip_answer_passages: bool = False,
                     *, window: tuple[int, int] | None = None, rng: np.random.Generator | None = None,
                     scores: Sequence[float] | None = None, positive_score: float | None = None,
                     margin: float = 0.0) -> list[Passage]:
    """Up to ``num`` passages of ``ranked`` (best first) that are safe to use as negatives for ``example``.

    A candidate's *rank* is its 0-based position in ``ranked`` once the gold passages (same id or
    text), repeats and, with ``skip_answer_passages``, answer-bearing passages are left out: rank 0
    is the best-ranked usable passage. ``window=(start, end)`` keeps ranks ``start .. end - 1``;
    with ``rng`` it draws ``num`` of them at random, returned in the order drawn (so the first H the
    batcher takes are a uniform sample too, and the rest are spares), else it takes them in order.
    Without a window the first ``num`` usable ranks are taken in order.

    ``margin`` M > 0 drops a candidate whose score (``scores``, aligned with ``ranked``) exceeds
    ``(1 - M) * positive_score``: that close to the gold passage's score it is likely an unlabelled
    positive. Ranks are counted before this filter, so a window is always the same slice of the
    ranking and a dropped candidate is not replaced from beyond it.
    """
    if margin and (scores is None or positive_score is None):
        raise ValueError("a negative margin needs the candidates' scores and the positive's score")
    gold_pids = {p.pid for p in example.positives}
    gold_texts = {p.text.strip() for p in example.positives}
    start, end = window if window is not None else (0, None)
    pool: list[Passage] = []
    seen: set[str] = set()
    rank = -1
    for i, p in enumerate(ranked):
        if end is None and len(pool) == num:
            break
        if p.pid in gold_pids or p.text.strip() in gold_texts or p.pid in seen:
            continue
        if skip_answer_passages and example.answers and has_answer(f"{p.title} {p.text}", example.answers):
            continue
        seen.add(p.pid)
        rank += 1
        if rank < start:
            continue
        if end is not None and rank >= end:
            break
        if margin and scores[i] > (1 - margin) * positive_score:
            continue
        pool.append(p)
    if window is not None and rng is not None and len(pool) > num:
        return [pool[j] for j in rng.permutation(len(pool))[:num]]
    return pool[:num]


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


@dataclass(frozen=True)
class PassageVectors:
    """Passage embeddings one set of weights computed (the trainer keeps validation's for mining).

    ``step``: the optimiser step of those weights; whoever keeps this must drop it once they change.
    """

    passages: Sequence[Passage]
    vectors: np.ndarray                      # float32 [N, D], aligned with ``passages``
    step: int

    def rows_for(self, kb: Sequence[Passage]) -> np.ndarray:
        """For each passage of ``kb``: its row here (same id and the same passage), else -1."""
        row_of = {p.pid: i for i, p in enumerate(self.passages)}
        return np.array([row_of[p.pid] if p.pid in row_of and self.passages[row_of[p.pid]] == p else -1
                         for p in kb], dtype=np.int64)


def encode_kb(encoder: DualEncoder, kb: Sequence[Passage], batch_size: int = 64, progress: bool = False,
              known: PassageVectors | None = None) -> tuple[np.ndarray, int]:
    """Embeddings of ``kb`` [P, D] and how many came from ``known`` (the rest are encoded)."""
    if known is None:
        return encoder.encode_passages(kb, batch_size=batch_size, progress=progress), 0
    rows = known.rows_for(kb)
    hit = rows >= 0
    out = np.empty((len(kb), known.vectors.shape[1]), dtype=np.float32)
    out[hit] = known.vectors[rows[hit]]
    missing = np.flatnonzero(~hit)
    if len(missing):
        out[missing] = encoder.encode_passages([kb[i] for i in missing], batch_size=batch_size, progress=progress)
    logger.info("passage vectors: %d reused (weights of step %d), %d encoded", int(hit.sum()), known.step,
                len(missing))
    return out, int(hit.sum())


@dataclass(frozen=True)
class Ranking:
    """One ranker's view of the knowledge base for each query."""

    scores: np.ndarray                       # [n, d] best first
    rows: np.ndarray                         # [n, d] rows of the KB; -1: no candidate there
    positive_scores: np.ndarray | None       # [n] each query's best positive under the same ranker
    reused_vectors: int = 0                  # passage embeddings taken from ``known`` (dense only)


def rank_with_model(encoder: DualEncoder, examples: Sequence[Example], kb: Sequence[Passage], depth: int,
                    batch_size: int = 64, progress: bool = False, positives: bool = False,
                    known: PassageVectors | None = None) -> Ranking:
    """The top ``min(depth, len(kb))`` rows of ``kb`` by the dense model for each example.

    ``positives``: also score each example's positives (query . positive embedding); those in ``kb``
    (same id) reuse its embeddings. ``known``: embeddings of these very weights to reuse (:func:`encode_kb`).
    """
    p_emb, reused = encode_kb(encoder, kb, batch_size, progress, known)
    q_emb = encoder.encode_queries([ex.question for ex in examples], batch_size=batch_size, progress=progress)
    scores, rows = dense_topk(q_emb, p_emb, depth)
    best = None
    if positives:
        row_of = {p.pid: i for i, p in enumerate(kb)}
        missing = list({p.pid: p for ex in examples for p in ex.positives if p.pid not in row_of}.values())
        extra = encoder.encode_passages(missing, batch_size=batch_size) if missing else p_emb[:0]   # [m, D]
        extra_of = {p.pid: i for i, p in enumerate(missing)}

        def embedding(pid: str) -> np.ndarray:
            return p_emb[row_of[pid]] if pid in row_of else extra[extra_of[pid]]

        best = np.array([max(float(q_emb[i] @ embedding(p.pid)) for p in ex.positives)
                         for i, ex in enumerate(examples)], dtype=np.float32)               # [n]
    return Ranking(scores, rows, best, reused)


def bm25_pair_scores(index: BM25Index, queries: Sequence[str],
                     candidates: Sequence[Sequence[Passage]]) -> list[np.ndarray]:
    """BM25 score of each query against each of its own candidates (indexed or not), on the index's
    statistics: what :meth:`BM25Index.search` would score them (a query word counts each time it occurs)."""
    unique = list({p.pid: p for row in candidates for p in row}.values())
    weights = dict(zip((p.pid for p in unique), index.term_weights(unique, index.avg_length)))
    return [np.array([sum(weights[p.pid].get(t, 0.0) for t in terms) for p in row], dtype=np.float32)
            for terms, row in zip(index.query_terms(queries), candidates)]


def rank_with_bm25(examples: Sequence[Example], kb: Sequence[Passage], depth: int, progress: bool = False,
                   positives: bool = False) -> Ranking:
    from retriever.bm25 import BM25Index  # bm25s is only needed for this method

    index = BM25Index.build(kb, progress=progress)
    queries = [ex.question for ex in examples]
    scores, rows = index.search(queries, depth, progress=progress)
    best = None
    if positives:
        best = np.array([float(s.max()) for s in bm25_pair_scores(index, queries, [ex.positives for ex in examples])],
                        dtype=np.float32)
    # Passages sharing no term with the question score 0 in arbitrary order: not "hard", so dropped.
    return Ranking(scores, np.where(scores > 0, rows, -1), best)


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
    *,
    window: tuple[int, int] | None = None,
    margin: float = 0.0,
    rng: np.random.Generator | None = None,
    known: PassageVectors | None = None,
    stats: dict[str, int] | None = None,
) -> list[list[Passage]]:
    """Up to ``num`` hard negatives per example (aligned with ``examples``), best ranked first (with a
    window and ``rng``: in the order drawn).

    Candidates come from the top ``max(depth, 4 * num)`` of the ranking (``window``'s END more when
    given); an example whose candidates are all gold or answer-bearing gets fewer (the batcher fills
    the gap with random passages). ``window``, ``rng`` and ``margin``: see :func:`select_negatives`
    (a window without ``rng`` takes its top ranks); the margin compares with the positive's score
    under the same ranker (dense: query . positive embedding; BM25: its BM25 score).
    ``known``: passage embeddings of the encoder's current weights to reuse (dense only); ``stats``
    receives ``reused_vectors``, how many were.
    """
    check_choice("mining method", method, MINING_METHODS)
    if num < 1:
        raise ValueError(f"number of hard negatives must be >= 1, got {num}")
    if not kb:
        raise ValueError("cannot mine hard negatives from an empty knowledge base")
    # A window's ranks count only usable passages: END deeper leaves room for the ones filtered out.
    depth = max(depth, 4 * num) + (window[1] if window is not None else 0)
    if method == "model":
        if encoder is None:
            raise ValueError("model mining needs an encoder")
        ranking = rank_with_model(encoder, examples, kb, depth, batch_size=batch_size, progress=progress,
                                  positives=margin > 0, known=known)
    else:
        ranking = rank_with_bm25(examples, kb, depth, progress=progress, positives=margin > 0)
    if stats is not None:
        stats["reused_vectors"] = ranking.reused_vectors
    mined = []
    for i, (ex, row, row_scores) in enumerate(zip(examples, ranking.rows, ranking.scores)):
        keep = row >= 0
        mined.append(select_negatives(
            ex, [kb[j] for j in row[keep]], num, skip_answer_passages, window=window, rng=rng,
            scores=row_scores[keep], margin=margin,
            positive_score=None if ranking.positive_scores is None else float(ranking.positive_scores[i])))
    short = sum(len(m) < num for m in mined)
    if short:
        where = f"ranks {window[0]}:{window[1]}" if window is not None else f"the top {ranking.rows.shape[1]}"
        logger.warning("%d of %d questions got fewer than %d hard negatives in %s", short, len(examples), num, where)
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
