"""BM25 over passages (title + text): a thin wrapper around the ``bm25s`` library.

Used for BM25 hard negatives and reusable as a sparse retriever (or the sparse half of a hybrid).
Parameters follow the usual Lucene/Anserini setting for passage retrieval (k1=0.9, b=0.4) with
English stopwords and no stemming (PyStemmer is not a dependency).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import bm25s
import numpy as np

from retriever.data import Passage

logger = logging.getLogger(__name__)

DEFAULT_K1 = 0.9
DEFAULT_B = 0.4


def passage_text(passage: Passage) -> str:
    """What BM25 indexes: title and text, so title words match (as in BEIR's BM25 baselines)."""
    return f"{passage.title} {passage.text}" if passage.title else passage.text


@dataclass
class BM25Index:
    """A BM25 index over a fixed list of passages; search results are rows into that list."""

    passages: list[Passage]
    k1: float
    b: float
    _tokenizer: bm25s.tokenization.Tokenizer
    _retriever: bm25s.BM25

    @classmethod
    def build(cls, passages: Sequence[Passage], k1: float = DEFAULT_K1, b: float = DEFAULT_B,
              stopwords: str | list[str] | None = "en", progress: bool = False) -> BM25Index:
        if not passages:
            raise ValueError("cannot build a BM25 index over an empty knowledge base")
        tokenizer = bm25s.tokenization.Tokenizer(stopwords=stopwords or [])
        tokens = tokenizer.tokenize([passage_text(p) for p in passages], update_vocab=True,
                                    return_as="tuple", show_progress=progress)
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(tokens, show_progress=progress)
        logger.info("BM25 index: %d passages, %d terms", len(passages), len(tokens.vocab))
        return cls(list(passages), k1, b, tokenizer, retriever)

    def __len__(self) -> int:
        return len(self.passages)

    def search(self, queries: Sequence[str], k: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [n, k'] float32 descending, rows [n, k'] int64)`` with ``k' = min(k, len(self))``.

        A query with no indexed term scores 0 everywhere; its rows are then arbitrary.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, len(self.passages))
        if not queries:
            return np.empty((0, k), dtype=np.float32), np.empty((0, k), dtype=np.int64)
        # update_vocab=False drops words the corpus never saw, so query ids line up with the index.
        ids = self._tokenizer.tokenize(list(queries), update_vocab=False, return_as="ids", show_progress=False)
        rows, scores = self._retriever.retrieve(ids, k=k, show_progress=progress, n_threads=0)
        return np.asarray(scores, dtype=np.float32), np.asarray(rows, dtype=np.int64)
