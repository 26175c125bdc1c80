"""Readers for training, evaluation and knowledge-base files.

Three layouts are understood:

- ``nq_oracle`` records: ``{"question", "answers", "gold_context": {"title", "text"}}`` with optional
  ``hard_negative`` (one context) or ``hard_negatives`` (a list), as a JSON array or JSON lines;
- DPR biencoder records: ``{"question", "answers", "positive_ctxs": [...], "hard_negative_ctxs": [...]}``;
- a BEIR folder: ``corpus.jsonl`` (``_id, title, text``), ``queries.jsonl`` (``_id, text``) and
  ``qrels/<split>.tsv``.

Every error names the file, the record (line or index) and what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file that cannot be read as asked; the message says where and why."""


@dataclass(frozen=True)
class Passage:
    """A unit of retrieval. ``doc_id``, ``start``/``end`` (character offsets into the document's text)
    and ``metadata`` are set for passages cut from documents (``dpr index --chunk``); a passage that
    is its own document has ``doc_id`` empty (see :attr:`doc`)."""

    pid: str
    title: str
    text: str
    doc_id: str = ""
    start: int | None = None
    end: int | None = None
    # Not part of equality or the hash: two records of the same passage are the same passage.
    metadata: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def doc(self) -> str:
        """The document this passage belongs to (its own id when it was not cut from one)."""
        return self.doc_id or self.pid


@dataclass(frozen=True)
class Example:
    qid: str
    question: str
    answers: tuple[str, ...] = ()
    positives: tuple[Passage, ...] = ()
    hard_negatives: tuple[Passage, ...] = field(default=())


def passage_id(text: str) -> str:
    """A stable id for a passage that comes without one: the hash of its text.

    A hit is the gold passage itself, i.e. its exact text (titles repeat), so two records with the
    same text are the same passage.
    """
    return "p" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def question_id(question: str) -> str:
    return "q" + hashlib.sha1(question.encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------- raw records


def _read_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, record)`` from a JSON array/object file or a JSON-lines file."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory (a BEIR folder needs corpus.jsonl and queries.jsonl)")
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    if not head:
        raise DataError(f"{path}: file is empty")
    if head[:1] == b"[" or path.suffix == ".json":
        try:
            data = json.loads(path.read_bytes())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
        if isinstance(data, dict) and "data" in data and isinstance(data["data"], list):
            data = data["data"]
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
        for i, record in enumerate(data):
            yield f"{path}: record {i}", record
        return
    yield from _read_jsonl(path)


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON at column {e.colno}: {e.msg}") from e
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 text ({e.reason})") from e


def _str_field(record: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}: missing key {key!r} (keys present: {sorted(record)})")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _context(ctx: Any, where: str) -> Passage:
    if not isinstance(ctx, dict):
        raise DataError(f"{where}: a context must be an object with 'title' and 'text', got {type(ctx).__name__}")
    text = _str_field(ctx, "text", where)
    if not text.strip():
        raise DataError(f"{where}: passage has no text")
    title = _str_field(ctx, "title", where, required=False)
    pid = ctx.get("passage_id", ctx.get("id", ctx.get("_id")))
    return Passage(pid=str(pid) if pid not in (None, "") else passage_id(text), title=title, text=text)


def _contexts(value: Any, where: str) -> tuple[Passage, ...]:
    if value is None:
        return ()
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise DataError(f"{where}: expected a context or a list of contexts, got {type(value).__name__}")
    return tuple(_context(c, f"{where}[{i}]") for i, c in enumerate(value))


def _answers(record: dict[str, Any], where: str) -> tuple[str, ...]:
    answers = record.get("answers", [])
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise DataError(f"{where}: 'answers' must be a list of strings")
    return tuple(answers)


