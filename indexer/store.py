"""The passage store: ids, titles and texts in SQLite, keyed by FAISS row.

Search returns rows; the store turns them into passages without the corpus living in Python
objects. Serving opens the file read-only with one connection per thread, because a sqlite3
connection must not be used by two threads at once. Every connection opens the same file by the
path of its (immutable, versioned) build, so a thread that connects late still reads the build the
index was opened from; opening checks the table's schema and that its rows are exactly 0..n-1.
Each passage also records its document (``doc_id``, indexed, so deleting a document finds its rows),
its character offsets in that document and its metadata as JSON; stores written before documents
existed lack those columns and read as passages that are their own documents.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from common.data import Passage
from indexer.errors import IndexLoadError

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE passages (
    row   INTEGER PRIMARY KEY,
    pid   TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    text  TEXT NOT NULL,
    hash  TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    start INTEGER,
    end   INTEGER,
    metadata TEXT
);
CREATE INDEX passages_doc ON passages (doc_id);
"""
# What write_store creates, as PRAGMA table_info reports it: (name, declared type, not null, pk).
_BASE_COLUMNS = [("row", "INTEGER", 0, 1), ("pid", "TEXT", 1, 0), ("title", "TEXT", 1, 0), ("text", "TEXT", 1, 0),
                 ("hash", "TEXT", 1, 0)]
_COLUMNS = _BASE_COLUMNS + [("doc_id", "TEXT", 1, 0), ("start", "INTEGER", 0, 0), ("end", "INTEGER", 0, 0),
                            ("metadata", "TEXT", 0, 0)]
_PASSAGE = "row, pid, title, text, doc_id, start, end, metadata"
# SQLite's default limit on bound parameters is 999 in older builds.
_MAX_PARAMS = 900


