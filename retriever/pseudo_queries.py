"""Pseudo training examples from a knowledge base with no labels (``dpr train --unsupervised --kb``).

Each passage of the knowledge base yields at most one :class:`~common.data.Example` whose question
is made from the passage itself, so a dual encoder can be adapted to a corpus without any questions:

``ict`` -- Inverse Cloze Task (Lee, Chang and Toutanova, "Latent Retrieval for Weakly Supervised Open
    Domain Question Answering", ACL 2019, the ORQA pre-training). One sentence of the passage, drawn
    uniformly among those long enough, is the query; the positive is the passage with that sentence
    removed, under the passage's title. ORQA keeps the sentence in the positive 10% of the time so the
    model also learns lexical matching; that is deliberately not offered here, because these examples
    promise that a query never occurs inside its own positive.

``crop`` -- independent cropping (Izacard et al., "Unsupervised Dense Information Retrieval with
    Contrastive Learning", the Contriever paper, 2021). Two word-level spans of the same passage, each
    ``crop_min_ratio``..``crop_max_ratio`` of its words long, are the query and the positive. Contriever
    lets the spans overlap; here they are always *disjoint* word ranges (hence ``crop_max_ratio <=
    0.5``, so two crops always fit), for the same promise.

``title`` -- the passage's title is the query and its text, under no title, the positive: the pairs
    that title/abstract corpora (S2ORC, the SPECTER data) give sentence encoders, made from the
    knowledge base itself. Nothing is drawn, so the seed plays no part. A passage whose title has
    fewer than ``min_query_words`` words is skipped as ``no_title``; a title repeated (case and spacing
    aside) by an earlier passage -- another chunk of the same document -- as ``duplicate_title``, so
    one document's chunks are never in-batch negatives for the same question.

Rules common to all methods:

- One example per passage, and the positive keeps the passage's ``pid`` (and ``doc_id``). Batching
  (:func:`retriever.batching.make_batches`) and mining (:mod:`retriever.mining`) treat a passage with
  the gold ``pid`` as the gold passage, so the untouched knowledge-base passage -- which contains the
  query verbatim -- is never used as a negative for its own query. A fresh pid would let it be mined
  as a "hard negative". A repeated ``pid`` in the input is skipped after its first occurrence.
- The guarantee: the query, compared case-insensitively with whitespace collapsed, is never a
  substring of its positive's text (a title found in its own text is skipped). Every candidate is
  checked; ICT tries the other sentences and ``crop`` redraws (up to ``_MAX_DRAWS`` times) before
  the passage is skipped as ``query_in_positive`` (a repeated sentence or phrase can defeat removal).
- A passage of one sentence cannot lose its only sentence under ICT. With ``single_sentence="split"``
  (the default) a contiguous run of its words becomes the query and the positive is the remaining
  words (at least half of them); with ``"skip"`` the passage is skipped. ``crop`` does not look at
  sentences.
- Passages of fewer than ``min_passage_words`` words are skipped as ``too_short``. Queries have
  ``min_query_words``..``max_query_words`` words (a longer ICT sentence keeps its first
  ``max_query_words`` words); positives have at least ``min_positive_words``.
- Deterministic: each passage draws from its own generator seeded by ``(seed, sha1(pid))``, so its
  example depends only on the seed, the options and that passage -- not on its position or on the
  other passages. ``max_examples`` samples passages with a separate generator seeded by ``seed``
  alone (that choice does depend on the input order). Streams are numpy's ``PCG64``: identical for a
  given numpy version.

Sentences are found by :func:`common.sentences.split_sentences`, a small regex splitter (see its docstring).
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from common.data import Example, Passage, load_corpus
from common.sentences import sentence_spans

logger = logging.getLogger(__name__)

METHODS = ("ict", "crop", "title")
SINGLE_SENTENCE_RULES = ("split", "skip")

# Redraws of a crop (or of a single-sentence split) that left the query inside its positive; only a
# passage built of repeated phrases needs more than one.
_MAX_DRAWS = 10
# Float slack for the ratio bounds: 0.1 * 30 is 3.0000000000000004, which must not round up to 4.
_EPS = 1e-9
# Mixed into the sampling seed so the passage sample is not correlated with any per-passage stream.
_SAMPLE_SALT = 0x5EED

# Skip reasons, as counted in PseudoQueryStats.skipped.
TOO_SHORT = "too_short"
SINGLE_SENTENCE = "single_sentence"
NO_QUERY = "no_query"
SHORT_POSITIVE = "short_positive"
QUERY_IN_POSITIVE = "query_in_positive"
DUPLICATE_PID = "duplicate_pid"
NO_TITLE = "no_title"
DUPLICATE_TITLE = "duplicate_title"


@dataclass(frozen=True)
class PseudoQueryConfig:
    """Options of :func:`make_pseudo_examples`; invalid values raise ``ValueError`` on construction."""

    method: Literal["ict", "crop", "title"] = "ict"
    seed: int = 0
    min_passage_words: int = 16
    min_query_words: int = 4
    max_query_words: int = 64
    min_positive_words: int = 8
    crop_min_ratio: float = 0.1
    crop_max_ratio: float = 0.5
    single_sentence: Literal["split", "skip"] = "split"
    max_examples: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.single_sentence not in SINGLE_SENTENCE_RULES:
            raise ValueError(f"single_sentence must be one of {SINGLE_SENTENCE_RULES}, got {self.single_sentence!r}")
        for name in ("seed", "min_passage_words", "min_query_words", "max_query_words", "min_positive_words"):
            value = getattr(self, name)
            # bool is an int subclass; True as a word count is a mistake, not a 1.
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        for name in ("min_passage_words", "min_query_words", "min_positive_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_query_words < self.min_query_words:
            raise ValueError(f"max_query_words ({self.max_query_words}) must be >= min_query_words "
                             f"({self.min_query_words})")
        for name in ("crop_min_ratio", "crop_max_ratio"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not 0 < self.crop_min_ratio <= self.crop_max_ratio <= 0.5:
            raise ValueError(f"need 0 < crop_min_ratio <= crop_max_ratio <= 0.5 (two disjoint crops must fit "
                             f"in a passage), got {self.crop_min_ratio} and {self.crop_max_ratio}")
        if self.max_examples is not None and (not isinstance(self.max_examples, int)
                                              or isinstance(self.max_examples, bool) or self.max_examples < 1):
            raise ValueError(f"max_examples must be None or an integer >= 1, got {self.max_examples!r}")


@dataclass(frozen=True)
class PseudoQueryStats:
    """What :func:`make_pseudo_examples` did: ``examined`` passages (fewer than ``passages`` when
    ``max_examples`` stopped it early), ``examples`` made, ``skipped`` counts by reason, and
    ``single_sentence_splits``, the ICT examples made by the single-sentence fallback."""

    passages: int
    examined: int
    examples: int
    skipped: Mapping[str, int] = field(default_factory=dict)
    single_sentence_splits: int = 0

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())


# ----------------------------------------------------------------------------- generation


def _normal(text: str) -> str:
    return " ".join(text.split()).lower()


def _query_inside(query: str, positive: str) -> bool:
    return _normal(query) in _normal(positive)


def _passage_rng(seed: int, pid: str) -> np.random.Generator:
    digest = hashlib.sha1(pid.encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:16], "little")])


def _positive(p: Passage, text: str) -> Passage:
    # start/end would point into the original text, which this one no longer is.
    return Passage(pid=p.pid, title=p.title, text=text, doc_id=p.doc_id, metadata=p.metadata)


def _ict(p: Passage, spans: list[tuple[int, int]], cfg: PseudoQueryConfig,
         rng: np.random.Generator) -> tuple[str, str] | str:
    """``(query, positive_text)`` or the skip reason; ``spans`` are the passage's sentences."""
    if len(spans) < 2:
        if cfg.single_sentence == "skip":
            return SINGLE_SENTENCE
        return _split_words(p.text.split(), cfg, rng)
    reason = NO_QUERY
    for i in rng.permutation(len(spans)):
        s, e = spans[int(i)]
        words = p.text[s:e].split()
        if len(words) < cfg.min_query_words:
            continue
        query = " ".join(words[:cfg.max_query_words])
        # The gap that preceded the sentence is kept, so the rest reads exactly as in the passage.
        before, after = p.text[:s], p.text[e:].lstrip()
        if not before.strip():
            positive = after
        elif not after:
            positive = before.rstrip()
        else:
            positive = before + after
        if len(positive.split()) < cfg.min_positive_words:
            reason = SHORT_POSITIVE if reason == NO_QUERY else reason
            continue
        if _query_inside(query, positive):
            reason = QUERY_IN_POSITIVE
            continue
        return query, positive
    return reason


