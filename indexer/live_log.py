"""The live log: every acknowledged document upsert and delete of an index directory, in order.

``<index>/live/`` holds numbered JSON-lines files (``00000001.jsonl``, ...) and a ``lock`` file. A
writer appends under an exclusive ``flock`` of the lock (so a server and ``dpr kb`` may write at
once, and two writers never interleave a line), then ``fsync``s before the write is acknowledged:
a ``kill -9`` right after an answer loses nothing. A line is one whole document operation, so a
reader applies a document entirely or not at all; a line without its newline is a write that died
before it was acknowledged, and the next writer cuts it off.

Builds never change, so the log is what changes: a build records ``live_from``, the first log file
it does not contain, and whoever opens the build applies every file from there on (a build without
it, made before the log existed, applies them all). Compaction first rotates the log (writers go on
in a new file), folds the files before it into a new build whose ``live_from`` is the new file, and
publishes it; a server still on the old build keeps applying every file, so either build plus the
files it applies is the same knowledge base, and no write made during compaction is lost. Rolling
back to an older build is lossless for the same reason. Files no kept build applies are pruned.
"""
from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import IndexLoadError

logger = logging.getLogger(__name__)

LIVE_DIR = "live"
_LOCK = "lock"
_NAME = re.compile(r"^(\d{8})\.jsonl$")


class LiveLogError(IndexLoadError):
    """A live log line that cannot be applied; the message names the file and line."""


@dataclass
class Position:
    """How far a reader has applied the log: a file number, a byte offset in it, lines read."""

    file: int
    offset: int = 0
    line: int = 0


