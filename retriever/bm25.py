"""BM25 over passages (title + text): a thin wrapper around the ``bm25s`` library.

Used for BM25 hard negatives and reusable as a sparse retriever (or the sparse half of a hybrid).
Parameters follow the usual Lucene/Anserini setting for passage retrieval (k1=0.9, b=0.4) with
English stopwords and no stemming (PyStemmer is not a dependency).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np

from common.data import Passage

logger = logging.getLogger(__name__)

DEFAULT_K1 = 0.9
DEFAULT_B = 0.4
# What BM25Index.save writes: bm25s's own files (npy arrays saved and loaded with allow_pickle=False,
# JSON vocab and params) plus the tokenizer's vocab and stopwords as JSON. No pickle anywhere.
BM25_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json",
              "params.index.json", "vocab.tokenizer.json", "stopwords.tokenizer.json")


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
    # Mean tokens per indexed passage, as bm25s saw them (known after build; recorded in the manifest).
    avg_length: float | None = None

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
        index = cls(list(passages), k1, b, tokenizer, retriever)
        index.avg_length = float(np.mean([len(ids) for ids in tokens.ids]))
        return index

    def __len__(self) -> int:
        return int(self._retriever.scores["num_docs"])

    def save(self, path: str | Path) -> list[str]:
        """Write the index into directory ``path`` (created); returns the file names written.

        The passages themselves are not saved: search returns rows, and the caller keeps the passages
        in the same order (the index directory's passage store).
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._retriever.save(path, allow_pickle=False, show_progress=False)
        self._tokenizer.save_vocab(path)
        self._tokenizer.save_stopwords(path)
        return list(BM25_FILES)

    @classmethod
    def load(cls, path: str | Path, passages: Sequence[Passage] = ()) -> BM25Index:
        """Read what :meth:`save` wrote. ``passages`` (optional) must be the list it was built over."""
        path = Path(path)
        missing = [name for name in BM25_FILES if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{path}: not a saved BM25 index (missing {missing})")
        retriever = bm25s.BM25.load(path, allow_pickle=False, mmap=False, load_corpus=False, show_progress=False)
        tokenizer = bm25s.tokenization.Tokenizer(stopwords=[])
        tokenizer.load_vocab(path)
        tokenizer.load_stopwords(path)
        index = cls(list(passages), float(retriever.k1), float(retriever.b), tokenizer, retriever)
        if passages and len(passages) != len(index):
            raise ValueError(f"{path}: indexes {len(index)} passages, {len(passages)} given")
        return index

    def search(self, queries: Sequence[str], k: int, progress: bool = False,
               weight_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [n, k'] float32 descending, rows [n, k'] int64)`` with ``k' = min(k, len(self))``.

        A query with no indexed term scores 0 everywhere; its rows are then arbitrary. ``weight_mask``
        (boolean [len]): rows outside it score 0.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, len(self))
        if not queries:
            return np.empty((0, k), dtype=np.float32), np.empty((0, k), dtype=np.int64)
        # update_vocab=False drops words the corpus never saw, so query ids line up with the index.
        ids = self._tokenizer.tokenize(list(queries), update_vocab=False, return_as="ids", show_progress=False)
        mask = None if weight_mask is None else np.asarray(weight_mask, dtype=np.float32)
        rows, scores = self._retriever.retrieve(ids, k=k, show_progress=progress, n_threads=0, weight_mask=mask)
        return np.asarray(scores, dtype=np.float32), np.asarray(rows, dtype=np.int64)

    def term_weights(self, passages: Sequence[Passage], avg_length: float) -> list[dict[int, float]]:
        """BM25 weights ``{term id: weight}`` of passages that are not in the index, scored with the
        index's own statistics (document frequencies, passage count, ``avg_length``), so that they rank
        against indexed passages on one scale. Words the index never saw get no weight: they match
        nothing until the passages are indexed with the others (compaction)."""
        indptr = np.asarray(self._retriever.scores["indptr"])
        n = int(self._retriever.scores["num_docs"])
        vocab = self._tokenizer.word_to_id
        stopwords = frozenset(self._tokenizer.stopwords or ())
        out = []
        for passage in passages:
            words = self._words(passage, stopwords)
            counts: dict[int, int] = {}
            for word in words:
                tid = vocab.get(word)
                if tid is not None:
                    counts[tid] = counts.get(tid, 0) + 1
            norm = self.k1 * ((1 - self.b) + self.b * len(words) / avg_length)
            weights = {}
            for tid, tf in counts.items():
                df = int(indptr[tid + 1] - indptr[tid])
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))             # bm25s "lucene"
                weights[tid] = idf * tf / (norm + tf)
            out.append(weights)
        return out

    def _words(self, passage: Passage, stopwords: frozenset[str]) -> list[str]:
        """The words bm25s indexes for ``passage`` (its tokenizer's split, stopwords removed; "" if none)."""
        text = passage_text(passage)
        words = self._tokenizer.splitter(text.lower() if self._tokenizer.lower else text)
        return [w for w in words if w not in stopwords] or [""]

    def lengths(self, passages: Sequence[Passage]) -> list[int]:
        """Indexed length of each passage, in words (as BM25's length normalisation counts them)."""
        stopwords = frozenset(self._tokenizer.stopwords or ())
        return [len(self._words(p, stopwords)) for p in passages]

    def query_terms(self, queries: Sequence[str]) -> list[list[int]]:
        """Term ids of each query, as :meth:`search` scores them (unknown words dropped). Split here
        rather than by bm25s's ``tokenize``, which builds progress bars even when told not to show them
        (a tenth of a millisecond per query on the live-segment path)."""
        stopwords = frozenset(self._tokenizer.stopwords or ())
        vocab = self._tokenizer.word_to_id
        out = []
        for query in queries:
            words = self._tokenizer.splitter(query.lower() if self._tokenizer.lower else query)
            out.append([vocab[w] for w in words if w not in stopwords and w in vocab])
        return out
