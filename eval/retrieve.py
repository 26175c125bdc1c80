"""Runs for evaluation: top-k passages per query from a model, an index, BM25 or a running server.

Every retriever returns a :class:`Retrieval` keyed by query id, so the metrics never care where a
ranking came from.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from common.choices import SEARCH_MODES, check_choice
from common.data import Passage
from common.fusion import FusionConfig, fuse_runs

if TYPE_CHECKING:
    from indexer import SearchIndex
    from indexer.live_index import LiveIndex
    from retriever.encoder import DualEncoder

logger = logging.getLogger(__name__)

# Query rows scored against the whole KB at once: bounds the [rows, N] score matrix to ~256 MB.
SCORE_CELLS = 1 << 26


@dataclass
class Retrieval:
    """Ranked passage ids (best first) with their scores and texts, per query id."""

    run: dict[str, list[str]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def ranking(self, qid: str) -> list[tuple[str, float]]:
        return list(zip(self.run.get(qid, []), self.scores.get(qid, [])))

    def cut(self, k: int) -> Retrieval:
        """The same retrieval with each query's ranking cut to its top ``k``."""
        return Retrieval({q: r[:k] for q, r in self.run.items()}, {q: s[:k] for q, s in self.scores.items()},
                         {q: t[:k] for q, t in self.texts.items()}, self.seconds, dict(self.timings))


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` columns per row of ``scores`` [n, N]: ``(scores, rows)`` [n, min(k, N)], descending.

    Equal scores are ordered by column (lower first), so a run never depends on sort internals.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, total = scores.shape
    k = min(k, total)
    if k < total:
        # argpartition alone could drop one of several passages tied at the k-th score; keep all of
        # them, then the lexsort below picks the lowest columns among the ties.
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]               # [n, 1]
        candidates = [np.flatnonzero(row >= t) for row, t in zip(scores, kth[:, 0])]
    else:
        candidates = [np.arange(total)] * n
    out_scores = np.empty((n, k), dtype=np.float32)
    out_rows = np.empty((n, k), dtype=np.int64)
    for i, cols in enumerate(candidates):
        order = np.lexsort((cols, -scores[i, cols]))[:k]
        out_rows[i] = cols[order]
        out_scores[i] = scores[i, out_rows[i]]
    return out_scores, out_rows


def _from_rows(qids: Sequence[str], scores: np.ndarray, rows: np.ndarray,
               passages: Sequence[Passage]) -> Retrieval:
    out = Retrieval()
    for qid, q_scores, q_rows in zip(qids, scores, rows):
        keep = q_rows >= 0                                  # FAISS pads short result lists with -1
        hits = [passages[int(r)] for r in q_rows[keep]]
        out.run[qid] = [p.pid for p in hits]
        out.scores[qid] = q_scores[keep].astype(float).tolist()
        out.texts[qid] = [p.text for p in hits]
    return out


def exact_search(query_emb: np.ndarray, passage_emb: np.ndarray, k: int,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, in query chunks that keep the score matrix bounded."""
    return _chunked_top_k(query_emb, passage_emb, k, progress)


def exact_search_by_group(query_emb: np.ndarray, passage_emb: np.ndarray, starts: np.ndarray, k: int,
                          progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k groups of passages (a document's passages) by their best passage's inner product.

    Group g is rows ``starts[g]:starts[g + 1]`` of ``passage_emb`` (the last runs to the end), so a
    group's rows are contiguous, ``starts`` is increasing and begins at 0. Returns ``(scores, groups)``
    [n, min(k, G)] as :func:`exact_search` does for passages: a document scores as its best passage.
    """
    starts = np.asarray(starts, dtype=np.int64)
    if len(starts) == 0 or starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= len(passage_emb):
        raise ValueError(f"group starts must begin at 0 and increase within the {len(passage_emb)} passages")
    return _chunked_top_k(query_emb, passage_emb, k, progress, starts)


def _chunked_top_k(query_emb: np.ndarray, passage_emb: np.ndarray, k: int, progress: bool,
                   starts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of ``query_emb @ passage_emb.T``, or with ``starts`` of its per-group maxima."""
    chunk = max(1, SCORE_CELLS // max(1, len(passage_emb)))
    k = min(k, len(passage_emb) if starts is None else len(starts))
    parts = []
    for i in tqdm(range(0, len(query_emb), chunk), desc="search", unit="chunk", disable=not progress):
        scores = query_emb[i:i + chunk] @ passage_emb.T                            # [c, N]
        if starts is not None:
            scores = np.maximum.reduceat(scores, starts, axis=1)                   # [c, G]
        parts.append(top_k(scores, k))
    if not parts:
        return np.empty((0, k), dtype=np.float32), np.empty((0, k), dtype=np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def retrieve_with_model(encoder: DualEncoder, passages: Sequence[Passage], queries: Mapping[str, str], k: int,
                        batch_size: int = 64, progress: bool = True) -> Retrieval:
    """Encode the KB and the queries, then exact top-k by matrix product."""
    if not passages:
        raise ValueError("the knowledge base is empty")
    start = time.perf_counter()
    p_emb = encoder.encode_passages(passages, batch_size=batch_size, progress=progress)      # [N, d]
    mid = time.perf_counter()
    q_emb = encoder.encode_queries(list(queries.values()), batch_size=batch_size, progress=progress)  # [n, d]
    scores, rows = exact_search(q_emb, p_emb, k, progress=progress)
    out = _from_rows(list(queries), scores, rows, passages)
    end = time.perf_counter()
    out.seconds = end - start
    out.timings = {"encode_passages_s": round(mid - start, 3), "queries_and_search_s": round(end - mid, 3),
                   "passages_per_s": round(len(passages) / max(mid - start, 1e-9), 1)}
    return out


def retrieve_with_index(index: SearchIndex | LiveIndex, encoder: DualEncoder | None, queries: Mapping[str, str],
                        k: int, batch_size: int = 64, progress: bool = True, mode: str = "dense",
                        fusion: FusionConfig = FusionConfig(), flt: Any = None,
                        by_document: bool = False) -> Retrieval:
    """Search a built index the way the server does in ``mode``: ``dense`` (its own FAISS type),
    ``bm25`` (its own BM25) or ``hybrid`` (:meth:`LiveIndex.hybrid_search` with ``fusion``), over
    the build and its live segment, with the metadata filter ``flt``. ``by_document``: the run ranks
    documents (each by its best passage; passages are fetched deeper until ``k`` documents), so a
    qrel on a document is hit by any of its passages."""
    from indexer.live_index import LiveIndex

    check_choice("mode", mode, SEARCH_MODES)
    live = index if isinstance(index, LiveIndex) else LiveIndex(index)
    start = time.perf_counter()
    texts = list(queries.values())
    q_emb = None
    if mode != "bm25":
        assert encoder is not None, "dense and hybrid search need the query encoder"
        q_emb = encoder.encode_queries(texts, batch_size=batch_size, progress=progress)

    def ranked_at(depth: int) -> list[list[tuple[int, float]]]:
        if mode == "bm25":
            return live.bm25_search(texts, depth, flt)
        if mode == "hybrid":
            return live.hybrid_search(q_emb, texts, depth, fusion, flt)
        return live.search(q_emb, depth, flt)

    ranked = live.best_per_document(ranked_at, k) if by_document else ranked_at(k)
    out = Retrieval()
    for qid, hits in zip(queries, ranked, strict=True):
        passages = live.passages([r for r, _ in hits])
        out.run[qid] = [p.doc if by_document else p.pid for p in passages]
        out.scores[qid] = [s for _, s in hits]
        out.texts[qid] = [p.text for p in passages]
    out.seconds = time.perf_counter() - start
    return out


def retrieve_with_bm25(passages: Sequence[Passage], queries: Mapping[str, str], k: int,
                       progress: bool = True) -> Retrieval:
    """BM25 (``retriever.bm25``: title + text, k1=0.9, b=0.4) over the same knowledge base.

    Only passages sharing a term with the query are retrieved, so a run can be shorter than ``k``.
    """
    from retriever.bm25 import BM25Index

    start = time.perf_counter()
    bm25 = BM25Index.build(passages, progress=progress)
    mid = time.perf_counter()
    scores, rows = bm25.search(list(queries.values()), k, progress=progress)
    # bm25s fills k slots even with passages sharing no term with the query (score 0, arbitrary
    # order); like Lucene, such passages are not retrieved, so they can neither hit nor earn fusion credit.
    rows = np.where(scores > 0, rows, -1)
    out = _from_rows(list(queries), scores, rows, passages)
    end = time.perf_counter()
    out.seconds = end - start
    out.timings = {"build_s": round(mid - start, 3), "search_s": round(end - mid, 3)}
    return out


def fuse(dense: Retrieval, sparse: Retrieval, k: int, fusion: FusionConfig = FusionConfig()) -> Retrieval:
    """A hybrid run from two retrievals of the same queries (see :mod:`common.fusion`); for the
    server's answers, both should hold ``max(k, fusion.depth)`` candidates per query."""
    start = time.perf_counter()
    fused = fuse_runs({q: dense.ranking(q) for q in dense.run}, {q: sparse.ranking(q) for q in sparse.run},
                      fusion, depth=k)
    out = Retrieval()
    for qid, ranking in fused.items():
        text = {**dict(zip(sparse.run.get(qid, []), sparse.texts.get(qid, []))),
                **dict(zip(dense.run.get(qid, []), dense.texts.get(qid, [])))}
        out.run[qid] = [pid for pid, _ in ranking]
        out.scores[qid] = [score for _, score in ranking]
        if text:
            out.texts[qid] = [text.get(pid, "") for pid, _ in ranking]
    # A hybrid costs both retrievals: its time is theirs plus the fusion.
    out.seconds = dense.seconds + sparse.seconds + time.perf_counter() - start
    return out


def describe_retrieval(retrieval: Retrieval) -> dict[str, Any]:
    return {"seconds": round(retrieval.seconds, 3), **retrieval.timings}
