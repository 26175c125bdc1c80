"""Unsupervised adaptation (``dpr train --unsupervised --kb PATH``): train on pseudo queries made from
the knowledge base itself (:mod:`retriever.pseudo_queries`: titles, ICT or cropping), no labelled
questions.

- Sources: the knowledge base with repeated texts dropped (first id kept), so no passage is an exact
  copy of another example's source. Each pseudo example's positive is a *shortened* copy of its
  source passage under the source's ``pid``.
- Mining KB: the full source passages (never the shortened positives), minus validation gold. Mining
  and batching treat a passage with a positive's ``pid`` as gold, so the full source passage -- which
  holds the query verbatim -- is never a negative for its own query.
- Validation: ``--val`` questions ranked against the whole ``--kb`` (as with labelled training); or,
  without ``--val``, ``pseudo_val`` pseudo queries held out by seed, whose source passages make no
  training example. Their gold passage is the *full* source passage (by ``pid``, and by text for
  any copy of it in the KB), so :func:`retriever.validation.evaluate` ranks the KB and counts the
  source as the hit: Recall@k then says how often a passage is found from one of its own sentences
  (or spans), a proxy for picking the checkpoint, not a question-answering score.

Everything is a function of the config and the data, so a resumed run recomputes the same examples.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.data import DataError, Example, Passage
from retriever.pseudo_queries import PseudoQueryConfig, make_pseudo_examples
from retriever.train_config import AUTO_TITLE_SHARE, TrainConfig

logger = logging.getLogger(__name__)

# At most this share of the pseudo examples is held out for validation (a small KB keeps most to train on).
MAX_VAL_SHARE = 0.2
# The held-out draw's seed is [seed, 0, PSEUDO_VAL_STREAM]: apart from batching's [seed, epoch] and
# mining's [seed, epoch >= 1, 1].
PSEUDO_VAL_STREAM = 2


@dataclass(frozen=True)
class PseudoData:
    train: list[Example]
    val: list[Example] | None       # held-out pseudo queries, or None when --val gives the questions
    mining_kb: list[Passage]
    summary: dict[str, Any]         # for the train log


def unique_texts(kb: Sequence[Passage]) -> list[Passage]:
    """``kb`` without passages whose (stripped) text an earlier one already has."""
    seen: set[str] = set()
    out = []
    for p in kb:
        key = p.text.strip()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def hold_out(examples: Sequence[Example], sources: Sequence[Passage], n: int, seed: int,
             max_train: int | None = None) -> tuple[list[Example], list[Example]]:
    """``(train, val)``, both in input order: ``min(n, MAX_VAL_SHARE of them)`` examples drawn by ``seed``
    become validation queries whose positive is their full source passage; the next ``max_train``
    drawn (all the rest if None) train."""
    n_val = min(n, int(MAX_VAL_SHARE * len(examples)))
    if n_val < 1 or len(examples) - n_val < 2:
        raise DataError(f"{len(examples)} pseudo example(s) from the knowledge base: too few to hold out "
                        f"validation queries and train on 2 or more; give a larger --kb or --val questions")
    by_pid = {p.pid: p for p in sources}
    order = np.random.default_rng([seed, 0, PSEUDO_VAL_STREAM]).permutation(len(examples)).tolist()
    end = None if max_train is None else n_val + max_train
    val = [Example(qid=examples[i].qid, question=examples[i].question,
                   positives=(by_pid[examples[i].positives[0].pid],)) for i in sorted(order[:n_val])]
    return [examples[i] for i in sorted(order[n_val:end])], val


def pseudo_method(method: str, sources: Sequence[Passage]) -> str:
    """``method``, or for ``auto``: ``title`` when at least :data:`AUTO_TITLE_SHARE` of ``sources`` have a
    title long enough to be a query, else ``ict``."""
    if method != "auto":
        return method
    need = PseudoQueryConfig().min_query_words
    titled = sum(len(p.title.split()) >= need for p in sources)
    chosen = "title" if sources and titled >= AUTO_TITLE_SHARE * len(sources) else "ict"
    logger.info("--pseudo-method auto: %s (%d of %d passages have a title of %d words or more)",
                chosen, titled, len(sources), need)
    return chosen


def pseudo_data(config: TrainConfig, kb: Sequence[Passage], val: Sequence[Example] | None) -> PseudoData:
    """Pseudo training examples from ``kb`` and, when ``val`` is None, held-out validation queries."""
    sources = unique_texts(kb)
    method = pseudo_method(config.pseudo_method, sources)
    held = 0 if val is not None else config.pseudo_val
    cap = config.pseudo_max_examples + held if config.pseudo_max_examples else None
    examples, stats = make_pseudo_examples(sources, PseudoQueryConfig(method=method, seed=config.seed,
                                                                      max_examples=cap))
    held_out = None
    if val is None:
        train, held_out = hold_out(examples, sources, held, config.seed, config.pseudo_max_examples or None)
        logger.warning("no --val: the checkpoint is picked on %d held-out %s pseudo queries ranked against the "
                       "whole knowledge base (a passage found from its own text, not questions answered)",
                       len(held_out), method)
    else:
        train = examples
    if len(train) < 2:
        raise DataError(f"{', '.join(config.kb)}: {len(train)} pseudo training example(s) (skipped: "
                        f"{stats.skipped or 'none'}); in-batch negatives need at least 2")
    val_gold = {key for ex in (held_out if val is None else val) for p in ex.positives for key in (p.pid, p.text)}
    mining_kb = [p for p in sources if p.pid not in val_gold and p.text not in val_gold]
    summary = {"method": method, "kb_passages": len(kb), "unique_texts": len(sources),
               "examined": stats.examined, "examples": stats.examples, "skipped": dict(stats.skipped),
               "single_sentence_splits": stats.single_sentence_splits, "max_examples": cap,
               "train": len(train), "validation": "--val questions" if held_out is None else "held-out pseudo queries",
               "held_out": len(held_out or ())}
    return PseudoData(train, held_out, mining_kb, summary)
