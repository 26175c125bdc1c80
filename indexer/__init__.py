"""The indexer: embed a knowledge base into a FAISS index with a SQLite passage store, and open it.

An index directory holds ``index.faiss``, ``passages.sqlite``, ``embeddings.npy``,
``passage_hashes.npy``, ``index_config.json``, ``bm25/`` (the BM25 index for bm25/hybrid search) and
``manifest.json`` (written last). See
:func:`build_index` and :class:`SearchIndex`.
"""
from __future__ import annotations

from indexer.build import build_index, content_hash
from indexer.config import INDEX_TYPES, IndexConfig
from indexer.errors import IndexLoadError, ManifestMismatch
from indexer.manifest import check_encoder
from indexer.searcher import SearchIndex

__all__ = [
    "INDEX_TYPES", "IndexConfig", "IndexLoadError", "ManifestMismatch", "SearchIndex", "build_index",
    "check_encoder", "content_hash",
]