def _split_words(words: list[str], cfg: PseudoQueryConfig, rng: np.random.Generator) -> tuple[str, str] | str:
    """Single-sentence ICT: a contiguous run of words is the query, the rest (at least half) the positive."""
    n = len(words)
    hi = min(cfg.max_query_words, n // 2, n - cfg.min_positive_words)
    if hi < cfg.min_query_words:
        return NO_QUERY if n // 2 < cfg.min_query_words else SHORT_POSITIVE
    for _ in range(_MAX_DRAWS):
        length = int(rng.integers(cfg.min_query_words, hi + 1))
        start = int(rng.integers(0, n - length + 1))
        query = " ".join(words[start:start + length])
        positive = " ".join(words[:start] + words[start + length:])
        if not _query_inside(query, positive):
            return query, positive
    return QUERY_IN_POSITIVE


def crop_bounds(n_words: int, cfg: PseudoQueryConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((query_lo, query_hi), (positive_lo, positive_hi))`` word counts of the crops of a passage of
    ``n_words`` words; a range with ``lo > hi`` means no valid crop. Both lie in the ratio range; the
    query's is also capped at ``max_query_words``, which wins over ``crop_min_ratio`` on long passages."""
    lo = max(1, math.ceil(cfg.crop_min_ratio * n_words - _EPS))
    hi = math.floor(cfg.crop_max_ratio * n_words + _EPS)
    q_lo, q_hi = max(lo, cfg.min_query_words), min(hi, cfg.max_query_words)
    if lo > cfg.max_query_words:
        q_lo = q_hi
    return (q_lo, q_hi), (max(lo, cfg.min_positive_words), hi)


def _crop(p: Passage, cfg: PseudoQueryConfig, rng: np.random.Generator) -> tuple[str, str] | str:
    words = p.text.split()
    n = len(words)
    (q_lo, q_hi), (p_lo, p_hi) = crop_bounds(n, cfg)
    if q_lo > q_hi:
        return NO_QUERY
    if p_lo > p_hi:
        return SHORT_POSITIVE
    for _ in range(_MAX_DRAWS):
        lq = int(rng.integers(q_lo, q_hi + 1))
        lp = int(rng.integers(p_lo, p_hi + 1))
        # crop_max_ratio <= 0.5 makes lq + lp <= n: the free words are split into three gaps
        # (before, between, after) and the query goes first or second at random.
        free = n - lq - lp
        g1, g2 = sorted(int(x) for x in rng.integers(0, free + 1, size=2))
        query_first = bool(rng.integers(2))
        first, second = (lq, lp) if query_first else (lp, lq)
        a = g1
        b = a + first + (g2 - g1)
        span_a, span_b = words[a:a + first], words[b:b + second]
        query, positive = (span_a, span_b) if query_first else (span_b, span_a)
        query_text, positive_text = " ".join(query), " ".join(positive)
        if not _query_inside(query_text, positive_text):
            return query_text, positive_text
    return QUERY_IN_POSITIVE


def _title(p: Passage, cfg: PseudoQueryConfig) -> tuple[str, str] | str:
    words = p.title.split()
    if len(words) < cfg.min_query_words:
        return NO_TITLE
    query = " ".join(words[:cfg.max_query_words])
    if len(p.text.split()) < cfg.min_positive_words:
        return SHORT_POSITIVE
    if _query_inside(query, p.text):
        return QUERY_IN_POSITIVE
    return query, p.text


def _make_one(p: Passage, cfg: PseudoQueryConfig) -> tuple[Example, bool] | str:
    """The example of one passage and whether it came from the single-sentence split, or a skip reason."""
    if len(p.text.split()) < cfg.min_passage_words:
        return TOO_SHORT
    if cfg.method == "title":
        made = _title(p, cfg)
        if isinstance(made, str):
            return made
        # The positive is the text alone: under its own title it would hold the query verbatim.
        positive = Passage(pid=p.pid, title="", text=made[1], doc_id=p.doc_id, metadata=p.metadata)
        return Example(qid=f"title:{p.pid}", question=made[0], positives=(positive,)), False
    rng = _passage_rng(cfg.seed, p.pid)
    if cfg.method == "ict":
        spans = sentence_spans(p.text)
        single = len(spans) < 2
        made = _ict(p, spans, cfg, rng)
    else:
        single = False
        made = _crop(p, cfg, rng)
    if isinstance(made, str):
        return made
    query, positive = made
    return Example(qid=f"{cfg.method}:{p.pid}", question=query, positives=(_positive(p, positive),)), single


def make_pseudo_examples(passages: Sequence[Passage],
                         config: PseudoQueryConfig | None = None) -> tuple[list[Example], PseudoQueryStats]:
    """Pseudo examples (``qid = "<method>:<pid>"``, one positive, no answers, no hard negatives) from
    ``passages``, in input order, with counts of what was skipped and why.

    With ``max_examples``, passages are visited in a seeded random order until that many examples are
    made (so a large knowledge base is not processed whole); the output stays in input order.
    """
    cfg = config if config is not None else PseudoQueryConfig()
    order: Sequence[int] = range(len(passages))
    if cfg.max_examples is not None and cfg.max_examples < len(passages):
        order = np.random.default_rng([cfg.seed, _SAMPLE_SALT]).permutation(len(passages)).tolist()
    made: dict[int, Example] = {}
    skipped: Counter[str] = Counter()
    seen: set[str] = set()
    titles: set[str] = set()
    examined = splits = 0
    for i in order:
        if cfg.max_examples is not None and len(made) >= cfg.max_examples:
            break
        examined += 1
        p = passages[i]
        if p.pid in seen:
            skipped[DUPLICATE_PID] += 1
            continue
        seen.add(p.pid)
        # Chunks of one document share its title: one query per title, or the chunks become each
        # other's in-batch negatives for the same question.
        title_key = _normal(p.title) if cfg.method == "title" else ""
        if title_key and title_key in titles:
            skipped[DUPLICATE_TITLE] += 1
            continue
        result = _make_one(p, cfg)
        if isinstance(result, str):
            skipped[result] += 1
            continue
        made[i], single = result
        splits += single
        if title_key:
            titles.add(title_key)
    examples = [made[i] for i in sorted(made)]
    stats = PseudoQueryStats(passages=len(passages), examined=examined, examples=len(examples),
                             skipped=dict(sorted(skipped.items())), single_sentence_splits=splits)
    logger.info("%s pseudo queries: %d examples from %d of %d passages; skipped %s; %d single-sentence splits",
                cfg.method, stats.examples, examined, len(passages), stats.skipped or "none", splits)
    return examples, stats


def pseudo_examples_from_kb(paths: str | Path | Sequence[str | Path],
                            config: PseudoQueryConfig | None = None) -> tuple[list[Example], PseudoQueryStats]:
    """:func:`make_pseudo_examples` over a knowledge base read by :func:`common.data.load_corpus`."""
    return make_pseudo_examples(load_corpus(paths), config)
