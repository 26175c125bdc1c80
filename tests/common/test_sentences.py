"""The sentence splitter behind ICT pseudo queries and ``--chunk sentences:N``."""
from __future__ import annotations

import pytest

from common.sentences import sentence_spans, split_sentences


@pytest.mark.parametrize(("text", "expected"), [
    ("Dr. Smith went to Washington. He stayed.", ["Dr. Smith went to Washington.", "He stayed."]),
    ("It grew 3.5 times in 2010. Then it fell to 0.016 p.", ["It grew 3.5 times in 2010.", "Then it fell to 0.016 p."]),
    ("Fruits, e.g. Apples, are sweet. Nuts are not!", ["Fruits, e.g. Apples, are sweet.", "Nuts are not!"]),
    ("He moved to the U.S. Army base. Then left.", ["He moved to the U.S. Army base.", "Then left."]),
    ("Smith et al. (2019) agree. See Fig. 2 for details.", ["Smith et al. (2019) agree.", "See Fig. 2 for details."]),
    ("It cost approx. five dollars. Was it? Yes.", ["It cost approx. five dollars.", "Was it?", "Yes."]),
    ('He said "Stop." Then he left (quickly.) And so.', ['He said "Stop."', "Then he left (quickly.)", "And so."]),
    ("Work by J. R. R. Tolkien. We rely on. Answers vary.", ["Work by J. R. R. Tolkien.", "We rely on.", "Answers vary."]),
    ("Apple Inc. is big. It grew.", ["Apple Inc. is big.", "It grew."]),
    ("Answer: no. The end. Ref. 3 says so.", ["Answer: no.", "The end.", "Ref. 3 says so."]),
    ("No trailing period here", ["No trailing period here"]),
    ("", []),
])
def test_sentence_splitter(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


@pytest.mark.parametrize("text", ["  Leading space. And a tail.  ", "One.\n\nTwo!  Three?", "x", "   "])
def test_spans_are_exact_stripped_substrings_in_order(text: str) -> None:
    spans = sentence_spans(text)
    assert [text[s:e] for s, e in spans] == split_sentences(text)
    assert all(text[s:e] == text[s:e].strip() and e > s for s, e in spans)
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))
