"""The passage store: ids, titles and texts in SQLite, keyed by FAISS row.

Search returns rows; the store turns them into passages without the corpus living in Python
objects. Serving opens the file read-only with one connection per thread, because a sqlite3
connection must not be used by two threads at once. Every connection opens the same file by the
path of its (immutable, versioned) build, so a thread that connects late still reads the build the
index was opened from; opening checks the table's schema and that its rows are exactly 0..n-1.
"""
from __future__ import annotations

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
    hash  TEXT NOT NULL
);
"""
# What write_store creates, as PRAGMA table_info reports it: (name, declared type, not null, pk).
_COLUMNS = [("row", "INTEGER", 0, 1), ("pid", "TEXT", 1, 0), ("title", "TEXT", 1, 0), ("text", "TEXT", 1, 0),
            ("hash", "TEXT", 1, 0)]
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
                "INSERT INTO passages (row, pid, title, text, hash) VALUES (?, ?, ?, ?, ?)",
                ((row, p.pid, p.title, p.text, h) for row, (p, h) in enumerate(zip(passages, hashes, strict=True))),
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
        if columns != _COLUMNS:
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

    def by_rows(self, rows: Sequence[int]) -> list[Passage]:
        """Passages at ``rows``, in the same order (repeats allowed); an unknown row is an IndexError."""
        wanted = [int(r) for r in rows]
        found: dict[int, Passage] = {}
        unique = sorted(set(wanted))
        for start in range(0, len(unique), _MAX_PARAMS):
            chunk = unique[start:start + _MAX_PARAMS]
            marks = ",".join("?" * len(chunk))
            for row, pid, title, text in self._query(
                    f"SELECT row, pid, title, text FROM passages WHERE row IN ({marks})", chunk):
                found[row] = Passage(pid=pid, title=title, text=text)
        missing = [r for r in unique if r not in found]
        if missing:
            raise IndexError(f"{self.path}: no passage at row(s) {missing[:5]} (store has {self._count})")
        return [found[r] for r in wanted]

    def row_of(self, pid: str) -> int | None:
        rows = self._query("SELECT row FROM passages WHERE pid = ?", (pid,))
        return int(rows[0][0]) if rows else None

    def by_id(self, pid: str) -> Passage | None:
        rows = self._query("SELECT pid, title, text FROM passages WHERE pid = ?", (pid,))
        return Passage(*rows[0]) if rows else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()
