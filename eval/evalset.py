"""Evaluation sets: queries, graded qrels and answers from an nq_oracle-shape file or a BEIR folder.

For an nq_oracle (or DPR) file the relevant passages are each question's gold contexts, whose ids are
``common.data.passage_id(text)`` unless the records carry ids: a hit is the exact gold text.
For a BEIR folder they come from ``qrels/<split>.tsv`` with their grades.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.data import (
    DataError,
    Passage,
    corpus_from_examples,
    is_beir_dir,
    load_corpus,
    load_examples,
    read_beir_queries,
    read_qrels,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSet:
    """What an evaluation needs from a data set. ``files`` are the files its content came from."""

    path: Path
    layout: str                                   # "nq_oracle" or "beir"
    split: str | None
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    answers: dict[str, tuple[str, ...]]
    files: tuple[Path, ...]
    gold_passages: tuple[Passage, ...] = field(default=(), repr=False)

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def has_answers(self) -> bool:
        return any(self.answers.values())

    def relevant_ids(self) -> set[str]:
        return {pid for judged in self.qrels.values() for pid, grade in judged.items() if grade > 0}


def load_eval_set(path: str | Path, split: str = "test") -> EvalSet:
    """An :class:`EvalSet` from an nq_oracle/DPR file or a BEIR folder (``split`` names the qrels file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such evaluation data file or folder")
    if is_beir_dir(path):
        return _load_beir(path, split)
    if path.is_dir():
        raise DataError(f"{path}: a folder but not a BEIR folder (no corpus.jsonl)")
    return _load_questions(path)


def _load_questions(path: Path) -> EvalSet:
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    answers: dict[str, tuple[str, ...]] = {}
    examples = load_examples(path)
    for ex in examples:
        # The same question twice (ids come from the question text) is one query with every gold passage.
        if ex.qid in queries and queries[ex.qid] != ex.question:
            raise DataError(f"{path}: question id {ex.qid!r} is used by two different questions")
        queries[ex.qid] = ex.question
        qrels.setdefault(ex.qid, {}).update({p.pid: 1 for p in ex.positives})
        answers[ex.qid] = tuple(dict.fromkeys(answers.get(ex.qid, ()) + ex.answers))
    if len(queries) < len(examples):
        logger.warning("%s: %d repeated questions merged", path, len(examples) - len(queries))
    return EvalSet(path=path, layout="nq_oracle", split=None, queries=queries, qrels=qrels, answers=answers,
                   files=(path,), gold_passages=tuple(corpus_from_examples(examples)))


def _load_beir(folder: Path, split: str) -> EvalSet:
    qrels_path = folder / "qrels" / f"{split}.tsv"
    all_qrels = read_qrels(qrels_path)
    all_queries = read_beir_queries(folder)
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    answers: dict[str, tuple[str, ...]] = {}
    for qid, judged in all_qrels.items():
        if qid not in all_queries:
            raise DataError(f"{qrels_path}: query {qid!r} is not in {folder / 'queries.jsonl'}")
        if not any(grade > 0 for grade in judged.values()):
            continue                                # nothing relevant: no metric is defined for it
        queries[qid], answers[qid] = all_queries[qid]
        qrels[qid] = judged
    if not queries:
        raise DataError(f"{qrels_path}: no query has a relevant passage (grade > 0)")
    logger.info("%s split %s: %d queries with relevance judgements", folder, split, len(queries))
    return EvalSet(path=folder, layout="beir", split=split, queries=queries, qrels=qrels, answers=answers,
                   files=(folder / "corpus.jsonl", folder / "queries.jsonl", qrels_path))


def default_kb(evalset: EvalSet) -> tuple[list[Passage], str]:
    """The knowledge base used when none is given, and a sentence saying what it is."""
    if evalset.layout == "beir":
        return load_corpus(evalset.path), f"the corpus of {evalset.path} (corpus.jsonl)"
    return list(evalset.gold_passages), f"the gold passages of {evalset.path} only (no --kb given)"


def load_kb(evalset: EvalSet, kb_paths: Sequence[str | Path]) -> tuple[list[Passage], str]:
    """``load_corpus(kb_paths)``, or :func:`default_kb` when no path is given."""
    if not kb_paths:
        return default_kb(evalset)
    passages = load_corpus(list(kb_paths))
    return passages, f"{len(kb_paths)} file(s): {', '.join(str(p) for p in kb_paths)}"


def gold_coverage(evalset: EvalSet, kb_ids: set[str]) -> float:
    """Share of the relevant passage ids present in the knowledge base; logs a warning when some miss.

    A low share usually means the ids do not line up (e.g. BEIR ids against a KB built from
    nq_oracle files, whose ids are text hashes), which would silently read as poor recall.
    """
    relevant = evalset.relevant_ids()
    if not relevant:
        return 0.0
    missing = relevant - kb_ids
    if missing:
        logger.warning("%d of %d relevant passages are not in the knowledge base (e.g. %s): they cannot be "
                       "retrieved", len(missing), len(relevant), sorted(missing)[:3])
    return 1 - len(missing) / len(relevant)
