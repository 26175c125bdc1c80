"""Fusion of a dense and a BM25 ranking: re-exported from :mod:`retriever.fusion`.

The functions live in ``retriever`` so that the indexer and the server (which must not depend on
the evaluation package) fuse exactly as the evaluation does.
"""
from __future__ import annotations

from retriever.fusion import RRF_K, Ranking, fuse_runs, interpolate, min_max, reciprocal_rank_fusion

__all__ = ["RRF_K", "Ranking", "fuse_runs", "interpolate", "min_max", "reciprocal_rank_fusion"]
