"""DPR-style answer normalisation and matching."""
from __future__ import annotations

import pytest

from common.answers import answer_hits_at_k, answer_matches, answer_recall_at_k, has_answer, normalize_answer


@pytest.mark.parametrize(("raw", "expected"), [
    ("The  Beatles!", "beatles"),                 # article, punctuation, extra space, case
    ("A Tale of Two Cities", "tale of two cities"),
    ("an  apple, a day", "apple day"),
    ("U.S. Navy", "u s navy"),                    # punctuation splits tokens, as DPR's tokenizer does
    ("1990–1995", "1990 1995"),                   # unicode en dash is punctuation too
    ("theatre", "theatre"),                       # "the" only as a whole word
])
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_unicode_forms_normalise_alike() -> None:
    composed, decomposed = "Caf\u00e9 Noir", "Cafe\u0301 Noir"
    assert composed != decomposed
    assert normalize_answer(composed) == normalize_answer(decomposed)
    assert has_answer(f"We met at the {decomposed}.", [composed])


def test_has_answer_matches_whole_token_spans() -> None:
    passage = "The band, founded in 1990–1995 by Smith's brother, played in the U.S. and Canada."
    assert has_answer(passage, ["1990"])
    assert has_answer(passage, ["Smith"])
    assert has_answer(passage, ["u.s."])
    assert has_answer(passage, ["nope", "the U.S. and Canada"])    # any answer, several tokens
    assert not has_answer(passage, ["Cana"])                       # a token prefix is not a match
    assert not has_answer(passage, ["Canada band"])                # tokens must be contiguous
    assert not has_answer(passage, ["the", "..."])                 # normalise to nothing: never a match
    assert not has_answer(passage, [])


def test_answer_recall_over_a_run_of_texts() -> None:
    answers = {"q1": ["Paris"], "q2": ["London"], "q3": [], "q4": ["Rome"]}
    texts = {"q1": ["no", "Paris, France"], "q2": ["london calling", "no"], "q3": ["x"]}
    matches = answer_matches(answers, texts)
    # q3 has no answer: left out; q4 is missing from the run: retrieved nothing
    assert matches == {"q1": [False, True], "q2": [True, False], "q4": []}
    assert answer_hits_at_k(matches, 1) == {"q1": 0.0, "q2": 1.0, "q4": 0.0}
    assert answer_recall_at_k(answers, texts, 1) == pytest.approx(1 / 3)    # q2 only
    assert answer_recall_at_k(answers, texts, 5) == pytest.approx(2 / 3)    # q1 and q2
