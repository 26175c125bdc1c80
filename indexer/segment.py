"""The live segment: documents written since a build, held in memory beside it, and its tombstones.

:class:`LiveSegment` is what a reader has applied of the live log (:mod:`indexer.live_log`): new
passages with their vectors, metadata and BM25 weights in append-only slots, and which slots and
which rows of the build are deleted (an upsert deletes the document's previous passages, then adds
its new ones). Every applied batch of log records publishes one :class:`SegmentView`; a search
takes the view once and sees every document whole, as of one point in the log: slots past the
view's count are invisible to it and the tombstone arrays it holds are never modified (a write
copies them).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from common.data import Passage
from indexer.filters import MetadataColumns

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentView:
    """One consistent state of the segment: slots ``[0, count)`` and the tombstones at that point."""

    count: int
    vectors: np.ndarray                 # float32 [capacity, d]; rows < count are set
    dead: np.ndarray                    # bool [count]: slot replaced or deleted
    base_dead: np.ndarray               # int64 sorted: rows of the build deleted or replaced
    passages: list[Passage]             # append-only; entries < count
    columns: MetadataColumns            # append-only; rows < count
    postings: dict[int, list[tuple[int, float]]] = field(repr=False)   # BM25 term -> [(slot, weight)]
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def live(self) -> int:
        return int(self.count - self.dead.sum())

    def alive(self) -> tuple[np.ndarray, np.ndarray]:
        """(live slots int64 [m], their vectors float32 [m, d]), computed once per view: every
        unfiltered search of this view reuses them instead of gathering the rows again."""
        if "slots" not in self._cache:
            slots = np.flatnonzero(~self.dead[:self.count])
            self._cache["vectors"] = np.ascontiguousarray(self.vectors[slots])
            self._cache["slots"] = slots
        return self._cache["slots"], self._cache["vectors"]


class LiveSegment:
    """The applied state. ``begin``, ``upsert``, ``delete`` and ``commit`` run under :attr:`lock`
    (the reader applying the log holds it); :meth:`view` is safe from any thread."""

    def __init__(self, dim: int, schema: dict[str, str],
                 base_rows_of: Callable[[str], list[int]],
                 term_weights: Callable[[Sequence[Passage]], list[dict[int, float]]] | None = None) -> None:
        self.dim = dim
        self._base_rows_of = base_rows_of
        self._term_weights = term_weights
        self._docs: dict[str, list[int]] = {}           # document -> its live slots
        self._base_deleted_docs: set[str] = set()        # documents of the build that are tombstoned
        self._lock = threading.Lock()
        self._view = SegmentView(0, np.zeros((0, dim), dtype=np.float32), np.zeros(0, dtype=bool),
                                 np.zeros(0, dtype=np.int64), [], MetadataColumns(schema), {})
        self._pending: tuple[list[int], list[int]] | None = None
        self._buffer = self._view.vectors

    def view(self) -> SegmentView:
        return self._view

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    def document_slots(self, doc_id: str) -> list[int]:
        return list(self._docs.get(doc_id, ()))

    def base_rows(self, doc_id: str) -> list[int]:
        """Rows of the build that still hold document ``doc_id`` (none once it was replaced or deleted)."""
        if doc_id in self._base_deleted_docs:
            return []
        return self._base_rows_of(doc_id)

    def has_document(self, doc_id: str) -> bool:
        return bool(self._docs.get(doc_id)) or bool(self.base_rows(doc_id))

    # ------------------------------------------------------------------ applying (under the lock)

    def begin(self) -> None:
        """Start a batch of operations; :meth:`commit` publishes them as one view."""
        self._pending = ([], [])

    def delete(self, doc_id: str) -> int:
        """Tombstone every passage of ``doc_id``; returns how many were live."""
        assert self._pending is not None, "begin() first"
        slots = self._docs.pop(doc_id, [])
        rows = self.base_rows(doc_id)
        self._base_deleted_docs.add(doc_id)
        self._pending[0].extend(slots)
        self._pending[1].extend(rows)
        return len(slots) + len(rows)

    def upsert(self, doc_id: str, passages: Sequence[Passage], vectors: np.ndarray) -> int:
        """Replace ``doc_id`` by ``passages`` (vectors float32 [p, d]); returns how many passages it replaced.

        Metadata that does not fit the segment's field types is refused (ValueError) before anything changes.
        """
        view = self._view
        view.columns.append([p.metadata for p in passages])
        replaced = self.delete(doc_id)
        start = len(view.passages)
        stop = start + len(passages)
        if stop > len(self._buffer):
            # Readers keep the buffer of the view they hold; later views get the grown one.
            grown = np.zeros((max(stop, 2 * len(self._buffer), 64), self.dim), dtype=np.float32)
            grown[:start] = self._buffer[:start]
            self._buffer = grown
        self._buffer[start:stop] = np.asarray(vectors, dtype=np.float32).reshape(len(passages), self.dim)
        view.passages.extend(passages)
        if self._term_weights is not None:
            for slot, weights in zip(range(start, stop), self._term_weights(passages), strict=True):
                for term, weight in weights.items():
                    view.postings.setdefault(term, []).append((slot, weight))
        self._docs[doc_id] = list(range(start, stop))
        return replaced

    def commit(self) -> SegmentView:
        """Publish everything since :meth:`begin` as one view."""
        assert self._pending is not None, "begin() first"
        dead_slots, dead_rows = self._pending
        self._pending = None
        old = self._view
        count = len(old.passages)
        dead = np.zeros(count, dtype=bool)
        dead[:old.count] = old.dead
        if dead_slots:
            dead[np.asarray(dead_slots, dtype=np.int64)] = True
        base_dead = old.base_dead
        if dead_rows:
            base_dead = np.union1d(base_dead, np.asarray(dead_rows, dtype=np.int64))
        self._view = SegmentView(count, self._buffer, dead, base_dead, old.passages, old.columns, old.postings)
        return self._view
