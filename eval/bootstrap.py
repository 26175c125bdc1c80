"""Bootstrap confidence intervals over queries, so two rows of a table can be told apart from noise.

The percentile bootstrap: resample the queries with replacement, average each resample, and take the
2.5th and 97.5th percentiles of those averages. The resampled query indices depend only on the seed
and the number of queries, so every metric of one evaluation is resampled over the same query sets.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0


def _as_array(values: Iterable[float] | Mapping[str, float]) -> np.ndarray:
    if isinstance(values, Mapping):
        # Sorted by query id: the same queries land at the same positions in every metric.
        values = [values[q] for q in sorted(values)]
    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"expected one value per query, got an array of shape {array.shape}")
    if array.size == 0:
        raise ValueError("cannot bootstrap an empty set of per-query values")
    if not np.isfinite(array).all():
        raise ValueError("per-query values must be finite")
    return array


def resample_indices(n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """``[n_resamples, n]`` query indices drawn with replacement."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def bootstrap_ci(values: Iterable[float] | Mapping[str, float], n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of the per-query values and its percentile-bootstrap interval."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    array = _as_array(values)
    means = array[resample_indices(array.size, n_resamples, seed)].mean(axis=1)      # [n_resamples]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    mean = float(array.mean())
    # Float summation order can put a percentile a hair outside the mean for (near-)constant values.
    return mean, float(min(low, mean)), float(max(high, mean))


def paired_bootstrap_diff(a: Mapping[str, float], b: Mapping[str, float], n_resamples: int = DEFAULT_RESAMPLES,
                          seed: int = DEFAULT_SEED, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)`` of ``a - b`` per query (same queries in both): an interval excluding 0
    means the two systems differ beyond resampling noise."""
    if set(a) != set(b):
        raise ValueError(f"paired bootstrap needs the same queries on both sides "
                         f"({len(set(a) ^ set(b))} differ)")
    return bootstrap_ci({q: a[q] - b[q] for q in a}, n_resamples, seed, confidence)


def paired_randomization_test(a: Mapping[str, float], b: Mapping[str, float], n_resamples: int = 10_000,
                              seed: int = DEFAULT_SEED) -> float:
    """Two-sided p-value that systems ``a`` and ``b`` (per-query values, same queries) have the same
    mean: each query's difference keeps or flips its sign at random (Fisher's randomisation test, as
    in Smucker et al. 2007); p is the share of those means at least as far from 0 as the observed one.
    The observed assignment is counted, so p is never 0."""
    if set(a) != set(b):
        raise ValueError(f"a paired test needs the same queries on both sides ({len(set(a) ^ set(b))} differ)")
    diffs = np.array([a[q] - b[q] for q in sorted(a)], dtype=np.float64)
    if not len(diffs):
        raise ValueError("no queries to compare")
    observed = abs(diffs.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_resamples, len(diffs)))
    means = np.abs((signs * diffs).mean(axis=1))
    # A tolerance so float noise in equal sums does not decide a tie.
    extreme = int(np.count_nonzero(means >= observed - 1e-12))
    return (extreme + 1) / (n_resamples + 1)
