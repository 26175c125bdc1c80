"""The indexer: embed a knowledge base into a FAISS index with a SQLite passage store, and open it.

An index directory holds versioned, immutable builds (``builds/<id>/``) and a ``current`` pointer
(:mod:`indexer.builds`); a build holds ``index.faiss``, ``passages.sqlite``, ``embeddings.npy``,
``passage_hashes.npy``, ``index_config.json``, ``bm25/`` (the BM25 index for bm25/hybrid search)
and ``manifest.json`` (written last). See :func:`build_index` and :class:`SearchIndex`. Embedding is
resumable and can be split over machines (:func:`embed_shard`, :func:`merge_shards`);
:func:`build_index_from_vectors` indexes given vectors.

The names below are imported on first use, so ``import indexer.config`` does not load FAISS or torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_index": "indexer.build", "build_index_from_vectors": "indexer.build", "content_hash": "indexer.build",
    "embed_shard": "indexer.build", "IndexConfig": "indexer.config", "INDEX_TYPES": "common.choices",
    "IndexLoadError": "indexer.errors", "ManifestMismatch": "indexer.errors", "check_encoder": "indexer.manifest",
    "merge_shards": "indexer.merge", "SearchIndex": "indexer.searcher", "ShardError": "indexer.errors",
    "ShardSpec": "indexer.shards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'indexer' has no attribute {name!r}")
