"""Cutting documents into passages: fixed windows of words, of the model's tokens, or of sentences.

A spec is ``UNIT:SIZE`` or ``UNIT:SIZE:STRIDE`` (``words:100``, ``words:100:50``, ``tokens:200``,
``sentences:1``): windows of SIZE units starting every STRIDE units, so consecutive windows share
SIZE - STRIDE units. Sentences are found by :func:`common.sentences.sentence_spans`. Searched by
document (the best passage stands for its document), ``sentences:1`` lets a query match the one
sentence of a long document that answers it, which a single vector of the whole text dilutes: on
SciFact claims it beat whole abstracts with the same untrained model (docs/documents.md).
Each passage keeps exact character offsets into its document's text (``doc.text[start:end] == text``)
and the id ``doc_id#i``.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from common.data import DataError, Passage
from common.documents import Document
from common.sentences import sentence_spans

logger = logging.getLogger(__name__)

UNITS = ("words", "tokens", "sentences")
SPEC_FORM = ("UNIT:SIZE or UNIT:SIZE:STRIDE with UNIT 'words', 'tokens' or 'sentences', e.g. 'words:100', "
             "'words:100:50' or 'sentences:1'")
# A word is a maximal run of non-whitespace, so cutting between words never splits one.
WORD = re.compile(r"\S+")
# [CLS] and [SEP] around the passage text.
SPECIAL_TOKENS = 2


@dataclass(frozen=True)
class ChunkSpec:
    unit: str
    size: int
    stride: int

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"chunk spec: unknown unit {self.unit!r}; expected {SPEC_FORM}")
        if self.size < 1:
            raise ValueError(f"chunk spec: size must be at least 1, got {self.size}; expected {SPEC_FORM}")
        if self.stride < 1:
            raise ValueError(f"chunk spec: stride must be at least 1, got {self.stride}; expected {SPEC_FORM}")
        if self.stride > self.size:
            # Windows would start further apart than they are long: the units between them would be lost.
            raise ValueError(
                f"chunk spec: stride {self.stride} is larger than size {self.size}, which would drop the "
                f"{self.stride - self.size} {self.unit} between windows; expected STRIDE <= SIZE in {SPEC_FORM}"
            )

    @classmethod
    def parse(cls, spec: str) -> ChunkSpec:
        """``words:100`` (no overlap) or ``words:100:50`` (windows every 50 words); same for ``tokens``
        and ``sentences``."""
        parts = spec.strip().split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"chunk spec {spec!r}: expected {SPEC_FORM}")
        unit = parts[0].strip().lower()
        if unit not in UNITS:
            raise ValueError(f"chunk spec {spec!r}: unknown unit {parts[0]!r}; expected {SPEC_FORM}")
        numbers: list[int] = []
        for name, raw in zip(("size", "stride"), parts[1:]):
            raw = raw.strip()
            # int() alone would accept "+5", "1_000" and non-ASCII digits.
            if not raw.isascii() or not raw.isdigit():
                raise ValueError(f"chunk spec {spec!r}: {name} {raw!r} is not a whole number; expected {SPEC_FORM}")
            numbers.append(int(raw))
        size = numbers[0]
        stride = numbers[1] if len(numbers) == 2 else size
        try:
            return cls(unit=unit, size=size, stride=stride)
        except ValueError as e:
            raise ValueError(f"chunk spec {spec!r}: {str(e).removeprefix('chunk spec: ')}") from None

    def __str__(self) -> str:
        if self.stride == self.size:
            return f"{self.unit}:{self.size}"
        return f"{self.unit}:{self.size}:{self.stride}"


def check_token_window(spec: ChunkSpec, passage_max_length: int) -> None:
    """Refuse a tokens window that the encoder would truncate (it adds [CLS] and [SEP])."""
    if spec.unit != "tokens":
        return
    largest = passage_max_length - SPECIAL_TOKENS
    if spec.size > largest:
        raise ValueError(
            f"chunk spec {str(spec)!r}: {spec.size} tokens do not fit the encoder's passage_max_length "
            f"{passage_max_length} ([CLS] and [SEP] take two positions); the largest size allowed is {largest}"
        )


def _unit_spans(doc: Document, spec: ChunkSpec, tokenizer: Any) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the document's words, tokens or sentences, in order."""
    if spec.unit == "words":
        return [m.span() for m in WORD.finditer(doc.text)]
    if spec.unit == "sentences":
        return sentence_spans(doc.text)
    if tokenizer is None:
        raise ValueError(f"chunk spec {str(spec)!r}: a tokens spec needs the model's tokenizer")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"chunk spec {str(spec)!r}: a tokens spec needs a fast tokenizer (for character offsets)")
    # verbose=False: a document is expected to be longer than the model's max length; that is why it is cut.
    encoding = tokenizer(doc.text, return_offsets_mapping=True, add_special_tokens=False, verbose=False)
    # Zero-length spans are tokens with no text of their own (normaliser artefacts); they cannot anchor an offset.
    return [(int(s), int(e)) for s, e in encoding["offset_mapping"] if e > s]


