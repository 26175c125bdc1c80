"""Synthetic vectors: unit norm, reproducible, clustered (so ANN benchmarks are not trivially easy or hopeless)."""
from __future__ import annotations

import numpy as np
import pytest

from bench.synthetic import synthetic_passages, synthetic_queries


def test_unit_norm_reproducible_and_chunk_independent() -> None:
    a = synthetic_passages(3000, dim=32, clusters=20, seed=3, chunk=1000)
    assert a.shape == (3000, 32) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, synthetic_passages(3000, dim=32, clusters=20, seed=3, chunk=1000))
    assert not np.array_equal(a, synthetic_passages(3000, dim=32, clusters=20, seed=4, chunk=1000))


def test_queries_have_true_near_neighbours() -> None:
    p = synthetic_passages(5000, dim=64, clusters=50, seed=0)
    q = synthetic_queries(p, 50, seed=1)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    scores = q @ p.T                                                   # [50, 5000]
    top = np.sort(scores, axis=1)[:, -10:]
    # Each query's neighbours stand far above the bulk of the collection (clusters, not uniform noise).
    assert np.all(top.min(axis=1) > np.median(scores, axis=1) + 0.3)


def test_rejects_empty_sizes() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        synthetic_passages(0)
