"""Teachers for distillation: frozen scorers of (question, passage) pairs whose scores the student's
KL term (:func:`retriever.loss.distillation_loss`) follows.

A teacher scores each training question's candidate list: its positives and its mined (or file)
hard negatives, never the batch's other passages; that keeps the scores computable once per mining
round, before batches exist. Two teachers:

- ``hybrid``: BM25 over the mining knowledge base fused with the frozen starting dense model, each
  min-max normalised over the candidate list and interpolated as :func:`common.fusion.interpolate`
  does (dense weight :attr:`common.fusion.FusionConfig.alpha`), so scores lie in [0, 1];
- a saved dual-encoder directory: its raw similarity (query . passage embedding).

Scores are stored per example as ``{passage id: score}``; ``dpr mine --teacher`` writes them into the
mined file as ``teacher_score`` beside each context, and ``dpr train --hard-negatives file`` reads
them back (:func:`read_teacher_scores`).
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.data import Example, Passage, parse_example
from common.files import read_json
from common.fusion import FusionConfig, interpolate
from retriever.config import EncoderConfig
from retriever.encoder import CONFIG_FILE, DualEncoder, model_ref
from retriever.mining import bm25_pair_scores
from retriever.train_config import HYBRID_TEACHER, HYBRID_TEACHER_TEMPERATURE

logger = logging.getLogger(__name__)

SCORE_KEY = "teacher_score"
TEACHER_KEY = "teacher"

TeacherScores = dict[str, float]


class Teacher(Protocol):
    name: str

    def score(self, queries: Sequence[str], candidates: Sequence[Sequence[Passage]]) -> list[np.ndarray]:
        """Each query's score of each of its own candidates, aligned with ``candidates``."""


class DenseTeacher:
    """A frozen dual encoder: score = query embedding . passage embedding (no temperature)."""

    def __init__(self, encoder: DualEncoder, name: str, batch_size: int = 64) -> None:
        self.encoder = encoder.eval().requires_grad_(False)
        self.name, self.batch_size = name, batch_size

    def score(self, queries: Sequence[str], candidates: Sequence[Sequence[Passage]]) -> list[np.ndarray]:
        unique = list({p.pid: p for row in candidates for p in row}.values())
        row_of = {p.pid: i for i, p in enumerate(unique)}
        # encode_* run under torch.inference_mode: nothing here can reach an optimiser.
        p_emb = self.encoder.encode_passages(unique, batch_size=self.batch_size)             # [P, D]
        q_emb = self.encoder.encode_queries(list(queries), batch_size=self.batch_size)      # [n, D]
        return [p_emb[[row_of[p.pid] for p in row]] @ q_emb[i] if row else np.zeros(0, dtype=np.float32)
                for i, row in enumerate(candidates)]


class HybridTeacher:
    """BM25 and a frozen dense model, fused per candidate list (see the module docstring)."""

    name = HYBRID_TEACHER

    def __init__(self, dense: DenseTeacher, kb: Sequence[Passage], alpha: float = FusionConfig().alpha) -> None:
        self.dense, self.kb, self.alpha = dense, list(kb), alpha
        self._bm25: Any = None

    @property
    def bm25(self) -> Any:
        if self._bm25 is None:            # built once, on first use: mining rounds share it
            from retriever.bm25 import BM25Index

            self._bm25 = BM25Index.build(self.kb)
        return self._bm25

    def score(self, queries: Sequence[str], candidates: Sequence[Sequence[Passage]]) -> list[np.ndarray]:
        dense = self.dense.score(queries, candidates)
        sparse = bm25_pair_scores(self.bm25, queries, candidates)
        out = []
        for row, d, s in zip(candidates, dense, sparse):
            pids = [p.pid for p in row]
            fused = dict(interpolate(list(zip(pids, d.tolist())), list(zip(pids, s.tolist())), alpha=self.alpha))
            out.append(np.array([fused[pid] for pid in pids], dtype=np.float32))
        return out


def frozen_copy(model: DualEncoder) -> DualEncoder:
    """A copy of ``model``'s towers as they are now (sharing the tokenizer), for a teacher."""
    passage = None if model.passage_model is None else copy.deepcopy(model.passage_model)
    return DualEncoder(model.config, copy.deepcopy(model.query_model), model.tokenizer, passage)


