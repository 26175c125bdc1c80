"""Synthetic embeddings for index benchmarks at sizes no real corpus here reaches (1M x 384).

Uniform random vectors are a poor stand-in: in high dimension all their inner products are alike and
ANN indexes look either perfect or hopeless. Real passage embeddings are clustered (topics) and
anisotropic, so these are drawn around random cluster centres with per-dimension scales that decay,
then L2-normalised like the encoder's cosine output. Queries are perturbed copies of random passages,
so every query has true near neighbours, as a real question has relevant passages.
"""
from __future__ import annotations

import numpy as np

DEFAULT_CLUSTERS = 1000


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def synthetic_passages(n: int, dim: int = 384, clusters: int = DEFAULT_CLUSTERS, seed: int = 0,
                       chunk: int = 100_000) -> np.ndarray:
    """``[n, dim]`` float32, unit-norm, clustered; generated in chunks so peak memory stays ~output size."""
    if n < 1 or dim < 1 or clusters < 1:
        raise ValueError(f"n, dim and clusters must be >= 1, got {n}, {dim}, {clusters}")
    rng = _rng(seed)
    scales = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)        # anisotropy: a decaying spectrum
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) * scales
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        which = rng.integers(0, clusters, stop - start)
        block = centres[which] + 0.6 * rng.standard_normal((stop - start, dim), dtype=np.float32) * scales
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out


def synthetic_queries(passages: np.ndarray, n: int, noise: float = 0.5, seed: int = 1) -> np.ndarray:
    """``[n, dim]`` unit-norm queries, each a noisy copy of a random passage."""
    rng = _rng(seed)
    dim = passages.shape[1]
    scales = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    base = passages[rng.integers(0, len(passages), n)]
    q = base + noise * rng.standard_normal((n, dim), dtype=np.float32) * scales / np.sqrt(scales @ scales)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
