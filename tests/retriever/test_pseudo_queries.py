"""Pseudo queries from unlabelled passages: deterministic, never a query inside its own positive,
and batchable by the trainer as they are."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from common.data import Example, Passage
from retriever.batching import make_batches
from retriever.pseudo_queries import (
    DUPLICATE_PID,
    DUPLICATE_TITLE,
    NO_QUERY,
    NO_TITLE,
    QUERY_IN_POSITIVE,
    SINGLE_SENTENCE,
    TOO_SHORT,
    PseudoQueryConfig,
    crop_bounds,
    make_pseudo_examples,
)

METHODS = ("ict", "crop")        # the seeded ones; "title" draws nothing
_VOCAB = ("the cell protein gene binds to a receptor in mice and humans with high affinity while "
          "levels of expression rose sharply after treatment").split()


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def _random_passages(n: int, seed: int = 0) -> list[Passage]:
    """Passages of 1-8 sentences from a small vocabulary, so phrases (and sometimes whole sentences)
    repeat inside a passage: the cases that can put a query inside its positive."""
    rng = np.random.default_rng(seed)
    passages = []
    for i in range(n):
        sentences = []
        for _ in range(int(rng.integers(1, 9))):
            words = [str(w) for w in rng.choice(_VOCAB, size=int(rng.integers(3, 20)))]
            sentences.append(" ".join(words).capitalize() + ".")
        if rng.random() < 0.2:                       # a sentence said twice
            sentences.append(sentences[0])
        passages.append(Passage(f"p{i}", f"Title {i}", " ".join(sentences)))
    return passages


def _key(examples: list[Example]) -> list[tuple[str, str, str]]:
    return [(ex.qid, ex.question, ex.positives[0].text) for ex in examples]


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_gives_identical_examples_and_another_seed_differs(method: str) -> None:
    passages = _random_passages(60)
    a, stats_a = make_pseudo_examples(passages, PseudoQueryConfig(method=method, seed=3))
    b, stats_b = make_pseudo_examples(passages, PseudoQueryConfig(method=method, seed=3))
    c, _ = make_pseudo_examples(passages, PseudoQueryConfig(method=method, seed=4))
    assert a and a == b and stats_a == stats_b
    assert _key(a) != _key(c)


@pytest.mark.parametrize("method", METHODS)
def test_a_passage_example_does_not_depend_on_the_other_passages(method: str) -> None:
    passages = _random_passages(40)
    config = PseudoQueryConfig(method=method, seed=7)
    together = {ex.qid: ex for ex in make_pseudo_examples(passages, config)[0]}
    reordered = {ex.qid: ex for ex in make_pseudo_examples(passages[::-1][:25], config)[0]}
    assert reordered and all(together[qid] == ex for qid, ex in reordered.items())


@pytest.mark.parametrize("method", (*METHODS, "title"))
def test_query_never_occurs_inside_its_own_positive(method: str) -> None:
    passages = _random_passages(400, seed=11)
    config = PseudoQueryConfig(method=method, seed=5, min_passage_words=8, min_query_words=2,
                               min_positive_words=2)
    examples, stats = make_pseudo_examples(passages, config)
    assert len(examples) > 200
    by_pid = {p.pid: p for p in passages}
    for ex in examples:
        (positive,) = ex.positives
        assert _norm(ex.question) not in _norm(positive.text)
        assert ex.question.strip() and positive.text.strip()
        assert positive.pid == ex.qid.split(":", 1)[1]
        assert positive.title == ("" if method == "title" else by_pid[positive.pid].title)
        assert not ex.answers and not ex.hard_negatives
    # A passage made of one sentence said twice cannot give an ICT query that is not in its positive.
    if method == "ict":
        assert stats.skipped.get(QUERY_IN_POSITIVE, 0) > 0


def test_repeated_sentence_is_skipped_not_left_in_the_positive() -> None:
    text = "Gene expression rose sharply after treatment in mice. Gene expression rose sharply after treatment in mice."
    examples, stats = make_pseudo_examples([Passage("r", "", text)],
                                           PseudoQueryConfig(min_passage_words=4, min_positive_words=2))
    assert examples == [] and stats.skipped == {QUERY_IN_POSITIVE: 1}


def test_ict_positive_is_the_passage_minus_the_query_sentence() -> None:
    sentences = ["Dr. Smith measured 3.5 kg of protein in the U.S. lab.",
                 "The receptor binds the ligand with high affinity (n = 7).",
                 "Expression levels rose sharply after treatment, e.g. in mice."]
    text = "  ".join(sentences)                        # NQ passages have double spaces; they stay
    passage = Passage("p1", "Protein", text)
    chosen = Counter()
    for seed in range(30):
        (ex,), _ = make_pseudo_examples([passage], PseudoQueryConfig(seed=seed, min_passage_words=10,
                                                                      min_positive_words=4))
        i = sentences.index(ex.question)
        chosen[i] += 1
        assert ex.positives[0].text == "  ".join(s for j, s in enumerate(sentences) if j != i)
        assert ex.positives[0] == Passage("p1", "Protein", ex.positives[0].text)
    assert set(chosen) == {0, 1, 2}                    # every sentence can be the query


def test_long_sentence_query_is_truncated_to_max_query_words() -> None:
    long = " ".join(f"w{i}" for i in range(30)) + "."
    text = f"{long} Short second sentence has words. {long.replace('w', 'V')}"
    lengths = set()
    for seed in range(20):
        (ex,), _ = make_pseudo_examples([Passage("p", "", text)],
                                        PseudoQueryConfig(seed=seed, max_query_words=10, min_query_words=5))
        lengths.add(len(ex.question.split()))
        assert ex.question.split() == text.split()[:10] or ex.question == "Short second sentence has words." \
            or ex.question.split() == text.split()[-30:-20]
    assert lengths == {5, 10}


def test_single_sentence_passage_is_split_or_skipped() -> None:
    words = [f"word{i}" for i in range(20)]
    passage = Passage("s", "One", " ".join(words) + ".")
    (ex,), stats = make_pseudo_examples([passage], PseudoQueryConfig(min_query_words=4, max_query_words=8))
    assert stats.single_sentence_splits == 1 and stats.skipped == {}
    query, positive, all_words = ex.question.split(), ex.positives[0].text.split(), passage.text.split()
    assert 4 <= len(query) <= 8
    start = all_words.index(query[0])
    assert all_words[start:start + len(query)] == query                        # a contiguous run
    assert positive == all_words[:start] + all_words[start + len(query):]      # and the rest, in order
    skipped, stats = make_pseudo_examples([passage], PseudoQueryConfig(single_sentence="skip"))
    assert skipped == [] and stats.skipped == {SINGLE_SENTENCE: 1}


def test_too_short_and_duplicate_passages_are_skipped_and_counted() -> None:
    good = Passage("g", "", " ".join(f"w{i}" for i in range(20)) + ". And a second sentence here now.")
    passages = [Passage("a", "", "Too short. Really."), good, Passage("b", "", "   "), good]
    for method in METHODS:
        examples, stats = make_pseudo_examples(passages, PseudoQueryConfig(method=method))
        assert [ex.qid for ex in examples] == [f"{method}:g"]
        assert stats.skipped == {TOO_SHORT: 2, DUPLICATE_PID: 1}
        assert stats.total_skipped == 3 and stats.examples == 1 and stats.passages == stats.examined == 4


@pytest.mark.parametrize(("lo", "hi", "max_q"), [(0.1, 0.5, 64), (0.2, 0.3, 64), (0.25, 0.25, 64), (0.1, 0.5, 12)])
def test_crop_lengths_lie_in_the_ratio_range_and_the_crops_are_disjoint(lo: float, hi: float, max_q: int) -> None:
    rng = np.random.default_rng(2)
    passages = [Passage(f"c{i}", "", " ".join(f"t{i}_{j}" for j in range(int(rng.integers(16, 120)))))
                for i in range(150)]
    config = PseudoQueryConfig(method="crop", crop_min_ratio=lo, crop_max_ratio=hi, max_query_words=max_q,
                               min_query_words=1, min_positive_words=1)
    examples, stats = make_pseudo_examples(passages, config)
    lengths = {p.pid: len(p.text.split()) for p in passages}
    # A passage is skipped only when no whole number of words lies in the ratio range (0.25 of 17).
    fits = {pid for pid, n in lengths.items() if math.ceil(lo * n - 1e-9) <= math.floor(hi * n + 1e-9)}
    assert {ex.positives[0].pid for ex in examples} == fits and len(fits) > 30
    assert stats.skipped == ({NO_QUERY: len(passages) - len(fits)} if len(fits) < len(passages) else {})
    for ex in examples:
        n = lengths[ex.positives[0].pid]
        q, pos = ex.question.split(), ex.positives[0].text.split()
        assert lo * n - 1e-9 <= len(pos) <= hi * n + 1e-9
        assert len(q) <= max_q and (len(q) == max_q or lo * n - 1e-9 <= len(q) <= hi * n + 1e-9)
        assert not set(q) & set(pos)                     # words are unique, so disjoint spans share none
        # each crop is a contiguous run of the passage
        text = f" {' '.join(f't{ex.positives[0].pid[1:]}_{j}' for j in range(n))} "
        assert f" {ex.question} " in text and f" {ex.positives[0].text} " in text
    assert crop_bounds(30, PseudoQueryConfig(crop_min_ratio=0.1, min_query_words=1, min_positive_words=1)) == ((3, 15), (3, 15))
    # long passage: max_query_words wins over crop_min_ratio for the query only
    assert crop_bounds(1000, PseudoQueryConfig(max_query_words=64)) == ((64, 64), (100, 500))


@pytest.mark.parametrize("method", (*METHODS, "title"))
def test_examples_batch_as_they_are(method: str) -> None:
    passages = _random_passages(120, seed=4)
    examples, _ = make_pseudo_examples(passages, PseudoQueryConfig(method=method, min_passage_words=8,
                                                                    min_query_words=2, min_positive_words=2))
    assert len(examples) > 60
    batches = make_batches(examples, batch_size=8, rng=np.random.default_rng(0), num_hard_negatives=1,
                           filler=passages)
    assert sorted(q for b in batches for q in b.qids) == sorted(ex.qid for ex in examples)
    assert len({ex.qid for ex in examples}) == len(examples)
    by_qid = {ex.qid: ex for ex in examples}
    for b in batches:
        for i, qid in enumerate(b.qids):
            assert b.passages[2 * i] == by_qid[qid].positives[0]
            # the untouched source passage, which contains the query, is never its negative
            assert b.passages[2 * i + 1].pid != by_qid[qid].positives[0].pid


def test_title_is_the_query_and_the_untitled_text_the_positive() -> None:
    passages = [
        Passage("a", "Aspirin lowers the risk of stroke.", "We followed 900 patients for ten years.", doc_id="d1",
                metadata={"year": 2001}),
        Passage("b", "", "A passage without a title says nothing as a query here."),
        Passage("c", "Statins and memory", "Patients on statins and memory tests were followed for a year."),
        Passage("d", "One two three four five six seven", "Text long enough to be a positive at all, surely."),
        Passage("e", "Aspirin lowers the risk of  STROKE.", "A second chunk of the same document, with its title."),
    ]
    config = PseudoQueryConfig(method="title", min_passage_words=4, min_query_words=3, max_query_words=5,
                               min_positive_words=4)
    examples, stats = make_pseudo_examples(passages, config)
    assert [ex.qid for ex in examples] == ["title:a", "title:d"]
    a, d = examples
    assert a.question == "Aspirin lowers the risk of"                        # max_query_words
    assert a.positives == (Passage("a", "", passages[0].text, doc_id="d1", metadata={"year": 2001}),)
    assert d.question == "One two three four five"
    # b has no title; c's title is inside its text; e repeats a's title (case and spaces aside)
    assert stats.skipped == {NO_TITLE: 1, QUERY_IN_POSITIVE: 1, DUPLICATE_TITLE: 1}
    # deterministic and seed-free: the title is the title
    assert make_pseudo_examples(passages, replace(config, seed=9))[0] == examples


def test_max_examples_samples_deterministically() -> None:
    passages = _random_passages(100, seed=9)
    config = PseudoQueryConfig(max_examples=10, seed=1, min_passage_words=8, min_positive_words=2)
    a, stats = make_pseudo_examples(passages, config)
    b, _ = make_pseudo_examples(passages, config)
    c, _ = make_pseudo_examples(passages, replace(config, seed=2))
    assert len(a) == 10 and a == b and {e.qid for e in a} != {e.qid for e in c}
    assert stats.examined < 100 and stats.examined == 10 + stats.total_skipped
    order = [int(ex.qid.split(":p")[1]) for ex in a]
    assert order == sorted(order) and order != list(range(10))   # input order, but not just the first ten


@pytest.mark.parametrize("bad", [
    {"method": "cloze"}, {"single_sentence": "drop"}, {"seed": -1}, {"seed": 1.5}, {"min_passage_words": 0},
    {"min_query_words": 0}, {"min_query_words": 10, "max_query_words": 5}, {"min_positive_words": True},
    {"crop_min_ratio": 0.0}, {"crop_min_ratio": 0.4, "crop_max_ratio": 0.3}, {"crop_max_ratio": 0.6},
    {"crop_max_ratio": float("nan")}, {"max_examples": 0}, {"max_examples": "5"},
])
def test_bad_config_raises(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        PseudoQueryConfig(**bad)
