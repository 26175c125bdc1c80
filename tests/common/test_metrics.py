"""Metric values against hand-computed numbers (the arithmetic is in the comments)."""
from __future__ import annotations

import math

import pytest

from common import metrics
from eval.evaluate import evaluate_run

L2, L3, L4 = math.log2(2), math.log2(3), math.log2(4)   # 1, 1.585, 2: discounts of ranks 1, 2, 3

QRELS = {
    "q1": {"a": 1},                  # one relevant passage
    "q2": {"b": 2, "c": 1},          # graded: b highly relevant, c partly
    "q3": {"d": 1, "e": 1},          # two relevant passages of equal grade (a tie in the ideal ranking)
    "q4": {"f": 1},                  # missing from the run: counts as retrieving nothing
    "q5": {"g": 0},                  # nothing relevant: no metric is defined, so it is left out
}
RUN = {
    "q1": ["x", "a", "y"],           # relevant at rank 2
    "q2": ["c", "z", "b"],           # c (grade 1) at rank 1, b (grade 2) at rank 3
    "q3": ["e"],                     # shorter than any k: one of two relevant, at rank 1
    "q5": ["g"],
    "extra": ["a"],                  # not judged: ignored
}


def test_recall_is_share_of_queries_with_a_hit() -> None:
    # @1: q1 0, q2 1, q3 1, q4 0 -> 2/4;  @2 and @10 (k beyond the run): q1 1, q2 1, q3 1, q4 0 -> 3/4
    assert metrics.recall_at_k(QRELS, RUN, 1) == pytest.approx(2 / 4)
    assert metrics.recall_at_k(QRELS, RUN, 2) == pytest.approx(3 / 4)
    assert metrics.recall_at_k(QRELS, RUN, 10) == pytest.approx(3 / 4)
    assert metrics.hits_at_k(QRELS, RUN, 1) == {"q1": 0.0, "q2": 1.0, "q3": 1.0, "q4": 0.0}


def test_full_recall_counts_every_relevant_passage() -> None:
    # @1: q1 0, q2 1/2, q3 1/2, q4 0 -> 1/4;  @3: q1 1, q2 2/2, q3 1/2, q4 0 -> 2.5/4
    assert metrics.full_recall_at_k(QRELS, RUN, 1) == pytest.approx(1 / 4)
    assert metrics.full_recall_at_k(QRELS, RUN, 3) == pytest.approx(2.5 / 4)


def test_mrr_uses_the_first_relevant_rank_within_k() -> None:
    # @10: q1 1/2, q2 1/1, q3 1/1, q4 0 -> 2.5/4;  @1: q1 0 (its hit is at rank 2), q2 1, q3 1 -> 2/4
    assert metrics.mrr_at_k(QRELS, RUN, 10) == pytest.approx(2.5 / 4)
    assert metrics.mrr_at_k(QRELS, RUN, 1) == pytest.approx(2 / 4)


def test_ndcg_uses_grades_and_the_ideal_order() -> None:
    # q1: DCG 1/log2(3); IDCG 1/log2(2)                       -> 0.6309
    # q2: DCG 1/log2(2) + 2/log2(4) = 2; IDCG 2/1 + 1/log2(3)  -> 2 / 2.6309 = 0.7602
    # q3: DCG 1/1; IDCG 1/1 + 1/log2(3) (tied grades)          -> 1 / 1.6309 = 0.6131
    # q4: 0.   Mean over 4 queries                              -> 0.5011
    q1 = (1 / L3) / (1 / L2)
    q2 = (1 / L2 + 2 / L4) / (2 / L2 + 1 / L3)
    q3 = (1 / L2) / (1 / L2 + 1 / L3)
    per_query = metrics.ndcg_per_query(QRELS, RUN, 3)
    assert per_query == pytest.approx({"q1": q1, "q2": q2, "q3": q3, "q4": 0.0})
    assert q2 == pytest.approx(0.7602, abs=1e-4)
    assert metrics.ndcg_at_k(QRELS, RUN, 3) == pytest.approx((q1 + q2 + q3) / 4)
    assert metrics.ndcg_at_k(QRELS, RUN, 3) == pytest.approx(0.5011, abs=1e-4)


