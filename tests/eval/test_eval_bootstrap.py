"""Bootstrap confidence intervals over per-query values."""
from __future__ import annotations

import pytest

from eval.bootstrap import bootstrap_ci, paired_bootstrap_diff, paired_randomization_test
from eval.compare import paired_stats


def _hits(n: int) -> list[float]:
    return [float(i % 3 == 0) for i in range(n)]          # a third of the queries hit


def test_interval_contains_the_mean() -> None:
    values = _hits(90)
    mean, low, high = bootstrap_ci(values, n_resamples=500, seed=3)
    assert mean == pytest.approx(30 / 90)
    assert low < mean < high
    assert 0.0 <= low and high <= 1.0


def test_deterministic_under_a_seed() -> None:
    assert bootstrap_ci(_hits(60), seed=7) == bootstrap_ci(_hits(60), seed=7)


def test_mapping_order_does_not_matter() -> None:
    values = {f"q{i:02d}": v for i, v in enumerate(_hits(40))}
    reversed_values = dict(reversed(list(values.items())))
    assert bootstrap_ci(values, seed=1) == bootstrap_ci(reversed_values, seed=1)


def test_interval_shrinks_with_more_queries() -> None:
    _, low_small, high_small = bootstrap_ci(_hits(30), seed=0)
    _, low_large, high_large = bootstrap_ci(_hits(3000), seed=0)
    assert high_large - low_large < (high_small - low_small) / 3     # ~1/sqrt(100) in theory


def test_constant_values_give_a_point() -> None:
    mean, low, high = bootstrap_ci([0.7] * 50, n_resamples=200)
    assert mean == pytest.approx(0.7)
    assert low == pytest.approx(0.7, abs=1e-12) and high == pytest.approx(0.7, abs=1e-12)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0], confidence=1.5)


def test_paired_difference() -> None:
    a = {"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 1.0}
    assert paired_bootstrap_diff(a, a) == (0.0, 0.0, 0.0)
    b = {"q1": 0.0, "q2": 1.0, "q3": 0.0, "q4": 0.0}
    mean, low, high = paired_bootstrap_diff(a, b, seed=0)
    assert mean == pytest.approx(0.5)                 # (1 + 0 + 0 + 1) / 4
    assert 0.0 <= low <= mean <= high <= 1.0          # a never loses a query to b
    with pytest.raises(ValueError, match="same queries"):
        paired_bootstrap_diff(a, {"q1": 1.0})


def test_paired_stats_of_per_query_tables() -> None:
    a = {"recall@1": {f"q{i}": float(i % 2) for i in range(40)}, "mrr@10": {f"q{i}": 0.5 for i in range(40)}}
    b = {"recall@1": {f"q{i}": 0.0 for i in range(40)}, "mrr@10": {f"q{i}": 0.5 for i in range(40)}}
    stats = paired_stats(a, b, n_resamples=200, seed=3)
    diff, low, high = paired_bootstrap_diff(a["recall@1"], b["recall@1"], n_resamples=200, seed=3)
    p = paired_randomization_test(a["recall@1"], b["recall@1"], n_resamples=10_000, seed=3)
    assert stats["recall@1"] == {"diff": diff, "low": low, "high": high, "p": p}
    assert diff == pytest.approx(0.5) and p < 0.001
    assert stats["mrr@10"] == {"diff": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}       # identical: no difference
    with pytest.raises(ValueError, match="ndcg@10: not in both"):
        paired_stats(a, b, ["ndcg@10"])
    with pytest.raises(ValueError, match="same queries"):
        paired_stats(a, {"recall@1": {"q0": 0.0}, "mrr@10": b["mrr@10"]})
