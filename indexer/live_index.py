"""``LiveIndex``: a build plus its live segment, searched as one knowledge base, with filters.

Searches run over the build (``SearchIndex``) and the live segment (:mod:`indexer.segment`) and
merge by score; rows ``0..n-1`` are the build's, ``n + slot`` the segment's. Deleted and replaced
passages are tombstones: a few are removed by fetching that many more hits from the build (exact),
many by a mask; a metadata filter is a mask too (:meth:`SearchIndex.search`). The segment is
searched exactly. In ``bm25`` and ``hybrid`` modes, live passages are scored with the build's BM25
statistics (document frequencies, passage count, average length): words the build never saw match
nothing until compaction folds the segment into a new build, which recomputes them.

Every search first applies what the live log gained since the last one (two ``stat`` calls when
nothing did), so a write by this process or by another one (``dpr kb``) is seen by the next search.
Writes go to the log first (:mod:`indexer.live_log`) and are then applied like any other line.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from common.data import Passage
from common.documents import Document, check_metadata
from common.fusion import FusionConfig
from indexer.chunking import ChunkSpec, chunk_documents
from indexer.filters import Filter, MetadataColumns, infer_schema, matches, parse_filter, value_type
from indexer.live_log import LiveLog, LiveLogError, Position, decode_vectors, encode_vectors, now
from indexer.manifest import documents_entry
from indexer.searcher import SearchIndex
from indexer.segment import LiveSegment, SegmentView
from retriever.encoder import DualEncoder

logger = logging.getLogger(__name__)

# Up to this many tombstones in the build are removed by over-fetching (exact on every index type);
# beyond it a mask is cheaper than ranking that many extra hits.
OVERFETCH_MAX = 1024
Ranked = list[list[tuple[int, float]]]


class MetadataConflict(ValueError):
    """A document's metadata field has another type than the knowledge base gives it (nothing written)."""