def encode_vectors(vectors: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode("ascii")


def decode_vectors(data: str, rows: int, dim: int, where: str) -> np.ndarray:
    try:
        raw = base64.b64decode(data.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as e:
        raise LiveLogError(f"{where}: vectors are not base64 ({e})") from None
    if len(raw) != rows * dim * 4:
        raise LiveLogError(f"{where}: {len(raw)} bytes of vectors for {rows} passages of dim {dim}")
    vectors = np.frombuffer(raw, dtype="<f4").reshape(rows, dim).astype(np.float32)
    if not np.isfinite(vectors).all():
        raise LiveLogError(f"{where}: non-finite vectors")
    return vectors


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class LiveLog:
    """The log files of one index directory; safe to share between threads of a process."""

    def __init__(self, index_dir: str | Path) -> None:
        self.dir = Path(index_dir) / LIVE_DIR
        self._lock = threading.Lock()

    def path(self, number: int) -> Path:
        return self.dir / f"{number:08d}.jsonl"

    def files(self) -> list[int]:
        """The numbers of the log files that exist, ascending."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)

    # ------------------------------------------------------------------ writing

    def _locked(self) -> _FileLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        return _FileLock(self.dir / _LOCK, self._lock)

    def append(self, records: list[dict[str, Any]], at_least: int = 1,
               check: Callable[[], None] | None = None) -> tuple[int, int]:
        """Append ``records`` (one line each) durably; returns (file, end offset) of the last one.

        ``at_least``: the writer's build applies files from this number on, so the records go to a
        file no lower than it. ``check``: runs under the lock before anything is written; what it
        raises aborts the append (the last chance to refuse a write that conflicts with another's).
        """
        lines = b"".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
                         for r in records)
        with self._locked():
            if check is not None:
                check()
            files = self.files()
            number = max(files[-1] if files else 0, at_least)
            path = self.path(number)
            created = not path.exists()
            with open(path, "ab") as f:
                _cut_torn_tail(f, path)
                f.write(lines)
                f.flush()
                os.fsync(f.fileno())
                end = f.tell()
            if created:
                _fsync_dir(self.dir)
        return number, end

    def rotate(self) -> int:
        """Start a new file for later writes; returns its number. Files below it no longer change."""
        with self._locked():
            files = self.files()
            if files:
                with open(self.path(files[-1]), "ab") as f:
                    _cut_torn_tail(f, self.path(files[-1]))
            number = (files[-1] if files else 0) + 1
            self.path(number).touch(exist_ok=False)
            _fsync_dir(self.dir)
        logger.info("live log %s: writes now go to %s", self.dir, self.path(number).name)
        return number

    def prune(self, before: int) -> list[int]:
        """Delete the files numbered below ``before`` (no kept build applies them); returns their numbers."""
        gone = []
        with self._locked():
            for number in self.files():
                if number < before:
                    self.path(number).unlink()
                    gone.append(number)
        if gone:
            _fsync_dir(self.dir)
        return gone

    # ------------------------------------------------------------------ reading

    def read(self, position: Position, stop: int | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(where, record)`` for every complete line after ``position``, which advances as they are
        read; files numbered ``stop`` and above are not read. A file missing in the middle of the log
        is an error, as is a complete line that is not a JSON object."""
        while stop is None or position.file < stop:
            path = self.path(position.file)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                later = [n for n in self.files() if n > position.file and (stop is None or n < stop)]
                if not later:
                    return
                # Files are pruned only below every kept build's live_from: a gap means lost writes.
                raise LiveLogError(f"{path}: missing from the live log, which goes on in {self.path(later[0]).name}")
            if size > position.offset:
                with open(path, "rb") as f:
                    f.seek(position.offset)
                    data = f.read(size - position.offset)
                complete = data[:data.rfind(b"\n") + 1]
                for raw in complete.splitlines(keepends=True):
                    position.line += 1
                    where = f"{path}:{position.line}"
                    try:
                        record = json.loads(raw)
                    except (ValueError, UnicodeDecodeError) as e:
                        raise LiveLogError(f"{where}: not a JSON line ({e})") from None
                    if not isinstance(record, dict):
                        raise LiveLogError(f"{where}: expected a JSON object")
                    position.offset += len(raw)
                    yield where, record
            if not self.path(position.file + 1).exists():
                return
            position.file, position.offset, position.line = position.file + 1, 0, 0

    def check_contiguous(self, start: int) -> None:
        """Refuse a log with a file missing from ``start`` on (a reader would stop at the gap)."""
        numbers = [n for n in self.files() if n >= start]
        for n in range(start, numbers[-1] if numbers else start):
            if n not in numbers:
                later = next(m for m in numbers if m > n)
                raise LiveLogError(f"{self.path(n)}: missing from the live log, which goes on in {self.path(later).name}")

    def changed(self, position: Position) -> bool:
        """Whether anything was written after ``position`` (two ``stat`` calls: cheap per search)."""
        try:
            if self.path(position.file).stat().st_size > position.offset:
                return True
        except FileNotFoundError:
            files = self.files()
            return bool(files) and files[-1] > position.file
        return self.path(position.file + 1).exists()


class _FileLock:
    """The process's thread lock, then an exclusive ``flock`` of the log's lock file."""

    def __init__(self, path: Path, thread_lock: threading.Lock) -> None:
        self.path = path
        self.thread_lock = thread_lock
        self.fd = -1

    def __enter__(self) -> _FileLock:
        self.thread_lock.acquire()
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            if self.fd >= 0:
                os.close(self.fd)
            self.thread_lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.close(self.fd)          # closing releases the flock
        finally:
            self.thread_lock.release()


def _cut_torn_tail(f: Any, path: Path) -> None:
    """Drop a last line without its newline: a writer died before the write was acknowledged."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    with open(path, "rb") as r:
        r.seek(max(0, size - 1))
        if r.read(1) == b"\n":
            return
        r.seek(0)
        data = r.read()
    keep = data.rfind(b"\n") + 1
    logger.warning("%s: cutting %d bytes of an unacknowledged, incomplete write", path, size - keep)
    f.truncate(keep)
    f.seek(keep)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