def test_ndcg_at_1_cuts_the_ideal_list_too() -> None:
    # q2 @1: DCG = grade of c = 1; ideal top-1 is b with grade 2 -> 1/2
    assert metrics.ndcg_per_query(QRELS, RUN, 1)["q2"] == pytest.approx(0.5)


def test_ndcg_counts_a_repeated_passage_once() -> None:
    # "a" at ranks 1 and 2: DCG 1/log2(2) = 1 = IDCG, not 1 + 1/log2(3)
    assert metrics.ndcg_at_k({"q": {"a": 1}}, {"q": ["a", "a"]}, 2) == pytest.approx(1.0)


def test_set_qrels_mean_grade_one() -> None:
    assert metrics.recall_at_k({"q": {"a", "b"}}, {"q": ["z", "b"]}, 2) == 1.0
    assert metrics.mrr_at_k({"q": {"a", "b"}}, {"q": ["z", "b"]}, 10) == 0.5


def test_k_must_be_positive() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        metrics.recall_at_k(QRELS, RUN, 0)


def test_evaluate_run_reports_hand_values_with_intervals() -> None:
    result = evaluate_run(QRELS, RUN, ks=(1, 2), n_resamples=200, seed=1)
    assert result["n_queries"] == 4                                  # q5 has nothing relevant
    m = result["metrics"]
    assert set(m) == {"recall@1", "recall@2", "mrr@10", "ndcg@10", "full_recall@2"}
    assert m["recall@1"]["value"] == pytest.approx(0.5)
    assert m["recall@2"]["value"] == pytest.approx(0.75)
    assert m["mrr@10"]["value"] == pytest.approx(0.625)
    # full recall @2: q1 1, q2 1/2 (c only), q3 1/2, q4 0 -> 2/4
    assert m["full_recall@2"]["value"] == pytest.approx(0.5)
    for value in m.values():
        assert 0.0 <= value["ci_low"] <= value["value"] <= value["ci_high"] <= 1.0
        assert value["n"] == 4


def test_evaluate_run_adds_answer_match_over_judged_queries() -> None:
    texts = {"q1": ["nothing here", "Paris is the capital"], "q2": ["London calling"], "q3": ["?"]}
    answers = {"q1": ["paris"], "q2": ["London"], "q3": [], "unjudged": ["x"]}
    m = evaluate_run(QRELS, RUN, ks=(1, 2), answers=answers, texts=texts, n_resamples=50)["metrics"]
    # Queries with answers and judgements: q1 (hit at rank 2), q2 (rank 1) -> @1: 1/2, @2: 2/2
    assert m["answer_recall@1"]["value"] == pytest.approx(0.5)
    assert m["answer_recall@2"]["value"] == pytest.approx(1.0)
    assert m["answer_recall@1"]["n"] == 2


def test_evaluate_run_refuses_qrels_without_relevant_passages() -> None:
    with pytest.raises(ValueError, match="no query has a relevant passage"):
        evaluate_run({"q": {"a": 0}}, {"q": ["a"]})


def test_fractional_grades_below_one() -> None:
    """A grade of 0.5 is relevant: it counts for recall and earns half the gain of a 1 (it once raised
    ZeroDivisionError in nDCG, truncated to grade 0)."""
    from common.metrics import ndcg_at_k, recall_at_k

    qrels = {"q": {"a": 0.5}}
    assert recall_at_k(qrels, {"q": ["a"]}, 1) == 1.0
    assert ndcg_at_k(qrels, {"q": ["a"]}, 10) == 1.0
    assert ndcg_at_k(qrels, {"q": ["x", "a"]}, 10) == pytest.approx(1 / math.log2(3))
    mixed = {"q": {"a": 0.5, "b": 1.0}}
    assert ndcg_at_k(mixed, {"q": ["a", "b"]}, 10) == pytest.approx((0.5 + 1 / math.log2(3)) / (1 + 0.5 / math.log2(3)))
