"""Batches never hold a passage twice, nor one member's gold passage as another member's passage."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from common.data import Example, Passage
from retriever.batching import Batch, make_batches


def _p(i: int, text: str | None = None) -> Passage:
    return Passage(f"p{i}", f"title {i}", text or f"text of passage {i}")


def _examples(n: int) -> list[Example]:
    exs = [Example(f"q{i}", f"question {i}", positives=(_p(i),)) for i in range(n)]
    # Collisions a real file has: two questions with one gold passage, and a gold text under another id.
    exs[1] = Example("q1", "question 1", positives=(_p(0),))
    exs[2] = Example("q2", "question 2", positives=(_p(2, text="text of passage 0"),))
    return exs


def _check(batches: list[Batch], examples: list[Example], hard: int) -> None:
    assert sorted(q for b in batches for q in b.qids) == sorted(ex.qid for ex in examples)
    gold = {ex.qid: ex.positives for ex in examples}
    for b in batches:
        assert b.group_size == 1 + hard and len(b.passages) == len(b) * (1 + hard)
        assert max(Counter(p.pid for p in b.passages).values()) == 1
        assert max(Counter(p.text for p in b.passages).values()) == 1
        for i, qid in enumerate(b.qids):
            assert b.passages[i * (1 + hard)] in gold[qid]                 # the positive leads its group
            others = b.passages[:i * (1 + hard)] + b.passages[(i + 1) * (1 + hard):]
            own = b.passages[i * (1 + hard) + 1:(i + 1) * (1 + hard)]
            for p in (*others, *own):                                       # nothing else is its gold
                assert all(p.pid != g.pid and p.text != g.text for g in gold[qid])


def test_in_batch_only_has_no_duplicates() -> None:
    examples = _examples(40)
    batches = make_batches(examples, 8, np.random.default_rng(0))
    _check(batches, examples, 0)
    assert max(len(b) for b in batches) == 8


@pytest.mark.parametrize("hard", [1, 2])
def test_hard_negatives_are_swapped_when_they_collide(hard: int) -> None:
    examples = _examples(40)
    # Adversarial candidates: each example's first choices are the next examples' gold passages,
    # which would be duplicates (or false negatives) whenever those land in the same batch.
    candidates = [[_p((i + j) % 40) for j in range(1, 6)] for i in range(40)]
    filler = [_p(100 + i) for i in range(50)]
    batches = make_batches(examples, 8, np.random.default_rng(1), hard, candidates, filler)
    _check(batches, examples, hard)


def test_random_filler_covers_missing_negatives() -> None:
    examples = _examples(12)
    filler = [_p(100 + i) for i in range(30)]
    batches = make_batches(examples, 4, np.random.default_rng(2), 1, [[] for _ in examples], filler)
    _check(batches, examples, 1)
    assert all(p.pid.startswith("p1") and int(p.pid[1:]) >= 100 for b in batches for p in b.passages[1::2])


def test_same_seed_same_batches_and_different_seed_differs() -> None:
    examples = _examples(30)
    first = make_batches(examples, 6, np.random.default_rng(7))
    assert first == make_batches(examples, 6, np.random.default_rng(7))
    assert first != make_batches(examples, 6, np.random.default_rng(8))


def test_impossible_negatives_raise_a_clear_error() -> None:
    examples = [Example("q0", "question 0", positives=(_p(0),))]
    with pytest.raises(ValueError, match="cannot find 1 hard negative"):
        make_batches(examples, 4, np.random.default_rng(0), 1, [[_p(0)]])