class LiveIndex:
    """A build and the live writes after it; searches are safe from many threads, as are writes."""

    def __init__(self, index: SearchIndex, stop: int | None = None) -> None:
        """``stop``: apply only the log files numbered below it (compaction folds a fixed prefix)."""
        self.index = index
        self._stop = stop
        entry = documents_entry(index.manifest)
        self.chunk: str | None = entry["chunk"]
        self.live_from: int = entry["live_from"]
        self.log = LiveLog(index.index_dir)
        self.model_sha = str(index.manifest["model"].get("weights_sha256", ""))
        base_schema = entry["metadata_fields"]
        # A build without metadata needs no columns: every filter sees its passages as lacking the field.
        self._base_columns: MetadataColumns | None = None
        if base_schema:
            rows: list[dict | None] = [None] * len(index)
            for row, meta in index.metadata_rows():
                rows[row] = meta
            self._base_columns = MetadataColumns.from_rows(rows, base_schema)
        term_weights = None
        if index.bm25 is not None:
            bm25 = index.bm25
            avg = bm25.avg_length or _estimate_avg_length(index)
            term_weights = lambda passages: bm25.term_weights(passages, avg)  # noqa: E731
        self.segment = LiveSegment(index.dim, {}, index.rows_of_document, term_weights)
        self._pids: dict[str, int] = {}
        self._position = Position(self.live_from)
        self.log.check_contiguous(self.live_from)
        self.refresh()

    def __len__(self) -> int:
        return len(self.index) - len(self.segment.view().base_dead) + self.segment.view().live

    @property
    def schema(self) -> dict[str, str]:
        """Metadata fields and their types over the build and the segment."""
        base = self._base_columns.schema if self._base_columns is not None else {}
        return {**base, **self.segment.view().columns.schema}

    # ------------------------------------------------------------------ the log

    def refresh(self) -> SegmentView:
        """Apply what the log gained since the last call; returns the current view.

        The read position moves only once what was read is committed (under the segment's lock), so
        a thread that finds nothing new has nothing in flight either: it waits for the writer's view.
        """
        if not self.log.changed(self._position) or (self._stop is not None and self._position.file >= self._stop):
            return self.segment.view()
        with self.segment.lock:
            if not self.log.changed(self._position):       # another thread applied it meanwhile
                return self.segment.view()
            position = dataclasses.replace(self._position)
            self.segment.begin()
            try:
                for where, record in self.log.read(position, stop=self._stop):
                    self._apply(where, record)
            except LiveLogError as e:
                self.index.mark_damaged(f"live log: {e}")
                raise
            finally:
                view = self.segment.commit()
            self._position = position
        return view

    def _apply(self, where: str, record: dict[str, Any]) -> None:
        op, doc_id = record.get("op"), record.get("id")
        if not isinstance(doc_id, str) or not doc_id:
            raise LiveLogError(f"{where}: 'id' must be a non-empty string")
        if op == "delete":
            self._forget(doc_id)
            self.segment.delete(doc_id)
            return
        if op != "upsert":
            raise LiveLogError(f"{where}: unknown op {op!r}")
        if record.get("model") != self.model_sha:
            raise LiveLogError(f"{where}: written with model weights {str(record.get('model'))[:12]}, this build's "
                               f"are {self.model_sha[:12]}: compact or rebuild with the model that wrote it")
        try:
            passages = _record_passages(record, where)
            vectors = decode_vectors(record.get("vectors", ""), len(passages), self.index.dim, where)
        except (TypeError, ValueError, KeyError) as e:
            raise LiveLogError(f"{where}: malformed upsert ({type(e).__name__}: {e})") from None
        self._forget(doc_id)
        try:
            self.segment.upsert(doc_id, passages, vectors)
        except ValueError as e:
            raise LiveLogError(f"{where}: {e}") from None
        start = len(self.segment.view().passages) - len(passages)
        for i, p in enumerate(passages):
            self._pids[p.pid] = start + i

    def _forget(self, doc_id: str) -> None:
        passages = self.segment.view().passages            # the shared list: includes this batch's slots
        for slot in self.segment.document_slots(doc_id):
            self._pids.pop(passages[slot].pid, None)

    # ------------------------------------------------------------------ writes

    def check_metadata_types(self, metadata: dict[str, Any] | None) -> None:
        """Refuse a metadata field whose type differs from the one the knowledge base has (ValueError)."""
        schema = self.schema
        for name, value in (metadata or {}).items():
            kind = value_type(value)
            if name in schema and schema[name] != kind:
                raise MetadataConflict(f"metadata field {name!r} is a {schema[name]} in this knowledge base; "
                                       f"got {kind}")

    def upsert(self, doc: Document, passages: Sequence[Passage], vectors: np.ndarray) -> dict[str, Any]:
        """Write ``doc`` (cut into ``passages`` with their vectors) durably, then apply it."""
        return self.upsert_many([(doc, passages, vectors)])[0]

    def upsert_many(self, items: Sequence[tuple[Document, Sequence[Passage], np.ndarray]]) -> list[dict[str, Any]]:
        """Write several documents with one ``fsync`` (each still one whole line), then apply them."""
        records = []
        for doc, passages, vectors in items:
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.shape != (len(passages), self.index.dim) or not np.isfinite(vectors).all():
                raise ValueError(f"vectors must be finite float32 [{len(passages)}, {self.index.dim}], "
                                 f"got {vectors.shape}")
            records.append({"op": "upsert", "id": doc.doc_id, "title": doc.title, "text": doc.text,
                            "metadata": doc.metadata, "passages": [[p.pid, p.start, p.end] for p in passages],
                            "model": self.model_sha, "vectors": encode_vectors(vectors), "at": now()})
        docs = [doc for doc, _, _ in items]
        results: list[dict[str, Any]] = []

        def still_fits() -> None:
            # Under the log's lock, after every earlier write is applied: another writer (a server,
            # `dpr kb`) may have given a new field another type since the checks above, or written
            # the same document (which decides "created").
            self.refresh()
            for doc in docs:
                self.check_metadata_types(doc.metadata)
            try:
                infer_schema(doc.metadata for doc in docs)
            except ValueError as e:
                raise MetadataConflict(str(e)) from None
            seen: set[str] = set()
            for doc, passages, _ in items:
                created = doc.doc_id not in seen and not self.has_document(doc.doc_id)
                seen.add(doc.doc_id)
                results.append({"id": doc.doc_id, "passages": len(passages), "created": created})

        self.log.append(records, at_least=self.live_from, check=still_fits)
        self.refresh()
        return results

    def delete_many(self, doc_ids: Sequence[str]) -> list[str]:
        """Delete the documents of ``doc_ids`` that exist, durably; returns those that did not."""
        self.refresh()
        missing = [d for d in doc_ids if not self.has_document(d)]
        absent = set(missing)
        found = [d for d in dict.fromkeys(doc_ids) if d not in absent]
        if found:
            self.log.append([{"op": "delete", "id": d, "at": now()} for d in found], at_least=self.live_from)
            self.refresh()
        return missing

    def delete(self, doc_id: str) -> bool:
        """Delete document ``doc_id`` durably; False when there is no such document."""
        return not self.delete_many([doc_id])

    def has_document(self, doc_id: str) -> bool:
        with self.segment.lock:                  # not while a batch is half applied
            return self.segment.has_document(doc_id)

    def document(self, doc_id: str) -> list[Passage]:
        """The passages of document ``doc_id`` as searches see them now (empty: no such document)."""
        self.refresh()
        with self.segment.lock:
            view = self.segment.view()
            slots = self.segment.document_slots(doc_id)
            if slots:
                return [view.passages[s] for s in slots]
            rows = self.segment.base_rows(doc_id)
        return self.index.passages(rows)

    # ------------------------------------------------------------------ search

    def base_mask(self, flt: Filter) -> np.ndarray:
        """The build's rows ``flt`` keeps, deleted ones excluded: bool [n]."""
        mask, _ = self._base_allowed(self.segment.view(), flt)
        return mask

    def parse_filter(self, spec: object) -> Filter | None:
        """A request's ``filter`` against this knowledge base's fields (FilterError names what is wrong)."""
        return parse_filter(spec, self.schema)

    def search(self, query_emb: np.ndarray, k: int, flt: Filter | None = None,
               view: SegmentView | None = None) -> Ranked:
        """Dense top ``k`` ``(row, score)`` per query over the build and the segment, best first.
        ``view``: search this snapshot of the segment (default: the log as of now)."""
        view = view or self.refresh()
        q = np.asarray(query_emb, dtype=np.float32).reshape(-1, self.index.dim)
        mask, exclude = self._base_allowed(view, flt)
        fetch = min(len(self.index), k + len(exclude))
        scores, rows = self.index.search(q, fetch, allowed=mask)
        base = _drop(scores, rows, exclude, k)
        if view.count == 0:
            return base
        if flt is None:
            slots, vectors = view.alive()
        else:
            slots = np.flatnonzero(self._segment_allowed(view, flt))
            vectors = view.vectors[slots]
        if not len(slots):
            return base
        seg_scores = q @ vectors.T                                                # [n, s]
        out = []
        for hits, row_scores in zip(base, seg_scores, strict=True):
            top = np.argsort(-row_scores, kind="stable")[:k]
            live = [(len(self.index) + int(slots[j]), float(row_scores[j])) for j in top]
            out.append(_merge(hits, live, k))
        return out

    def bm25_search(self, queries: Sequence[str], k: int, flt: Filter | None = None,
                    view: SegmentView | None = None) -> Ranked:
        """BM25 top ``k`` per query over the build and the segment (build statistics for both)."""
        view = view or self.refresh()
        mask, exclude = self._base_allowed(view, flt)
        hits = self.index.bm25_search(queries, k + len(exclude), allowed=mask)
        if len(exclude):
            dead = set(exclude.tolist())
            hits = [[h for h in q_hits if h[0] not in dead][:k] for q_hits in hits]
        alive = self._segment_allowed(view, flt)
        if not alive.any() or self.index.bm25 is None:
            return hits
        n = len(self.index)
        out = []
        for q_hits, terms in zip(hits, self.index.bm25.query_terms(queries), strict=True):
            acc: dict[int, float] = {}
            for term in terms:
                for slot, weight in view.postings.get(term, ()):
                    if slot < view.count and alive[slot]:
                        acc[slot] = acc.get(slot, 0.0) + weight
            live = sorted(((n + s, w) for s, w in acc.items() if w > 0), key=lambda h: (-h[1], h[0]))[:k]
            out.append(_merge(q_hits, live, k))
        return out

    def hybrid_search(self, query_emb: np.ndarray, queries: Sequence[str], k: int,
                      fusion: FusionConfig = FusionConfig(), flt: Filter | None = None) -> Ranked:
        """Dense and BM25 of the whole live knowledge base fused as ``fusion`` says."""
        depth = max(int(k), fusion.depth)
        view = self.refresh()                   # both sides see the same snapshot of the segment
        dense = self.search(query_emb, depth, flt, view)
        sparse = self.bm25_search(queries, depth, flt, view)
        out = []
        for d_hits, s_hits in zip(dense, sparse, strict=True):
            fused = fusion.fuse([(str(r), s) for r, s in d_hits], [(str(r), s) for r, s in s_hits], depth=int(k))
            out.append([(int(r), s) for r, s in fused])
        return out

    def _base_allowed(self, view: SegmentView, flt: Filter | None) -> tuple[np.ndarray | None, np.ndarray]:
        """(mask over the build's rows or None, tombstones still to drop from the hits)."""
        dead = view.base_dead
        if flt is None:
            if len(dead) <= OVERFETCH_MAX:
                return None, dead
            mask = np.ones(len(self.index), dtype=bool)
        elif self._base_columns is not None:
            mask = self._base_columns.mask(flt)
        else:
            mask = np.full(len(self.index), matches(None, flt), dtype=bool)
        mask[dead] = False
        return mask, dead[:0]

    def _segment_allowed(self, view: SegmentView, flt: Filter | None) -> np.ndarray:
        alive = ~view.dead[:view.count]
        if flt is not None and view.count:
            alive &= view.columns.mask(flt, stop=view.count)
        return alive

    # ------------------------------------------------------------------ passages

    def passages(self, rows: Sequence[int]) -> list[Passage]:
        """The passages at ``rows`` of a search (the build's rows, then ``n + slot``)."""
        n = len(self.index)
        view = self.segment.view()
        base = self.index.passages([r for r in rows if r < n])
        it = iter(base)
        return [next(it) if r < n else view.passages[r - n] for r in rows]

    def best_per_document(self, ranked_at: Callable[[int], Ranked], k: int) -> Ranked:
        """Per query, the best passage of each of its top ``k`` documents. ``ranked_at(depth)`` ranks
        passages for every query; it is asked again four times deeper while a query has fewer than
        ``k`` documents and more passages could hold them."""
        total = len(self)
        depth = min(total, 4 * k)
        while True:
            out, short = [], False
            for hits in ranked_at(depth):
                seen: set[str] = set()
                best = []
                for hit, passage in zip(hits, self.passages([r for r, _ in hits]), strict=True):
                    if passage.doc not in seen:
                        seen.add(passage.doc)
                        best.append(hit)
                out.append(best[:k])
                short |= len(best) < k and len(hits) >= depth
            if not short or depth >= total:
                return out
            depth = min(total, depth * 4)

    def passage(self, pid: str) -> Passage | None:
        self.refresh()
        with self.segment.lock:
            view = self.segment.view()
            slot = self._pids.get(pid)
        if slot is not None and slot < view.count and not view.dead[slot]:
            return view.passages[slot]
        row = self.index.row_of(pid)
        if row is None or _contains(view.base_dead, row):
            return None
        return self.index.passages([row])[0]

    def summary(self) -> dict[str, Any]:
        view = self.segment.view()
        return {"live_passages": view.live, "deleted_passages": int(len(view.base_dead) + view.dead.sum()),
                "chunk": self.chunk, "metadata_fields": self.schema}


