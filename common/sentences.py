"""Sentence boundaries: a small, dependency-free splitter for English-like text.

Used where a passage is cut at sentences: pseudo queries (:mod:`retriever.pseudo_queries`, ICT) and
sentence windows of documents (:mod:`indexer.chunking`, ``--chunk sentences:N``).
"""
from __future__ import annotations

import re

# A sentence may end at a run of terminal punctuation, optionally followed by closing quotes or
# brackets, when whitespace follows. Requiring the whitespace keeps decimals ("3.5"), versions and
# URLs whole.
_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s)")
# The word before the boundary, from the last whitespace on.
_TRAILING_WORD = re.compile(r"\S*\Z")
# A single initial ("J.", "A.") or dotted letters ("U.S.", "e.g.", "i.e.", "Ph.D."); not any short
# word, which would keep "... we rely on. The next" whole.
_INITIALS = re.compile(r"[A-Za-z]\.|(?:[A-Za-z]{1,2}\.){2,}")
# Abbreviations usually followed by a capitalised word or a number ("Dr. Smith", "Fig. 3",
# "et al. (2019)"), matched case-sensitively ("No. 5" but not "... said no. The"). Ones usually
# followed by a lower-case word ("Inc. is") need no entry: a lower-case continuation never splits.
# "etc." is left out on purpose: it often ends a sentence.
_ABBREVIATIONS = frozenset({
    "Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "Sr.", "Jr.", "St.", "Mt.", "Ft.", "Gen.", "Col.", "Capt.",
    "Lt.", "Sgt.", "Rev.", "Hon.", "Gov.", "Sen.", "Rep.", "Pres.", "vs.", "cf.", "al.", "approx.",
    "ca.", "viz.", "Fig.", "Figs.", "fig.", "figs.", "Eq.", "Eqs.", "eq.", "Ref.", "Refs.", "ref.",
    "No.", "Nos.", "Vol.", "vol.", "pp.", "Jan.", "Feb.", "Mar.", "Apr.", "Jun.", "Jul.", "Aug.",
    "Sep.", "Sept.", "Oct.", "Nov.", "Dec.",
})


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the sentences of ``text``, stripped of surrounding space
    (``text[start:end]`` is the sentence; the rule is :func:`split_sentences`'s)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        end = m.end()
        rest = text[end:].lstrip()
        # A lower-case continuation ("approx. five", "Inc. is") means the period was not an end.
        if not rest or rest[0].islower():
            continue
        if "!" not in m.group() and "?" not in m.group():
            word = _TRAILING_WORD.search(text, start, m.start()).group().lstrip("\"'(\u201c\u2018[") + "."
            if word in _ABBREVIATIONS or _INITIALS.fullmatch(word):
                continue
        if text[start:end].strip():
            spans.append(_strip_span(text, start, end))
        start = end
    if text[start:].strip():
        spans.append(_strip_span(text, start, len(text)))
    return spans


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, each an exact (stripped) substring of it.

    A modest, dependency-free rule: a sentence ends at ``.``, ``!`` or ``?`` (plus any closing quotes
    or brackets) followed by whitespace, unless the next word starts with a lower-case letter or the
    word ending in ``.`` is a known abbreviation ("Dr.", "Fig.", "et al.", "vs.") or dotted initials /
    an acronym ("J.", "U.S.", "e.g.", "i.e."). Decimals ("3.5", "0.016") never split since no
    whitespace follows their period. It under-splits rather than over-splits: a sentence that really
    ends in "U.S." or an initial is joined to the next one. Scripts without case (Georgian, CJK) split
    at every terminal mark followed by whitespace.
    """
    return [text[s:e] for s, e in sentence_spans(text)]
