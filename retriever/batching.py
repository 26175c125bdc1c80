"""Training batches for in-batch negatives, with no passage twice and no gold used as a negative.

A batch lays out passages as ``[pos_1, neg_11 .. neg_1H, pos_2, neg_21 ..]`` (the grouped layout that
:func:`retriever.loss.contrastive_loss` expects). Every passage in a batch is a negative for every
other query, so a repeated passage, or one query's gold passage showing up as another query's
passage, teaches the model to push a correct answer down. Examples that would cause that are
deferred to a later batch; a hard negative that would cause it is replaced by the next candidate.
When distilling, each batch also carries the teacher's score of every passage it placed, looked up
by passage id, so a replaced negative brings its own score.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from common.data import Example, Passage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """``len(passages) == len(questions) * (1 + num_hard_negatives)``, grouped per question."""

    qids: tuple[str, ...]
    questions: tuple[str, ...]
    passages: tuple[Passage, ...]
    # The teacher's score of each passage, [B, 1+H] float32 in the grouped layout (NaN: never scored,
    # e.g. a random filler), or None when not distilling. Under torchrun the loss reads it from the
    # global batch, so shards need not carry it.
    teacher_scores: np.ndarray | None = field(default=None, compare=False)

    @property
    def group_size(self) -> int:
        return len(self.passages) // len(self.questions)

    def __len__(self) -> int:
        return len(self.questions)


@dataclass
class _Open:
    """A batch being filled: what it already holds, to test newcomers against."""

    members: list[tuple[Example, list[Passage], Mapping[str, float] | None]] = field(default_factory=list)
    pids: set[str] = field(default_factory=set)        # every passage placed in the batch
    texts: set[str] = field(default_factory=set)
    golds: set[str] = field(default_factory=set)       # every positive of every member (pids and texts)
    questions: set[str] = field(default_factory=set)

    def holds(self, p: Passage) -> bool:
        return p.pid in self.pids or p.text in self.texts

    def is_gold(self, p: Passage) -> bool:
        return p.pid in self.golds or p.text in self.golds

    def add(self, example: Example, passages: list[Passage], scores: Mapping[str, float] | None = None) -> None:
        self.members.append((example, passages, scores))
        self.pids.update(p.pid for p in passages)
        self.texts.update(p.text for p in passages)
        self.golds.update(p.pid for p in example.positives)
        self.golds.update(p.text for p in example.positives)
        self.questions.add(example.question)

    def close(self, with_scores: bool = False) -> Batch:
        teacher = None
        if with_scores:
            teacher = np.array([[(scores or {}).get(p.pid, np.nan) for p in ps] for _, ps, scores in self.members],
                               dtype=np.float32)                              # [B, 1+H]
        return Batch(
            qids=tuple(ex.qid for ex, _, _ in self.members),
            questions=tuple(ex.question for ex, _, _ in self.members),
            passages=tuple(p for _, ps, _ in self.members for p in ps),
            teacher_scores=teacher,
        )


def _own_keys(example: Example) -> set[str]:
    return {p.pid for p in example.positives} | {p.text for p in example.positives}


def _try_add(batch: _Open, example: Example, candidates: Sequence[Passage], num_negatives: int,
             filler: Sequence[Passage], rng: np.random.Generator,
             scores: Mapping[str, float] | None = None) -> bool:
    """Add ``example`` with its positive and ``num_negatives`` negatives, or return False."""
    own = _own_keys(example)
    if example.question in batch.questions or any(batch.holds(p) for p in example.positives):
        return False
    positives = [p for p in example.positives if not batch.is_gold(p)]
    if not positives:
        return False
    chosen = [positives[int(rng.integers(len(positives)))] if len(positives) > 1 else positives[0]]

    def usable(p: Passage) -> bool:
        return (p.pid not in own and p.text not in own and not batch.holds(p) and not batch.is_gold(p)
                and all(p.pid != c.pid and p.text != c.text for c in chosen))

    for p in candidates:
        if len(chosen) > num_negatives:
            break
        if usable(p):
            chosen.append(p)
    # Too few usable candidates (none mined, or all taken): random passages keep the layout whole.
    tries = 0
    while len(chosen) <= num_negatives and filler and tries < 20 * (num_negatives + 1):
        tries += 1
        p = filler[int(rng.integers(len(filler)))]
        if usable(p):
            chosen.append(p)
    if len(chosen) <= num_negatives:
        return False
    batch.add(example, chosen, scores)
    return True


def make_batches(
    examples: Sequence[Example],
    batch_size: int,
    rng: np.random.Generator,
    num_hard_negatives: int = 0,
    negatives: Sequence[Sequence[Passage]] | None = None,
    filler: Sequence[Passage] = (),
    teacher_scores: Sequence[Mapping[str, float]] | None = None,
) -> list[Batch]:
    """Shuffle ``examples`` into batches of up to ``batch_size`` questions.

    ``negatives[i]`` ranks hard-negative candidates for ``examples[i]`` (best first); each example takes
    its first ``num_hard_negatives`` usable ones, then random ``filler`` passages if it runs short.
    Every example lands in exactly one batch; conflicts only change which batch. A passage never
    appears twice in a batch (by id or text), and no member's gold passage is another member's passage.
    ``teacher_scores[i]`` (passage id -> score) scores ``examples[i]``'s positives and candidates; given,
    every batch gets :attr:`Batch.teacher_scores` (a filler passage gets NaN unless it happens to be scored).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if negatives is not None and len(negatives) != len(examples):
        raise ValueError(f"{len(negatives)} negative lists for {len(examples)} examples")
    if teacher_scores is not None and len(teacher_scores) != len(examples):
        raise ValueError(f"{len(teacher_scores)} teacher score maps for {len(examples)} examples")
    pending = [int(i) for i in rng.permutation(len(examples))]
    batches: list[Batch] = []
    rejected = 0
    while pending:
        batch = _Open()
        deferred: list[int] = []
        for pos, i in enumerate(pending):
            if len(batch.members) == batch_size:
                deferred.extend(pending[pos:])
                break
            candidates = negatives[i] if negatives is not None else ()
            scores = teacher_scores[i] if teacher_scores is not None else None
            if not _try_add(batch, examples[i], candidates, num_hard_negatives, filler, rng, scores):
                deferred.append(i)
                rejected += 1
        if not batch.members:
            ex = examples[pending[0]]
            raise ValueError(
                f"cannot find {num_hard_negatives} hard negative(s) for question {ex.question[:60]!r} "
                f"that differ from its gold passage: give more candidates or a larger knowledge base"
            )
        batches.append(batch.close(with_scores=teacher_scores is not None))
        pending = deferred
    if rejected:
        logger.debug("batching deferred examples %d times to keep passages unique", rejected)
    return batches
