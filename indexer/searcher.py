"""``SearchIndex``: an opened, verified index directory that answers top-k queries.

Opening resolves the build an index directory serves (:mod:`indexer.builds`), holds a lease on it
so it is not deleted while open, and checks every file against the manifest (size, SHA-256, the
store's schema and rows, dims) and, given an encoder, that it is the encoder the index was built
with. After that the object is read-only: FAISS searches take per-call parameters and the store
gives each thread its own connection, so concurrent searches from several threads are safe.
:meth:`SearchIndex.health` tells whether the build's files are still the ones that were opened.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.data import Passage
from common.files import read_json
from indexer.bm25_files import BM25_DIR, load_bm25
from indexer.build import HASH_DTYPE
from indexer.builds import BuildLease, build_name, current_build
from indexer.config import IndexConfig
from indexer.errors import IndexLoadError, ManifestMismatch
from indexer.faiss_index import read_faiss, search_params
from indexer.manifest import (
    CHECKSUMMED_FILES,
    CONFIG_FILE,
    EMBEDDINGS_FILE,
    FAISS_FILE,
    HASHES_FILE,
    MANIFEST_FILE,
    STORE_FILE,
    check_encoder,
    read_manifest,
    verify_files,
)
from indexer.store import PassageStore
from indexer.vectors import FaissVectors, FileVectors, check_npy
from retriever.bm25 import BM25Index
from retriever.encoder import DualEncoder

logger = logging.getLogger(__name__)

# Flat search of this many queries or more runs as one torch matmul + topk: at 32 queries x 1M x 384 it
# was ~4x faster than IndexFlatIP with one thread, while for a single query FAISS's scan wins
# (bench/ann.py measures both; see the ANN table in docs/indexes.md).
TORCH_FLAT_FROM = 8
# A mask keeping at most this many rows, and at most 1/EXACT_FILTER_SHARE of the index, is searched by
# brute force over those rows (exact on every index type). Gathering the rows is a copy, so a broader
# mask goes through FAISS's IDSelector instead (exact on flat: a scan that skips the other rows).
EXACT_FILTER_ROWS = 20_000
EXACT_FILTER_SHARE = 16


class SearchIndex:
    """A read-only dense index with its passage store. Use :meth:`open`."""

    def __init__(self, index_dir: Path, manifest: dict[str, Any], config: IndexConfig, faiss_index: Any,
                 store: PassageStore, vectors: FaissVectors | FileVectors, bm25: BM25Index | None = None, *,
                 build_dir: Path | None = None, lease: BuildLease | None = None) -> None:
        self.index_dir = index_dir
        self.build_dir = build_dir or index_dir
        self.build = build_name(self.build_dir, index_dir)
        self.bm25 = bm25
        self.manifest = manifest
        self.config = config
        self._faiss = faiss_index
        self._store = store
        self._vectors = vectors
        self._torch_embeddings: torch.Tensor | None = None
        self._lease = lease
        self._stamps = _file_stamps(self.build_dir, manifest)
        self._damage: str | None = None

    @classmethod
    def open(cls, index_dir: str | Path, encoder: DualEncoder | None = None, verify: bool = True) -> SearchIndex:
        """Load and check the build ``index_dir`` serves; with ``encoder``, refuse it unless it built this index.

        ``index_dir``: a versioned index directory (its ``current`` build), a legacy single-directory
        index, or one build directory. ``verify=False`` skips the SHA-256 of the large files (sizes,
        counts and the store's schema are still checked). Raises :class:`IndexLoadError` naming the bad
        file, or :class:`ManifestMismatch`.
        """
        index_dir = Path(index_dir)
        build = current_build(index_dir)
        lease = BuildLease(build)
        try:
            return cls._open_build(index_dir, build, lease, encoder, verify)
        except BaseException:
            lease.release()
            raise

    @classmethod
    def _open_build(cls, index_dir: Path, build: Path, lease: BuildLease, encoder: DualEncoder | None,
                    verify: bool) -> SearchIndex:
        manifest = read_manifest(build)
        verify_files(build, manifest, checksums=verify)
        if encoder is not None:
            try:
                check_encoder(manifest, encoder)
            except ManifestMismatch as e:
                raise ManifestMismatch(f"{index_dir}: {e}", e.differences) from None
        config = _read_config(build / CONFIG_FILE, manifest)
        count, dim = manifest["count"], manifest["dim"]
        check_npy(build / HASHES_FILE, HASH_DTYPE, (count,))
        faiss_index = read_faiss(build / FAISS_FILE, config)
        if faiss_index.ntotal != count or faiss_index.d != dim:
            raise IndexLoadError(f"{build / FAISS_FILE}: holds {faiss_index.ntotal} vectors of dim "
                                 f"{faiss_index.d}, manifest says {count} of dim {dim}")
        vectors: FaissVectors | FileVectors
        if config.index_type in ("flat", "hnsw"):
            vectors = FaissVectors(faiss_index, count, dim)
            check_npy(build / EMBEDDINGS_FILE, np.dtype(np.float32), (count, dim))
        else:
            vectors = FileVectors(build / EMBEDDINGS_FILE, count, dim)
        try:
            bm25 = load_bm25(build, manifest, verify=verify)
            store = PassageStore(build / STORE_FILE)
        except BaseException:
            vectors.close()
            raise
        if len(store) != count:
            store.close()
            vectors.close()
            raise IndexLoadError(f"{store.path}: holds {len(store)} passages, manifest and {FAISS_FILE} "
                                 f"say {count}")
        logger.info("opened index %s (build %s): %d passages, %s, dim %d, %s", index_dir, build_name(build, index_dir),
                    count, config.index_type, dim, "with BM25" if bm25 is not None else "dense only (no bm25/)")
        return cls(index_dir, manifest, config, faiss_index, store, vectors, bm25, build_dir=build, lease=lease)

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
        """The exact passage vectors, float32 [n, d], read-only: FAISS's own memory for flat and HNSW;
        read from ``embeddings.npy`` (into RAM) for IVF indexes."""
        return self._vectors.all()

    def health(self) -> str | None:
        """None while the build's files are the ones opened; else what changed (a file truncated,
        replaced or rewritten under the server, or a read that failed)."""
        if self._damage is not None:
            return self._damage
        for name, stamp in self._stamps.items():
            try:
                st = (self.build_dir / name).stat()
            except OSError:
                return f"{name}: missing since the index was opened"
            if (st.st_ino, st.st_size, st.st_mtime_ns) != stamp:
                return f"{name}: changed on disk since the index was opened"
        return None

    def mark_damaged(self, problem: str) -> None:
        """Record a failed read; :meth:`health` reports it from then on."""
        self._damage = problem

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
            "build": self.build,
            "bm25": self.bm25 is not None,
        }

    # ------------------------------------------------------------------ search

    def search(self, query_emb: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product: scores float32 [n, k'] descending and rows int64 [n, k'], k' = min(k, len).

        ``allowed``: a boolean mask over the rows (a metadata filter, deleted passages); only those
        rows are ranked. A mask that keeps few rows is answered exactly over them (filter first, then
        rank); a broad one goes through FAISS with an ``IDSelector``, exact on flat indexes.
        """
        q, k = self._prepare(query_emb, k)
        index = self._faiss
        if index is None:
            raise RuntimeError(f"{self.index_dir}: index is closed")
        if allowed is not None:
            return self._search_allowed(q, k, self._check_mask(allowed))
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

    def _check_mask(self, allowed: np.ndarray) -> np.ndarray:
        allowed = np.asarray(allowed)
        if allowed.dtype != np.bool_ or allowed.shape != (len(self),):
            raise ValueError(f"allowed must be a boolean mask of shape ({len(self)},), got {allowed.dtype} "
                             f"{allowed.shape}")
        return allowed

    def _search_allowed(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = np.flatnonzero(allowed)
        k = min(k, len(keep))
        if k == 0:
            return np.empty((len(q), 0), dtype=np.float32), np.empty((len(q), 0), dtype=np.int64)
        if len(keep) <= min(EXACT_FILTER_ROWS, len(self) // EXACT_FILTER_SHARE):
            return self._exact_rows(q, k, keep)
        if self.config.index_type == "flat" and len(q) >= TORCH_FLAT_FROM:
            return self._torch_exact(q, k, allowed)
        if self.config.index_type == "ivfpq":
            fetch = min(len(keep), k * self.config.rescore_factor)
            _, candidates = self._faiss.search(q, fetch, params=search_params(self.config, fetch, allowed))
            scores, rows = self._rescore(q, candidates, k)
        else:
            scores, rows = self._faiss.search(q, k, params=search_params(self.config, k, allowed))
        for i in np.flatnonzero((rows < 0).any(axis=1)):
            scores[i], rows[i] = self._exact_rows(q[i:i + 1], k, keep)
        return scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)

    def _exact_rows(self, q: np.ndarray, k: int, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the rows ``keep`` only; ties broken by row, as :meth:`_exact`."""
        scores = q @ self._read_vectors(keep).T                                            # [n, m]
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
            np.broadcast_to(np.arange(scores.shape[1]), (len(q), scores.shape[1]))         # [n, k] unordered
        top_scores, top_rows = np.take_along_axis(scores, top, axis=1), keep[top]
        order = np.lexsort((top_rows, -top_scores), axis=1)
        return (np.take_along_axis(top_scores, order, axis=1).astype(np.float32),
                np.take_along_axis(top_rows, order, axis=1).astype(np.int64))

    def bm25_search(self, queries: Sequence[str], k: int,
                    allowed: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
        """Per query, up to ``k`` ``(row, score)`` BM25 hits, best first; passages sharing no term with
        the query are not hits (as in Lucene), so a list can be short or empty. ``allowed``: as in
        :meth:`search`."""
        if self.bm25 is None:
            raise IndexLoadError(f"{self.index_dir}: this index has no BM25 index (built before BM25 was "
                                 "added, or with --no-bm25); rebuild it with `dpr index`")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        mask = None if allowed is None else self._check_mask(allowed)
        scores, rows = self.bm25.search(list(queries), int(k), weight_mask=mask)
        return [[(int(r), float(s)) for r, s in zip(q_rows, q_scores) if s > 0]
                for q_scores, q_rows in zip(scores, rows)]

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
        best_scores = np.empty((len(q), 0), dtype=np.float32)
        best_rows = np.empty((len(q), 0), dtype=np.int64)
        for start, block in self._vectors.blocks():
            scores = np.concatenate([best_scores, q @ block.T], axis=1)                    # [n, k + b]
            rows = np.concatenate([best_rows, np.broadcast_to(np.arange(start, start + len(block)),
                                                              (len(q), len(block)))], axis=1)
            if k < scores.shape[1]:
                top = np.argpartition(-scores, k - 1, axis=1)[:, :k]                       # [n, k] unordered
                scores, rows = np.take_along_axis(scores, top, axis=1), np.take_along_axis(rows, top, axis=1)
            best_scores, best_rows = scores, rows
        order = np.lexsort((best_rows, -best_scores), axis=1)                               # ties broken by row
        return (np.take_along_axis(best_scores, order, axis=1).astype(np.float32),
                np.take_along_axis(best_rows, order, axis=1).astype(np.int64))

    def _torch_exact(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self._torch_embeddings is None:
            with warnings.catch_warnings():
                # The view is read-only and torch never writes to it; no copy is made.
                warnings.simplefilter("ignore", UserWarning)
                self._torch_embeddings = torch.from_numpy(self._vectors.all())
        with torch.inference_mode():
            scores = torch.from_numpy(q) @ self._torch_embeddings.T                       # [n, N]
            if allowed is not None:
                scores[:, torch.from_numpy(~allowed)] = -torch.inf
            scores, rows = torch.topk(scores, k, dim=1)                                  # [n, k]
        return scores.numpy(), rows.numpy().astype(np.int64, copy=False)

    def _rescore(self, q: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        rows = np.full((len(q), k), -1, dtype=np.int64)
        for i, cand in enumerate(candidates):
            cand = cand[cand >= 0]
            exact = self._read_vectors(cand) @ q[i]                           # [c]
            order = np.lexsort((cand, -exact))[:k]
            scores[i, :len(order)], rows[i, :len(order)] = exact[order], cand[order]
        return scores, rows

    def _read_vectors(self, rows: np.ndarray) -> np.ndarray:
        try:
            return self._vectors.rows(rows)
        except IndexLoadError:
            self.mark_damaged(f"{EMBEDDINGS_FILE}: read failed since the index was opened")
            raise

    # ------------------------------------------------------------------ passages

    def passages(self, rows: Sequence[int]) -> list[Passage]:
        """The passages at FAISS ``rows``, in the same order; a row outside the index is an IndexError."""
        rows = [int(r) for r in rows]
        outside = [r for r in rows if not 0 <= r < len(self)]
        if outside:
            raise IndexError(f"{self.index_dir}: no passage at row(s) {outside[:5]} (the index has {len(self)})")
        return self._guarded(self._store.by_rows, rows)

    def passage(self, pid: str) -> Passage | None:
        return self._guarded(self._store.by_id, pid)

    def row_of(self, pid: str) -> int | None:
        """The FAISS row of passage ``pid`` (e.g. to look up its exact vector), or None."""
        return self._guarded(self._store.row_of, pid)

    def rows_of_document(self, doc_id: str) -> list[int]:
        """The rows of document ``doc_id``'s passages (a passage that is its own document: its row)."""
        return self._guarded(self._store.rows_of_document, doc_id)

    def metadata_rows(self) -> list[tuple[int, dict]]:
        """``(row, metadata)`` of every passage that has metadata."""
        return self._guarded(lambda _: self._store.metadata_rows(), None)

    def all_passages(self) -> list[Passage]:
        """Every passage, in row order."""
        return self._guarded(lambda _: self._store.all_passages(), None)

    def _guarded(self, read: Any, arg: Any) -> Any:
        try:
            return read(arg)
        except (IndexLoadError, IndexError) as e:
            # The store was checked at open: a row it lacks now means the file changed under us.
            self.mark_damaged(f"{STORE_FILE}: read failed since the index was opened")
            raise IndexLoadError(str(e)) from e

    def close(self) -> None:
        self._store.close()
        self._torch_embeddings = None
        self._vectors.close()
        self._faiss = None
        if self._lease is not None:
            self._lease.release()

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _file_stamps(build: Path, manifest: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) of every file of the build, to notice one changed under a running server."""
    names = [MANIFEST_FILE, *CHECKSUMMED_FILES]
    bm25 = manifest.get(BM25_DIR)
    if isinstance(bm25, dict):
        names += [f"{BM25_DIR}/{name}" for name in bm25.get("files") or {}]
    stamps = {}
    for name in names:
        try:
            st = (build / name).stat()
        except OSError:
            continue
        stamps[name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return stamps


def _read_config(path: Path, manifest: dict[str, Any]) -> IndexConfig:
    try:
        config = IndexConfig.from_dict(read_json(path))
    except (OSError, ValueError, TypeError, RecursionError) as e:
        raise IndexLoadError(f"{path}: not a valid index config ({type(e).__name__}: {e})") from e
    if config.index_type != manifest["index_type"]:
        raise IndexLoadError(f"{path}: index_type {config.index_type!r}, manifest says {manifest['index_type']!r}")
    return config