def build_teacher(teacher: str, start: DualEncoder | None, kb: Sequence[Passage], batch_size: int = 64) -> Teacher:
    """``hybrid`` (BM25 over ``kb`` + a frozen copy of ``start``, the model before any step) or a saved
    dual-encoder directory (on ``start``'s device, if given)."""
    if teacher == HYBRID_TEACHER:
        if start is None:
            raise ValueError("the hybrid teacher needs the starting dense model")
        return HybridTeacher(DenseTeacher(frozen_copy(start), "start", batch_size), kb)
    if not (Path(teacher) / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{teacher}: a teacher is 'hybrid' or a saved dual-encoder directory (no {CONFIG_FILE})")
    encoder = DualEncoder.load(teacher)
    return DenseTeacher(encoder if start is None else encoder.to(next(start.parameters()).device),
                        model_ref(teacher), batch_size)


def teacher_temperature(teacher: str, given: float | None) -> float:
    """``given``, else the default: :data:`HYBRID_TEACHER_TEMPERATURE` for hybrid, a directory's own
    softmax temperature (read from its config, so every rank knows it without loading the model)."""
    if given is not None:
        return given
    if teacher == HYBRID_TEACHER:
        return HYBRID_TEACHER_TEMPERATURE
    return EncoderConfig.from_dict(read_json(Path(teacher) / CONFIG_FILE)["encoder"]).temperature


def candidate_lists(examples: Sequence[Example], negatives: Sequence[Sequence[Passage]]) -> list[list[Passage]]:
    """Each example's positives then its negatives, each passage id once."""
    return [list({p.pid: p for p in (*ex.positives, *negs)}.values()) for ex, negs in zip(examples, negatives)]


def score_candidates(teacher: Teacher, examples: Sequence[Example],
                     negatives: Sequence[Sequence[Passage]]) -> list[TeacherScores]:
    """``{passage id: teacher score}`` of each example's positives and negatives, aligned with ``examples``."""
    lists = candidate_lists(examples, negatives)
    scores = teacher.score([ex.question for ex in examples], lists)
    logger.info("teacher %s scored %d passages for %d questions", teacher.name, sum(map(len, lists)), len(lists))
    return [{p.pid: float(s) for p, s in zip(row, row_scores)} for row, row_scores in zip(lists, scores)]


# ----------------------------------------------------------------------------- mined files


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else [value] if isinstance(value, dict) else list(value)


def _context_lists(record: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """A record's positive and negative context objects, in the order :func:`parse_example` reads them."""
    if "gold_context" in record:
        return (_as_list(record["gold_context"]),
                _as_list(record.get("hard_negatives", record.get("hard_negative"))))
    return _as_list(record.get("positive_ctxs")), _as_list(record.get("hard_negative_ctxs"))


def with_teacher_scores(record: dict[str, Any], scores: Mapping[str, float], teacher: str) -> dict[str, Any]:
    """A copy of ``record`` with ``teacher_score`` beside each positive and hard-negative context it
    has a score for, and the teacher's name under ``teacher``."""
    out = copy.deepcopy(record)
    example = parse_example(out, "record")
    positives, negatives = _context_lists(out)
    for ctx, p in zip([*positives, *negatives], [*example.positives, *example.hard_negatives]):
        if p.pid in scores:
            ctx[SCORE_KEY] = round(float(scores[p.pid]), 6)
    out[TEACHER_KEY] = teacher
    return out


def read_teacher_scores(records: Sequence[dict[str, Any]],
                        examples: Sequence[Example]) -> tuple[list[TeacherScores | None], set[str]]:
    """The scores a mined file holds, per example: None unless every positive and negative has one.

    Returns the scores and the names of the teachers that wrote them.
    """
    out: list[TeacherScores | None] = []
    teachers: set[str] = set()
    for record, example in zip(records, examples, strict=True):
        positives, negatives = _context_lists(record)
        passages = [*example.positives, *example.hard_negatives]
        contexts = [*positives, *negatives]
        scored = {p.pid: float(c[SCORE_KEY]) for c, p in zip(contexts, passages)
                  if isinstance(c, dict) and isinstance(c.get(SCORE_KEY), (int, float))}
        complete = len(contexts) == len(passages) and all(p.pid in scored for p in passages)
        out.append(scored if complete else None)
        if complete and record.get(TEACHER_KEY):
            teachers.add(str(record[TEACHER_KEY]))
    return out, teachers