def write_store(path: str | Path, passages: Iterable[Passage], hashes: Iterable[str]) -> int:
    """Create a new store at ``path`` with ``passages`` at rows 0..n-1; returns n."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: already exists")
    conn = sqlite3.connect(path)
    try:
        conn.executescript(_SCHEMA)
        with conn:
            conn.executemany(
                "INSERT INTO passages (row, pid, title, text, hash, doc_id, start, end, metadata) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ((row, p.pid, p.title, p.text, h, p.doc_id, p.start, p.end,
                  None if p.metadata is None else json.dumps(p.metadata, ensure_ascii=False, sort_keys=True))
                 for row, (p, h) in enumerate(zip(passages, hashes, strict=True))),
            )
        (count,) = conn.execute("SELECT COUNT(*) FROM passages").fetchone()
    finally:
        conn.close()
    return int(count)


class PassageStore:
    """Read-only access to a passage store; safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise IndexLoadError(f"{self.path}: missing")
        # immutable=1: a published build never changes, so SQLite may skip locking and change checks.
        self._uri = f"{self.path.resolve().as_uri()}?mode=ro&immutable=1"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        try:
            self._count = self._check()
        except sqlite3.DatabaseError as e:
            self.close()
            raise IndexLoadError(f"{self.path}: not a readable passage store ({e})") from e
        except IndexLoadError:
            self.close()
            raise

    def _check(self) -> int:
        conn = self._conn()
        columns = [(name, kind.upper(), notnull, pk)
                   for _, name, kind, notnull, _, pk in conn.execute("PRAGMA table_info(passages)").fetchall()]
        self._documents = columns == _COLUMNS
        if columns != _COLUMNS and columns != _BASE_COLUMNS:
            found = ", ".join(f"{name} {kind}" for name, kind, _, _ in columns) or "no passages table"
            raise IndexLoadError(f"{self.path}: not a passage store of this version (columns: {found})")
        count, low, high = conn.execute("SELECT COUNT(*), MIN(row), MAX(row) FROM passages").fetchone()
        if count and (low != 0 or high != count - 1):
            raise IndexLoadError(f"{self.path}: rows must be 0..{count - 1}, found {low}..{high} "
                                 "(rows deleted or added after the build)")
        return int(count)

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"{self.path}: store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                if self._closed:
                    raise RuntimeError(f"{self.path}: store is closed")
                # check_same_thread=False only so close() may run from another thread; each thread
                # still queries through its own connection.
                conn = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
                self._connections.append(conn)
            self._local.conn = conn
        return conn

    def __len__(self) -> int:
        return self._count

    def _query(self, sql: str, params: Sequence[object]) -> list[tuple]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.DatabaseError as e:
            raise IndexLoadError(f"{self.path}: read failed ({e})") from e

    @property
    def has_documents(self) -> bool:
        """Whether the store records documents, offsets and metadata (written since they exist)."""
        return self._documents

    def _select(self) -> str:
        return _PASSAGE if self._documents else "row, pid, title, text"

    def by_rows(self, rows: Sequence[int]) -> list[Passage]:
        """Passages at ``rows``, in the same order (repeats allowed); an unknown row is an IndexError."""
        wanted = [int(r) for r in rows]
        found: dict[int, Passage] = {}
        unique = sorted(set(wanted))
        for start in range(0, len(unique), _MAX_PARAMS):
            chunk = unique[start:start + _MAX_PARAMS]
            marks = ",".join("?" * len(chunk))
            for record in self._query(f"SELECT {self._select()} FROM passages WHERE row IN ({marks})", chunk):
                found[record[0]] = _passage(record)
        missing = [r for r in unique if r not in found]
        if missing:
            raise IndexError(f"{self.path}: no passage at row(s) {missing[:5]} (store has {self._count})")
        return [found[r] for r in wanted]

    def row_of(self, pid: str) -> int | None:
        rows = self._query("SELECT row FROM passages WHERE pid = ?", (pid,))
        return int(rows[0][0]) if rows else None

    def by_id(self, pid: str) -> Passage | None:
        rows = self._query(f"SELECT {self._select()} FROM passages WHERE pid = ?", (pid,))
        return _passage(rows[0]) if rows else None

    def rows_of_document(self, doc_id: str) -> list[int]:
        """The rows of document ``doc_id``'s passages (a passage that is its own document: its row)."""
        if not doc_id:
            return []
        if self._documents:
            rows = self._query("SELECT row FROM passages WHERE doc_id = ? OR (doc_id = '' AND pid = ?) ORDER BY row",
                               (doc_id, doc_id))
        else:
            rows = self._query("SELECT row FROM passages WHERE pid = ?", (doc_id,))
        return [int(r) for (r,) in rows]

    def metadata_rows(self) -> list[tuple[int, dict]]:
        """``(row, metadata)`` of every passage that has metadata, in row order."""
        if not self._documents:
            return []
        try:
            return [(int(row), json.loads(meta)) for row, meta in
                    self._query("SELECT row, metadata FROM passages WHERE metadata IS NOT NULL ORDER BY row", ())]
        except ValueError as e:
            raise IndexLoadError(f"{self.path}: a metadata value is not JSON ({e})") from e

    def all_passages(self, batch: int = 10_000) -> list[Passage]:
        """Every passage in row order (compaction reads the build it folds the live segment into)."""
        out: list[Passage] = []
        for start in range(0, self._count, batch):
            out.extend(_passage(r) for r in self._query(
                f"SELECT {self._select()} FROM passages WHERE row >= ? AND row < ? ORDER BY row", (start, start + batch)))
        return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()


def _passage(record: tuple) -> Passage:
    if len(record) == 4:
        _, pid, title, text = record
        return Passage(pid=pid, title=title, text=text)
    _, pid, title, text, doc_id, start, end, meta = record
    return Passage(pid=pid, title=title, text=text, doc_id=doc_id, start=start, end=end,
                   metadata=None if meta is None else json.loads(meta))