def embed_document(doc: Document, chunk: str | None, encoder: DualEncoder,
                   batch_size: int = 64) -> tuple[list[Passage], np.ndarray]:
    """``doc`` cut as the index's documents were (``chunk``) and its passages' vectors float32 [p, d]."""
    return embed_documents([doc], chunk, encoder, batch_size)[0]


def embed_documents(docs: Sequence[Document], chunk: str | None, encoder: DualEncoder,
                    batch_size: int = 64) -> list[tuple[list[Passage], np.ndarray]]:
    """Each document cut and embedded, all passages encoded together (full batches)."""
    spec = ChunkSpec.parse(chunk) if chunk else None
    tokenizer = encoder.tokenizer if spec is not None and spec.unit == "tokens" else None
    cut = [chunk_documents([doc], spec, tokenizer) for doc in docs]
    with torch.inference_mode():
        vectors = np.asarray(encoder.encode_passages([p for ps in cut for p in ps], batch_size=batch_size),
                             dtype=np.float32)                                     # [sum p, d]
    out, start = [], 0
    for passages in cut:
        out.append((passages, vectors[start:start + len(passages)]))
        start += len(passages)
    return out


def _record_passages(record: dict[str, Any], where: str) -> list[Passage]:
    text, title = record["text"], record.get("title") or ""
    if not isinstance(text, str) or not isinstance(title, str):
        raise TypeError("'text' and 'title' must be strings")
    metadata = check_metadata(record.get("metadata"), where)
    out = []
    for pid, start, end in record["passages"]:
        if not (isinstance(pid, str) and isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(text)):
            raise ValueError(f"bad passage entry {[pid, start, end]!r}")
        out.append(Passage(pid=pid, title=title, text=text[start:end], doc_id=record["id"], start=start, end=end,
                           metadata=metadata))
    return out


def _drop(scores: np.ndarray, rows: np.ndarray, exclude: np.ndarray, k: int) -> Ranked:
    out = []
    for q_scores, q_rows in zip(scores, rows, strict=True):
        keep = q_rows >= 0
        if len(exclude):
            keep &= ~np.isin(q_rows, exclude)
        out.append([(int(r), float(s)) for r, s in zip(q_rows[keep][:k], q_scores[keep][:k])])
    return out


def _merge(a: list[tuple[int, float]], b: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
    if not b:
        return a[:k]
    return sorted(a + b, key=lambda h: (-h[1], h[0]))[:k]


def _contains(sorted_array: np.ndarray, value: int) -> bool:
    i = int(np.searchsorted(sorted_array, value))
    return i < len(sorted_array) and int(sorted_array[i]) == value


def _estimate_avg_length(index: SearchIndex) -> float:
    """Builds made before the average was recorded: estimate it from up to 1,000 of their passages."""
    rows = np.linspace(0, len(index) - 1, num=min(1000, len(index)), dtype=np.int64)
    return float(np.mean(index.bm25.lengths(index.passages(rows.tolist()))))