def chunk_document(doc: Document, spec: ChunkSpec, tokenizer: Any = None) -> list[Passage]:
    """The windows of ``doc`` under ``spec``, as passages ``doc_id#0``, ``doc_id#1``, ...

    Window i covers units ``[i*stride, i*stride + size)``; the last window is the first one that
    reaches the last unit, so no window lies inside the one before it.
    """
    spans = _unit_spans(doc, spec, tokenizer)
    if not spans:
        raise DataError(f"document {doc.doc_id!r} has no text to cut into {spec.unit}")
    passages: list[Passage] = []
    first = 0
    while True:
        last = min(first + spec.size, len(spans)) - 1
        start, end = spans[first][0], spans[last][1]
        passages.append(Passage(pid=f"{doc.doc_id}#{len(passages)}", title=doc.title, text=doc.text[start:end],
                                doc_id=doc.doc_id, start=start, end=end, metadata=doc.metadata))
        if last == len(spans) - 1:
            return passages
        first += spec.stride


def chunk_documents(docs: Iterable[Document], spec: ChunkSpec | None, tokenizer: Any = None) -> list[Passage]:
    """Every document's passages, in order; with ``spec`` None each document is one passage."""
    passages: list[Passage] = []
    n_docs = 0
    for doc in docs:
        n_docs += 1
        if spec is None:
            # Still carries doc_id, offsets and metadata, so results look the same with or without chunking.
            passages.append(Passage(pid=doc.doc_id, title=doc.title, text=doc.text, doc_id=doc.doc_id,
                                    start=0, end=len(doc.text), metadata=doc.metadata))
        else:
            passages.extend(chunk_document(doc, spec, tokenizer))
    # Document ids are unique and free of "#", so this only trips on documents that skipped read_documents.
    seen: set[str] = set()
    for p in passages:
        if p.pid in seen:
            raise DataError(f"duplicate passage id {p.pid!r} after chunking (document ids must be unique)")
        seen.add(p.pid)
    logger.info("cut %d documents into %d passages (%s)", n_docs, len(passages), spec or "no chunking")
    return passages


def chunk_passages(passages: Sequence[Passage], spec: ChunkSpec, tokenizer: Any = None) -> tuple[list[Passage], list[int]]:
    """Each of ``passages`` taken as a document (its ``pid`` the document id) and cut by ``spec``:
    ``(pieces, starts)``, where document i's pieces are ``pieces[starts[i]:starts[i + 1]]`` (the
    benchmark's way to search a knowledge base of passage records by document)."""
    docs = [Document(doc_id=p.pid, title=p.title, text=p.text, metadata=p.metadata) for p in passages]
    pieces = chunk_documents(docs, spec, tokenizer)
    # chunk_documents keeps document order and refuses a repeated id, so each document's pieces are one run.
    starts = [i for i, piece in enumerate(pieces) if i == 0 or piece.doc_id != pieces[i - 1].doc_id]
    return pieces, starts
