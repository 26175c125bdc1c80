"""Documents: the long texts that ``dpr index --chunk`` cuts into passages.

A document file is a JSON array or JSON lines of ``{"id" | "_id", "title"?, "text", "metadata"?}``.
``metadata`` is a flat object of strings, numbers and booleans that every passage cut from the
document carries (for filtering and display). Every error names the file, the record and what is wrong.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.data import DataError, _read_records, _str_field

logger = logging.getLogger(__name__)

MetadataValue = str | int | float | bool

# Identifier-like keys keep metadata usable as filter names (``year``, ``source.lang``) and bound their size.
METADATA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
# "#" separates a document id from a chunk number in passage ids (``doc#3``).
CHUNK_SEPARATOR = "#"
MAX_DOC_ID_LENGTH = 512
DOCUMENT_KEYS = frozenset({"id", "_id", "title", "text", "metadata"})


def _json_type(value: Any) -> str:
    """The JSON name of a value's type, as a user who wrote the file would call it."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def check_metadata(value: Any, where: str) -> dict[str, MetadataValue] | None:
    """A validated copy of a document's ``metadata`` (a flat object of strings, numbers and booleans)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise DataError(f"{where}: metadata must be an object, got {_json_type(value)}")
    checked: dict[str, MetadataValue] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not METADATA_KEY.fullmatch(key):
            raise DataError(
                f"{where}: metadata field {key!r} is not a valid name "
                f"(a letter or '_' then up to 63 letters, digits, '_', '.' or '-')"
            )
        # bool is an int subclass, so it has to be accepted before the number check rather than by it.
        if isinstance(item, (bool, str)):
            checked[key] = item
        elif isinstance(item, (int, float)):
            # Python's json module reads NaN and Infinity, which no JSON consumer downstream accepts.
            if isinstance(item, float) and not math.isfinite(item):
                raise DataError(f"{where}: metadata field {key!r} must be a finite number, got {item}")
            checked[key] = item
        else:
            raise DataError(
                f"{where}: metadata field {key!r} must be a string, number or boolean, got {_json_type(item)}"
            )
    return checked


@dataclass(frozen=True)
class Document:
    """A document before chunking; ``doc_id`` becomes the prefix of its passages' ids (``doc_id#i``)."""

    doc_id: str
    title: str
    text: str
    # Not part of equality or the hash, as for Passage: the same document read twice is the same document.
    metadata: dict[str, MetadataValue] | None = field(default=None, compare=False, hash=False)


def _doc_id(record: dict[str, Any], where: str) -> str:
    if "id" in record and "_id" in record and record["id"] != record["_id"]:
        raise DataError(f"{where}: both 'id' ({record['id']!r}) and '_id' ({record['_id']!r}) given; keep one")
    raw = record.get("id", record.get("_id"))
    if raw is None:
        raise DataError(f"{where}: missing key 'id' (or '_id') (keys present: {sorted(record)})")
    # bool is an int subclass; true/false as an id is a mistake in the file, not the ids "True"/"False".
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise DataError(f"{where}: document id must be a string or an integer, got {_json_type(raw)}")
    doc_id = str(raw)
    if not doc_id.strip():
        raise DataError(f"{where}: document id is empty")
    if CHUNK_SEPARATOR in doc_id:
        raise DataError(
            f"{where}: document id {doc_id!r} contains {CHUNK_SEPARATOR!r}, "
            f"which separates a document id from a chunk number in passage ids"
        )
    if len(doc_id) > MAX_DOC_ID_LENGTH:
        raise DataError(f"{where}: document id is {len(doc_id)} characters long (at most {MAX_DOC_ID_LENGTH})")
    return doc_id


def parse_document(record: Any, where: str) -> Document:
    """One document record: ``{"id" | "_id", "title"?, "text", "metadata"?}``; any other key is refused."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, got {_json_type(record)}")
    # A misspelt optional key ("metdata") would otherwise be dropped without a word.
    unknown = sorted(str(k) for k in record if k not in DOCUMENT_KEYS)
    if unknown:
        raise DataError(f"{where}: unknown key(s) {unknown} (a document has 'id' or '_id', 'title', 'text', 'metadata')")
    doc_id = _doc_id(record, where)
    text = _str_field(record, "text", where)
    if not text.strip():
        raise DataError(f"{where}: document {doc_id!r} has no text")
    title = _str_field(record, "title", where, required=False)
    metadata = check_metadata(record.get("metadata"), f"{where} (document {doc_id!r})")
    return Document(doc_id=doc_id, title=title, text=text, metadata=metadata)


def read_documents(paths: str | Path | Sequence[str | Path]) -> list[Document]:
    """All documents of one or more files, in file order; ids must be unique across the files."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = [Path(p) for p in paths]
    documents: list[Document] = []
    seen: dict[str, str] = {}
    for path in files:
        for where, record in _read_records(path):
            doc = parse_document(record, where)
            if doc.doc_id in seen:
                raise DataError(f"{where}: duplicate document id {doc.doc_id!r} (first seen at {seen[doc.doc_id]})")
            seen[doc.doc_id] = where
            documents.append(doc)
    if not documents:
        raise DataError(f"{', '.join(map(str, files)) or '(no files)'}: no documents")
    logger.info("read %d documents from %d file(s)", len(documents), len(files))
    return documents
