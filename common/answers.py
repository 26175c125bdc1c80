"""DPR-style answer match: does a retrieved passage contain one of the gold answer strings?

Normalisation follows DPR's ``_normalize_answer`` (lowercase, no punctuation, no articles, single
spaces) on NFD-normalised text. Punctuation becomes a space rather than vanishing, because DPR
matches *tokens* (its tokenizer splits ``1990–1995`` and ``Smith's`` at the punctuation), and joining
the pieces would make ``1990`` miss ``1990–1995``. A match is a contiguous run of whole tokens, so
``cat`` does not match ``category``.
"""
from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

_ARTICLES = frozenset({"a", "an", "the"})


class _PunctuationToSpace(dict):
    """A ``str.translate`` table, filled per character on first sight: Unicode punctuation (P*) and
    symbols (S*: $, +, ©, ...) become spaces -- ``string.punctuation`` only knows ASCII."""

    def __missing__(self, code: int) -> str | int:
        value = " " if unicodedata.category(chr(code))[0] in "PS" else code     # None would delete it
        self[code] = value
        return value


_TO_SPACE = _PunctuationToSpace()


def normalize_answer(text: str) -> str:
    """NFD, lowercase, punctuation to spaces, drop articles ``a/an/the``, collapse whitespace."""
    text = unicodedata.normalize("NFD", text).lower().translate(_TO_SPACE)
    # Whole tokens only: a regex \b would also cut the "a" off an NFD "à" (a + combining grave).
    return " ".join(t for t in text.split() if t not in _ARTICLES)


@functools.lru_cache(maxsize=1 << 16)
def _tokens(text: str) -> tuple[str, ...]:
    # Cached: a run repeats the same knowledge-base passages across many queries.
    return tuple(normalize_answer(text).split())


def _contains(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    first = needle[0]
    return any(haystack[i] == first and haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def _needles(answers: Iterable[str]) -> list[tuple[str, ...]]:
    return [needle for needle in map(_tokens, answers) if needle]


def has_answer(passage_text: str, answers: Iterable[str]) -> bool:
    """True if any answer, normalised, occurs as a whole-token span of the normalised passage.

    Answers that normalise to nothing (``"the"``, ``"..."``) never match.
    """
    tokens = _tokens(passage_text)
    return any(_contains(tokens, needle) for needle in _needles(answers))


def answer_matches(answers: Mapping[str, Sequence[str]],
                   texts: Mapping[str, Sequence[str]]) -> dict[str, list[bool]]:
    """Per query with at least one answer: ``has_answer`` for each retrieved text, in rank order.

    A query missing from ``texts`` retrieved nothing (an empty list).
    """
    out = {}
    for qid, ans in answers.items():
        needles = _needles(ans)
        if needles:
            out[qid] = [any(_contains(_tokens(text), n) for n in needles) for text in texts.get(qid, [])]
    return out


def answer_hits_at_k(matches: Mapping[str, Sequence[bool]], k: int) -> dict[str, float]:
    """Per query: 1.0 if a passage in the top k contains an answer (DPR's top-k accuracy)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return {qid: float(any(m[:k])) for qid, m in matches.items()}


def answer_recall_at_k(answers: Mapping[str, Sequence[str]], texts: Mapping[str, Sequence[str]], k: int) -> float:
    """Share of queries (with answers) that have an answer-bearing passage in the top k."""
    hits = answer_hits_at_k(answer_matches(answers, texts), k)
    return sum(hits.values()) / len(hits) if hits else 0.0
