"""``SearchIndex``: an opened, verified index directory that answers top-k queries.

Opening checks every file against the manifest (size, SHA-256, row counts, dims) and, given an
encoder, that it is the encoder the index was built with. After that the object is read-only:
FAISS searches take per-call parameters and the store gives each thread its own connection, so
concurrent searches from several threads are safe.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexer.bm25_files import load_bm25
from indexer.build import HASH_DTYPE
from indexer.config import IndexConfig
from indexer.errors import IndexLoadError, ManifestMismatch
from indexer.faiss_index import read_faiss, search_params
from indexer.manifest import (
    CONFIG_FILE, EMBEDDINGS_FILE, FAISS_FILE, HASHES_FILE, STORE_FILE, check_encoder, read_manifest, verify_files,
)
from indexer.store import PassageStore
from retriever.config import check_choice, read_json
from retriever.bm25 import BM25Index
from retriever.data import Passage
from retriever.encoder import DualEncoder
from retriever.fusion import RRF_K, interpolate, reciprocal_rank_fusion

logger = logging.getLogger(__name__)

# Candidates taken from each of dense and BM25 before fusing (at least k): deep enough that a passage
# ranked well by one side and poorly by the other still gets both scores.
HYBRID_DEPTH = 100
FUSION_METHODS = ("interp", "rrf")
# Flat search of this many queries or more runs as one torch matmul + topk: at 32 queries x 1M x 384 it
# was ~4x faster than IndexFlatIP with one thread, while for a single query FAISS's scan wins
# (eval/bench_ann.py measures both; see the README's ANN table).
TORCH_FLAT_FROM = 8


class SearchIndex:
    """A read-only dense index with its passage store. Use :meth:`open`."""

    def __init__(self, index_dir: Path, manifest: dict[str, Any], config: IndexConfig, faiss_index: Any,
                 store: PassageStore, embeddings: np.ndarray, bm25: BM25Index | None = None) -> None:
        self.index_dir = index_dir
        self.bm25 = bm25
        self.manifest = manifest
        self.config = config
        self._faiss = faiss_index
        self._store = store
        self._embeddings = embeddings
        self._torch_embeddings: torch.Tensor | None = None

    @classmethod
    def open(cls, index_dir: str | Path, encoder: DualEncoder | None = None, verify: bool = True) -> SearchIndex:
        """Load and check ``index_dir``; with ``encoder``, refuse it unless it built this index.

        ``verify=False`` skips the SHA-256 of the large files (sizes and counts are still checked).
        Raises :class:`IndexLoadError` naming the bad file, or :class:`ManifestMismatch`.
        """
        index_dir = Path(index_dir)
        if not index_dir.is_dir():
            raise IndexLoadError(f"{index_dir}: no such index directory")
        manifest = read_manifest(index_dir)
        verify_files(index_dir, manifest, checksums=verify)
        if encoder is not None:
            try:
                check_encoder(manifest, encoder)
            except ManifestMismatch as e:
                raise ManifestMismatch(f"{index_dir}: {e}", e.differences) from None
        config = _read_config(index_dir / CONFIG_FILE, manifest)
        count, dim = manifest["count"], manifest["dim"]
        embeddings = _read_array(index_dir / EMBEDDINGS_FILE, np.dtype(np.float32), (count, dim), mmap=True)
        _read_array(index_dir / HASHES_FILE, HASH_DTYPE, (count,), mmap=True)
        faiss_index = read_faiss(index_dir / FAISS_FILE, config)
        if faiss_index.ntotal != count or faiss_index.d != dim:
            raise IndexLoadError(f"{index_dir / FAISS_FILE}: holds {faiss_index.ntotal} vectors of dim "
                                 f"{faiss_index.d}, manifest says {count} of dim {dim}")
        bm25 = load_bm25(index_dir, manifest, verify=verify)
        store = PassageStore(index_dir / STORE_FILE)
        if len(store) != count:
            store.close()
            raise IndexLoadError(f"{store.path}: holds {len(store)} passages, manifest and {FAISS_FILE} "
                                 f"say {count}")
        logger.info("opened index %s: %d passages, %s, dim %d, %s", index_dir, count, config.index_type, dim,
                    "with BM25" if bm25 is not None else "dense only (no bm25/)")
        return cls(index_dir, manifest, config, faiss_index, store, embeddings, bm25)

    # ------------------------------------------------------------------ facts

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def model_dir(self) -> str:
        """The model reference recorded at build time ('' when the build recorded none)."""
        return self.manifest.get("model_dir") or ""

    @property
    def embeddings(self) -> np.ndarray:
        """The exact passage vectors, float32 [n, d], memory-mapped and read-only."""
        return self._embeddings

    def summary(self) -> dict[str, Any]:
        model = self.manifest["model"]
        return {
            "model": self.model_dir or (model.get("encoder") or {}).get("base_model"),
            "weights_sha256": str(model.get("weights_sha256", ""))[:12],
            "dims": self.dim,
            "count": len(self),
            "index_type": self.config.index_type,
            "pooling": self.manifest.get("pooling"),
            "similarity": self.manifest.get("similarity"),
            "built_at": self.manifest.get("built_at"),
            "bm25": self.bm25 is not None,
        }

    # ------------------------------------------------------------------ search

    def search(self, query_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product: scores float32 [n, k'] descending and rows int64 [n, k'], k' = min(k, len)."""
        q, k = self._prepare(query_emb, k)
        index = self._faiss
        if index is None:
            raise RuntimeError(f"{self.index_dir}: index is closed")
        if self.config.index_type == "flat" and len(q) >= TORCH_FLAT_FROM:
            scores, rows = self._torch_exact(q, k)
        elif self.config.index_type == "ivfpq":
            fetch = min(len(self), k * self.config.rescore_factor)
            _, candidates = index.search(q, fetch, params=search_params(self.config, fetch))
            scores, rows = self._rescore(q, candidates, k)
        else:
            scores, rows = index.search(q, k, params=search_params(self.config, k))
        # Approximate indexes can come back short (-1 rows); such queries fall back to exact search.
        for i in np.flatnonzero((rows < 0).any(axis=1)):
            scores[i], rows[i] = self._exact(q[i:i + 1], k)
        return scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)

    def bm25_search(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """Per query, up to ``k`` ``(row, score)`` BM25 hits, best first; passages sharing no term with
        the query are not hits (as in Lucene), so a list can be short or empty."""
        if self.bm25 is None:
            raise IndexLoadError(f"{self.index_dir}: this index has no BM25 index (built before BM25 was "
                                 "added, or with --no-bm25); rebuild it with `dpr index`")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores, rows = self.bm25.search(list(queries), int(k))
        return [[(int(r), float(s)) for r, s in zip(q_rows, q_scores) if s > 0]
                for q_scores, q_rows in zip(scores, rows)]

    def hybrid_search(self, query_emb: np.ndarray, queries: Sequence[str], k: int, method: str = "interp",
                      alpha: float = 0.5, rrf_k: int = RRF_K,
                      depth: int = HYBRID_DEPTH) -> list[list[tuple[int, float]]]:
        """Dense and BM25 fused per query (``interp``: ``alpha`` on min-max-normalised dense scores;
        ``rrf``: reciprocal rank fusion); up to ``k`` ``(row, fused score)`` per query, best first."""
        check_choice("fusion method", method, FUSION_METHODS)
        fetch = max(int(k), depth)
        sparse = self.bm25_search(queries, fetch)
        scores, rows = self.search(query_emb, fetch)
        if len(sparse) != len(rows):
            raise ValueError(f"{len(queries)} query texts for {len(rows)} query embeddings")
        out = []
        for q_scores, q_rows, bm25_hits in zip(scores, rows, sparse):
            dense = [(str(int(r)), float(s)) for r, s in zip(q_rows, q_scores) if r >= 0]
            lexical = [(str(r), s) for r, s in bm25_hits]
            fused = (interpolate(dense, lexical, alpha=alpha, depth=int(k)) if method == "interp"
                     else reciprocal_rank_fusion(dense, lexical, k=rrf_k, depth=int(k)))
            out.append([(int(r), s) for r, s in fused])
        return out

    def exact_search(self, query_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the stored vectors (numpy), same contract as :meth:`search`."""
        return self._exact(*self._prepare(query_emb, k))

    def _prepare(self, query_emb: np.ndarray, k: int) -> tuple[np.ndarray, int]:
        q = np.asarray(query_emb, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query embeddings must be [n, {self.dim}], got shape {tuple(np.shape(query_emb))}")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return np.ascontiguousarray(q), min(int(k), len(self))

    def _exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = q @ self._embeddings.T                                      # [n, N]
        if k < scores.shape[1]:
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]             # [n, k] unordered
        else:
            top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        return _sorted(scores, top)

    def _torch_exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._torch_embeddings is None:
            with warnings.catch_warnings():
                # The memory map is read-only and torch never writes to it; no copy is made.
                warnings.simplefilter("ignore", UserWarning)
                self._torch_embeddings = torch.from_numpy(self._embeddings)
        with torch.inference_mode():
            scores, rows = torch.topk(torch.from_numpy(q) @ self._torch_embeddings.T, k, dim=1)  # [n, k]
        return scores.numpy(), rows.numpy().astype(np.int64, copy=False)

    def _rescore(self, q: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        rows = np.full((len(q), k), -1, dtype=np.int64)
        for i, cand in enumerate(candidates):
            cand = np.sort(cand[cand >= 0])                                  # sorted: sequential mmap reads
            exact = self._embeddings[cand] @ q[i]                            # [c]
            order = np.argsort(-exact, kind="stable")[:k]
            scores[i, :len(order)], rows[i, :len(order)] = exact[order], cand[order]
        return scores, rows

    # ------------------------------------------------------------------ passages

    def passages(self, rows: Sequence[int]) -> list[Passage]:
        """The passages at FAISS ``rows``, in the same order."""
        return self._store.by_rows(rows)

    def passage(self, pid: str) -> Passage | None:
        return self._store.by_id(pid)

    def row_of(self, pid: str) -> int | None:
        """The FAISS row of passage ``pid`` (e.g. to look up its exact vector), or None."""
        return self._store.row_of(pid)

    def close(self) -> None:
        self._store.close()
        self._faiss = None
        self._torch_embeddings = None

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sorted(scores: np.ndarray, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    picked = np.take_along_axis(scores, top, axis=1)
    # Ties broken by row so results are deterministic.
    order = np.lexsort((top, -picked), axis=1)
    return (np.take_along_axis(picked, order, axis=1).astype(np.float32),
            np.take_along_axis(top, order, axis=1).astype(np.int64))


def _read_config(path: Path, manifest: dict[str, Any]) -> IndexConfig:
    try:
        config = IndexConfig.from_dict(read_json(path))
    except (OSError, ValueError, TypeError) as e:
        raise IndexLoadError(f"{path}: not a valid index config ({e})") from e
    if config.index_type != manifest["index_type"]:
        raise IndexLoadError(f"{path}: index_type {config.index_type!r}, manifest says {manifest['index_type']!r}")
    return config


def _read_array(path: Path, dtype: np.dtype, shape: tuple[int, ...], mmap: bool) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise IndexLoadError(f"{path}: not a readable .npy array ({e})") from e
    if array.dtype != dtype or array.shape != shape:
        raise IndexLoadError(f"{path}: {array.dtype} {array.shape}, expected {dtype} {shape}")
    return array
