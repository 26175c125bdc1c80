"""The indexer: embed a knowledge base into a FAISS index with a SQLite passage store, and open it.

An index directory holds ``index.faiss``, ``passages.sqlite``, ``embeddings.npy``,
``passage_hashes.npy``, ``index_config.json``, ``bm25/`` (the BM25 index for bm25/hybrid search) and
``manifest.json`` (written last). See
:func:`build_index` and :class:`SearchIndex`. Embedding is resumable and can be split over machines
(:func:`embed_shard`, :func:`merge_shards`); :func:`build_index_from_vectors` indexes given vectors.
"""
from __future__ import annotations

from indexer.build import build_index, build_index_from_vectors, content_hash, embed_shard
from indexer.config import INDEX_TYPES, IndexConfig
from indexer.errors import IndexLoadError, ManifestMismatch
from indexer.manifest import check_encoder
from indexer.merge import merge_shards
from indexer.searcher import SearchIndex
from indexer.shards import ShardError, ShardSpec

__all__ = [
    "INDEX_TYPES", "IndexConfig", "IndexLoadError", "ManifestMismatch", "SearchIndex", "ShardError", "ShardSpec",
    "build_index", "build_index_from_vectors", "check_encoder", "content_hash", "embed_shard", "merge_shards",
]
