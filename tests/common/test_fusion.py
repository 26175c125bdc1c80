"""Reciprocal rank fusion and score interpolation, by hand."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.fusion import FusionConfig, fuse_runs, interpolate, min_max, reciprocal_rank_fusion

DENSE = [("a", 0.9), ("b", 0.8), ("c", 0.1)]
SPARSE = [("c", 12.0), ("d", 7.0), ("a", 2.0)]


def test_rrf_by_hand() -> None:
    # a: 1/61 + 1/63 (ranks 1 and 3); c: 1/63 + 1/61 (the same: a tie); b: 1/62; d: 1/62 (a tie).
    # Ties keep first appearance: a before c (a leads the dense list), b before d.
    fused = reciprocal_rank_fusion(DENSE, SPARSE, k=60)
    assert [pid for pid, _ in fused] == ["a", "c", "b", "d"]
    assert dict(fused) == pytest.approx({"a": 1 / 61 + 1 / 63, "c": 1 / 63 + 1 / 61, "b": 1 / 62, "d": 1 / 62})


def test_rrf_depth_and_k() -> None:
    # k=0: a: 1/1 + 1/3 = 1.333, c: 1/3 + 1/1 = 1.333, b: 1/2, d: 1/2
    fused = reciprocal_rank_fusion(DENSE, SPARSE, k=0, depth=2)
    assert fused == [("a", pytest.approx(4 / 3)), ("c", pytest.approx(4 / 3))]


def test_min_max() -> None:
    # dense: (s - 0.1) / 0.8 -> a 1, b 0.875, c 0
    assert min_max(DENSE) == pytest.approx({"a": 1.0, "b": 0.875, "c": 0.0})
    assert min_max([("x", 3.0), ("y", 3.0)]) == {"x": 1.0, "y": 1.0}
    assert min_max([]) == {}


def test_interpolation_by_hand() -> None:
    # dense' a 1, b 0.875, c 0;  sparse' (s - 2) / 10: c 1, d 0.5, a 0
    # alpha 0.5:  a .5, b .4375, c .5, d .25 -> a, c (tie, a first), b, d
    fused = interpolate(DENSE, SPARSE, alpha=0.5)
    assert [pid for pid, _ in fused] == ["a", "c", "b", "d"]
    assert dict(fused) == pytest.approx({"a": 0.5, "b": 0.4375, "c": 0.5, "d": 0.25})
    # alpha 0.25: a .25, b .21875, c .75, d .375 -> c, d, a, b
    assert [pid for pid, _ in interpolate(DENSE, SPARSE, alpha=0.25)] == ["c", "d", "a", "b"]
    # alpha 1: the dense order; c and d tie at 0 and c came first
    assert [pid for pid, _ in interpolate(DENSE, SPARSE, alpha=1.0)] == ["a", "b", "c", "d"]


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="alpha"):
        interpolate(DENSE, SPARSE, alpha=1.5)
    with pytest.raises(ValueError, match="more than once"):
        reciprocal_rank_fusion([("a", 1.0), ("a", 0.5)], SPARSE)
    with pytest.raises(ValueError, match="rrf"):
        fuse_runs({}, {}, FusionConfig(method="max"))


def test_fuse_runs_per_query() -> None:
    fused = fuse_runs({"q1": DENSE, "q2": [("x", 1.0)]}, {"q1": SPARSE, "q3": [("y", 5.0)]},
                      FusionConfig(method="interp", alpha=0.5))
    assert list(fused) == ["q1", "q2", "q3"]
    assert [pid for pid, _ in fused["q1"]] == ["a", "c", "b", "d"]
    # q2 only in the dense run, q3 only in the sparse run: each keeps its one list (weighted)
    assert fused["q2"] == [("x", 0.5)] and fused["q3"] == [("y", 0.5)]


def test_one_default_fusion_for_server_eval_and_bench() -> None:
    """The hybrid weight once drifted (0.5 in eval, 0.8 in the server): now every layer takes FusionConfig."""
    import dataclasses

    from eval.runner import EvalOptions
    from server.settings import Settings

    default = FusionConfig()
    assert (default.method, default.alpha, default.rrf_k, default.depth) == ("interp", 0.8, 60, 100)
    assert Settings().fusion() == default
    assert EvalOptions(data=Path("x"), bm25=True).fusion == default
    assert {f.name for f in dataclasses.fields(FusionConfig)} == {"method", "alpha", "rrf_k", "depth"}