def parse_example(record: Any, where: str) -> Example:
    """One training/evaluation record in the nq_oracle or DPR shape."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, got {type(record).__name__}")
    question = _str_field(record, "question", where)
    if not question.strip():
        raise DataError(f"{where}: 'question' is empty")
    where = f"{where} (question {question[:60]!r})"
    if "gold_context" in record:
        positives = _contexts(record["gold_context"], f"{where} gold_context")
        negatives = _contexts(record.get("hard_negatives", record.get("hard_negative")), f"{where} hard_negative")
    elif "positive_ctxs" in record:
        positives = _contexts(record["positive_ctxs"], f"{where} positive_ctxs")
        negatives = _contexts(record.get("hard_negative_ctxs"), f"{where} hard_negative_ctxs")
    else:
        raise DataError(
            f"{where}: no gold passage: expected 'gold_context' (nq_oracle) or 'positive_ctxs' (DPR), "
            f"keys present: {sorted(record)}"
        )
    if not positives:
        raise DataError(f"{where}: no positive passage")
    qid = record.get("id", record.get("qid", record.get("_id")))
    return Example(
        qid=str(qid) if qid not in (None, "") else question_id(question),
        question=question,
        answers=_answers(record, where),
        positives=positives,
        hard_negatives=negatives,
    )


# ----------------------------------------------------------------------------- BEIR


def is_beir_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "corpus.jsonl").exists()


def read_beir_corpus(folder: Path) -> dict[str, Passage]:
    corpus: dict[str, Passage] = {}
    for where, record in _read_jsonl(folder / "corpus.jsonl"):
        passage = _corpus_record(record, where)
        if passage.pid in corpus and corpus[passage.pid] != passage:
            raise DataError(f"{where}: duplicate id {passage.pid!r} with different content")
        corpus[passage.pid] = passage
    return corpus


def read_beir_queries(folder: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    path = folder / "queries.jsonl"
    if not path.exists():
        raise DataError(f"{path}: no such file (a BEIR folder needs queries.jsonl)")
    queries = {}
    for where, record in _read_jsonl(path):
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object")
        qid = record.get("_id", record.get("id"))
        if qid in (None, ""):
            raise DataError(f"{where}: missing key '_id'")
        queries[str(qid)] = (_str_field(record, "text", where), _answers(record, where))
    return queries


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``qrels/<split>.tsv`` (``query-id, corpus-id, score`` with a header) as ``{qid: {pid: grade}}``."""
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.tsv")) if path.parent.exists() else []
        raise DataError(f"{path}: no such qrels file (splits available: {available})")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if not line.strip() or (lineno == 1 and parts[0] in ("query-id", "query_id", "qid")):
                continue
            if len(parts) not in (2, 3):
                raise DataError(f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score', got {line.strip()!r}")
            try:
                grade = int(float(parts[2])) if len(parts) == 3 else 1
            except ValueError:
                raise DataError(f"{path}:{lineno}: score {parts[2]!r} is not a number") from None
            qrels.setdefault(parts[0], {})[parts[1]] = grade
    return qrels


def read_beir(folder: str | Path, split: str) -> tuple[list[Example], dict[str, Passage]]:
    """Examples of one split (positives = passages with grade > 0) and the whole corpus."""
    folder = Path(folder)
    corpus = read_beir_corpus(folder)
    queries = read_beir_queries(folder)
    qrels = read_qrels(folder / "qrels" / f"{split}.tsv")
    examples = []
    for qid, judged in qrels.items():
        where = f"{folder / 'qrels' / f'{split}.tsv'}: query {qid!r}"
        if qid not in queries:
            raise DataError(f"{where}: not in queries.jsonl")
        missing = [pid for pid in judged if pid not in corpus]
        if missing:
            raise DataError(f"{where}: corpus ids not in corpus.jsonl: {missing[:5]}")
        positives = tuple(corpus[pid] for pid, grade in judged.items() if grade > 0)
        if positives:
            question, answers = queries[qid]
            examples.append(Example(qid=qid, question=question, answers=answers, positives=positives))
    return examples, corpus


# ----------------------------------------------------------------------------- public readers


def read_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Raw records of a JSON array or JSON-lines file as ``(where, record)``; ``where`` names file and record."""
    return _read_records(Path(path))


def load_examples(path: str | Path, split: str = "train") -> list[Example]:
    """Questions with their gold passages, from any supported layout (``split`` is for BEIR)."""
    path = Path(path)
    if is_beir_dir(path):
        examples, _ = read_beir(path, split)
    else:
        examples = [parse_example(record, where) for where, record in _read_records(path)]
    if not examples:
        raise DataError(f"{path}: no examples found")
    logger.info("read %d examples from %s", len(examples), path)
    return examples


def _corpus_record(record: Any, where: str) -> Passage:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, got {type(record).__name__}")
    pid = record.get("_id", record.get("id", record.get("passage_id")))
    if pid in (None, ""):
        raise DataError(f"{where}: missing key 'id' (or '_id'), keys present: {sorted(record)}")
    text = _str_field(record, "text", where)
    if not text.strip():
        raise DataError(f"{where}: passage {pid!r} has no text")
    metadata = None
    if record.get("metadata") is not None:
        from common.documents import check_metadata  # documents imports this module

        metadata = check_metadata(record["metadata"], where)
    return Passage(pid=str(pid), title=_str_field(record, "title", where, required=False), text=text,
                   metadata=metadata)


def _iter_corpus(path: Path) -> Iterator[tuple[str, Passage]]:
    """``(where, passage)``: ``where`` names the file and record, for errors found later (duplicates)."""
    if is_beir_dir(path):
        for passage in read_beir_corpus(path).values():
            yield f"{path / 'corpus.jsonl'}: id {passage.pid!r}", passage
        return
    for where, record in _read_records(path):
        # A record with a question is a training record, even with a misspelt gold key: say that,
        # rather than "missing key 'id'".
        if isinstance(record, dict) and ("gold_context" in record or "positive_ctxs" in record
                                         or "question" in record):
            example = parse_example(record, where)
            for passage in (*example.positives, *example.hard_negatives):
                yield where, passage
        else:
            yield where, _corpus_record(record, where)


def load_corpus(paths: str | Path | Sequence[str | Path]) -> list[Passage]:
    """A de-duplicated knowledge base from one or more sources, in first-seen order.

    The same id with the same text is kept once; the same id with different text is an error.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise DataError("no knowledge-base file given")
    seen: dict[str, Passage] = {}
    first_at: dict[str, str] = {}
    for path in paths:
        for where, passage in _iter_corpus(Path(path)):
            prior = seen.get(passage.pid)
            if prior is None:
                seen[passage.pid] = passage
                first_at[passage.pid] = where
            elif prior.text != passage.text:
                raise DataError(f"{where}: duplicate passage id {passage.pid!r} with different text "
                                f"(first seen at {first_at[passage.pid]})")
    if not seen:
        raise DataError(f"{', '.join(map(str, paths))}: knowledge base is empty")
    logger.info("knowledge base: %d unique passages from %d file(s)", len(seen), len(paths))
    return list(seen.values())


def corpus_from_examples(examples: Iterable[Example]) -> list[Passage]:
    """The gold passages of a set of examples, de-duplicated (the classic oracle knowledge base)."""
    seen: dict[str, Passage] = {}
    for ex in examples:
        for p in ex.positives:
            seen.setdefault(p.pid, p)
    return list(seen.values())
