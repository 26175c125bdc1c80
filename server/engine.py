"""The serving engine: one loaded (encoder, index) pair, and the holder that hot-swaps it.

A request takes the engine it will use from :class:`EngineHolder` once, at its start, and gives it
back at its end; a reload swaps the holder's reference under a lock. The engine a reload replaced
is closed only when its last in-flight request is done, so no request ever sees a closed index.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.choices import SEARCH_MODES
from common.data import Passage
from common.documents import Document
from common.fusion import FusionConfig
from indexer import ManifestMismatch, SearchIndex, check_encoder
from indexer.filters import Filter
from indexer.live_index import LiveIndex, embed_document
from retriever.encoder import DualEncoder, load_encoder, model_ref
from server.errors import NotReady

logger = logging.getLogger(__name__)



class EngineLoadError(RuntimeError):
    """The model an index names cannot be loaded, or the pair fails its test search.

    The message names the index and the model; ``public`` is the same without what only the server's
    file system can tell (for API answers; the full reason is logged).
    """

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public or message


class QueryCache:
    """A thread-safe LRU of query embeddings; ``size=0`` stores nothing."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: str, value: np.ndarray) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class Engine:
    """Encodes queries with ``encoder`` and searches ``index``; safe to call from many threads."""

    def __init__(self, index: SearchIndex, encoder: DualEncoder, *, model_dir: str, cache_size: int = 1024,
                 fusion: FusionConfig = FusionConfig()) -> None:
        self.index = index
        # The build plus the documents written since (live log): every search and write goes through it.
        self.live = LiveIndex(index)
        self.fusion = fusion
        self.encoder = encoder
        self.model_dir = model_dir
        self.index_dir = Path(index.index_dir)
        self.loaded_at = time.time()
        self.cache = QueryCache(cache_size)
        # A fast tokenizer mutates its truncation/padding state on call; concurrent calls can hit
        # "Already borrowed". Tokenising one query takes microseconds, so a lock costs nothing.
        self._tokenizer_lock = threading.Lock()
        self._passage_lock = threading.Lock()
        self._passage_encoder: DualEncoder | None = None
        self._active = 0
        self._retired = False
        self._closed = False

    def __len__(self) -> int:
        return len(self.index)

    @property
    def closed(self) -> bool:
        return self._closed

    def encode(self, queries: Sequence[str]) -> np.ndarray:
        """Query embeddings float32 [n, d]; uncached queries are encoded together in one batch."""
        out = np.empty((len(queries), self.index.dim), dtype=np.float32)
        todo: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            hit = self.cache.get(q)
            if hit is None:
                todo.setdefault(q, []).append(i)
            else:
                out[i] = hit
        if todo:
            texts = list(todo)
            emb = self._embed(texts)                                      # [u, d]
            for text, vec in zip(texts, emb, strict=True):
                vec = np.array(vec, dtype=np.float32)                     # own copy, not a view of the batch
                self.cache.put(text, vec)
                out[todo[text]] = vec
        return out

    def embed(self, texts: Sequence[str], kind: str = "query") -> tuple[np.ndarray, list[int]]:
        """Vectors float32 [n, d] of ``texts`` as queries (through the cache) or as passages (an empty
        title), and each text's token count after truncation (for ``usage``)."""
        texts = list(texts)
        if kind == "query":
            vectors = self.encode(texts)
            with self._tokenizer_lock:
                ids = self.encoder.tokenize_queries(texts, padding=False)["input_ids"]
        elif kind == "passage":
            passages = [Passage(pid="", title="", text=t) for t in texts]
            with self._tokenizer_lock, torch.inference_mode():
                vectors = self.encoder.encode_passages(passages)
                # Counted as encoded (the encoder's passage_format), not as a plain string.
                ids = self.encoder.tokenize_passages(passages, padding=False)["input_ids"]
        else:
            raise ValueError(f"kind must be query or passage, got {kind!r}")
        return np.asarray(vectors, dtype=np.float32), [len(x) for x in ids]

    def _embed(self, texts: list[str]) -> np.ndarray:
        with self._tokenizer_lock:
            inputs = self.encoder.tokenize_queries(texts)
        with torch.inference_mode():
            return self.encoder.embed_queries(inputs).float().numpy()       # [n, d]

    @property
    def has_bm25(self) -> bool:
        return self.index.bm25 is not None

    def search(self, queries: Sequence[str], k: int, mode: str = "dense", *, query_emb: np.ndarray | None = None,
               timings: dict[str, float] | None = None, flt: Filter | None = None,
               group_by: str | None = None) -> list[list[dict[str, Any]]]:
        """For each query, up to ``k`` hits ``{id, title, text, score, rank, doc_id, ...}``, best first.

        ``mode``: ``dense`` (the encoder), ``bm25`` or ``hybrid`` (both fused as the engine's
        ``fusion`` says, see :meth:`LiveIndex.hybrid_search`); the last two need an index with BM25.
        ``query_emb``: embeddings of ``queries`` already computed (the micro-batcher encodes a whole
        batch at once). ``flt``: only passages whose metadata match. ``group_by="doc"``: ``k``
        documents, each as its best passage. ``timings``, if given, receives ``encode_ms``,
        ``search_ms`` and ``fetch_ms``.
        """
        t0 = time.perf_counter()
        if mode != "bm25" and query_emb is None:
            query_emb = self.encode(queries)
        t1 = time.perf_counter()
        if mode not in SEARCH_MODES:
            raise ValueError(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
        if group_by is None:
            ranked = self._ranked(queries, k, mode, query_emb, flt)
        elif group_by == "doc":
            ranked = self.live.best_per_document(lambda depth: self._ranked(queries, depth, mode, query_emb, flt), k)
        else:
            raise ValueError(f"group_by must be 'doc' or None, got {group_by!r}")
        t2 = time.perf_counter()
        results = []
        for hits in ranked:
            passages = self.live.passages([r for r, _ in hits])
            results.append([_hit(p, s, rank) for rank, (p, (_, s)) in enumerate(zip(passages, hits, strict=True),
                                                                                 start=1)])
        if timings is not None:
            timings.update(encode_ms=1000 * (t1 - t0), search_ms=1000 * (t2 - t1),
                           fetch_ms=1000 * (time.perf_counter() - t2))
        return results

    def _ranked(self, queries: Sequence[str], k: int, mode: str, query_emb: np.ndarray | None,
                flt: Filter | None) -> list[list[tuple[int, float]]]:
        if mode == "dense":
            return self.live.search(query_emb, k, flt)
        if mode == "bm25":
            return self.live.bm25_search(queries, k, flt)
        return self.live.hybrid_search(query_emb, queries, k, self.fusion, flt)

    def passage(self, pid: str) -> Passage | None:
        return self.live.passage(pid)

    def upsert(self, doc: Document) -> dict[str, Any]:
        """Cut ``doc`` as the index's documents were, embed it and write it durably (see :class:`LiveIndex`)."""
        self.live.check_metadata_types(doc.metadata)
        encoder = self.passage_encoder()
        with self._tokenizer_lock if encoder is self.encoder else self._passage_lock:
            passages, vectors = embed_document(doc, self.live.chunk, encoder)
        return self.live.upsert(doc, passages, vectors)

    def passage_encoder(self) -> DualEncoder:
        """The encoder live documents are embedded with: the build's precision, so a live passage gets
        the vector a rebuild would give it. Queries may run int8 (``DPR_QUANTIZE``) while the build is
        fp32; then an fp32 copy of the model is loaded on the first write (ONNX fp32 and torch give the
        same vectors, so the runtime may differ)."""
        built = self.index.manifest["model"].get("quantize") or "none"
        if self.encoder.quantization == built:
            return self.encoder
        with self._passage_lock:
            if self._passage_encoder is None:
                logger.info("loading %s at the build's precision (%s) for live documents", self.model_dir, built)
                from retriever.runtime import prepare_as_built

                encoder = prepare_as_built(load_encoder(self.model_dir), self.index.manifest["model"])
                check_encoder(self.index.manifest, encoder)
                self._passage_encoder = encoder
            return self._passage_encoder

    def delete(self, doc_id: str) -> bool:
        return self.live.delete(doc_id)

    def health(self) -> str | None:
        """None while the index's files are the ones it opened; else what is wrong (for ``/readyz``)."""
        return self.index.health()

    def selfcheck(self) -> None:
        """One search in every mode the index serves, passages fetched: a build that opens but cannot
        answer is refused before it is swapped in. Raises :class:`EngineLoadError`."""
        modes = SEARCH_MODES if self.has_bm25 else ("dense",)
        probe = "test search of a new index"
        try:
            emb = self._embed([probe])                 # not through the query cache
            for mode in modes:
                self.search([probe], min(10, len(self)), mode=mode, query_emb=None if mode == "bm25" else emb)
        except Exception as e:  # noqa: BLE001 - any failure of a fresh build is a reason to refuse it
            raise EngineLoadError(f"{self.index_dir}: the index failed a test search: {type(e).__name__}: {e}",
                                  f"the index failed a test search ({type(e).__name__})") from e

    def summary(self) -> dict[str, Any]:
        return {**self.index.summary(), **self.live.summary(), "index_dir": str(self.index_dir),
                "model_dir": self.model_dir,
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.index.close()
            logger.info("closed index %s", self.index_dir)


class EngineHolder:
    """The current engine, swapped atomically; retired engines close after their last request."""

    def __init__(self, engine: Engine | None = None) -> None:
        self._current = engine
        self._lock = threading.Lock()
        # One reload at a time: two concurrent loads would double the memory for nothing.
        self.reload_lock = threading.Lock()

    @property
    def current(self) -> Engine | None:
        return self._current

    def acquire(self) -> Engine:
        with self._lock:
            engine = self._current
            if engine is None:
                raise NotReady("no index is loaded")
            engine._active += 1
            return engine

    def release(self, engine: Engine) -> None:
        with self._lock:
            engine._active -= 1
            close = engine._retired and engine._active == 0
        if close:
            engine.close()

    def swap(self, engine: Engine | None) -> Engine | None:
        """Make ``engine`` current; the previous one closes as soon as nobody uses it."""
        with self._lock:
            old, self._current = self._current, engine
            close = False
            if old is not None and old is not engine:
                old._retired = True
                close = old._active == 0
        if close:
            old.close()
        return old


def load_engine(index_dir: str | Path, model_dir: str | None = None, *, reuse: Engine | None = None,
                cache_size: int = 1024, quantize: str = "none", runtime: str = "torch",
                fusion: FusionConfig = FusionConfig(), solo_threads: int | None = None) -> Engine:
    """Open ``index_dir`` and the model it was built with (or ``model_dir``), refusing a mismatch.

    Everything is checked before the engine is returned: every file against the manifest (SHA-256),
    the model against the index, and one test search in every mode (:meth:`Engine.selfcheck`).
    ``reuse``: an engine whose encoder is kept when it is the model asked for (a reload of a newer
    build from the same model does not load the weights again). ``quantize`` ("int8") and ``runtime``
    ("onnx"): how queries are encoded, :func:`retriever.runtime.prepare_encoder` (an index embedded at
    another precision is served with a warning, not refused: same weights). ``solo_threads``: ONNX
    Runtime threads of a query encoded while no other is (:class:`retriever.onnx_runtime.OrtTower`).
    """
    from retriever.quantize import check_mode, quantization_mismatch
    from retriever.runtime import check_runtime, prepare_encoder

    check_mode(quantize)
    check_runtime(runtime)
    index = SearchIndex.open(index_dir)
    try:
        ref = model_ref(model_dir) if model_dir else index.model_dir
        if not ref:
            raise EngineLoadError(f"{index.build_dir / 'manifest.json'}: records no model_dir; pass --model",
                                  "the index's manifest records no model_dir")
        if (reuse is not None and reuse.model_dir == ref and reuse.encoder.quantization == quantize
                and reuse.encoder.runtime == runtime):
            encoder = reuse.encoder
        else:
            logger.info("loading model %s", ref)
            try:
                encoder = load_encoder(ref)
            except Exception as e:  # noqa: BLE001 - transformers raises many types; all mean "not a model"
                raise EngineLoadError(f"cannot load model {ref!r} for index {index_dir}: {e}",
                                      f"cannot load the model the index names ({type(e).__name__}; see the "
                                      "server log)") from e
            try:
                prepare_encoder(encoder, runtime, quantize, solo_threads=solo_threads)
            except (RuntimeError, ValueError) as e:
                raise EngineLoadError(f"cannot run model {ref!r} as runtime={runtime}, quantize={quantize}: {e}") from e
        try:
            check_encoder(index.manifest, encoder)
        except ManifestMismatch as e:
            raise ManifestMismatch(f"{index_dir} with model {ref}: {e}", getattr(e, "differences", None)) from None
        built = index.manifest["model"].get("quantize") or "none"
        warning = quantization_mismatch(built, quantize)
        if warning:
            # int8 queries over fp32 passages is the serving default, measured (bench/quantize.py); bf16
            # passages are within cosine 0.99998 of fp32 ones, so the same pairing; others are not measured.
            (logger.info if quantize == "int8" and built in ("none", "bf16") else logger.warning)("%s: %s", index_dir,
                                                                                                 warning)
        engine = Engine(index, encoder, model_dir=ref, cache_size=cache_size, fusion=fusion)
        engine.selfcheck()
    except BaseException:
        index.close()
        raise
    logger.info("serving %s (build %s, %d passages, dim %d) with model %s", index_dir, index.build, len(index),
                index.dim, ref)
    return engine


def _hit(passage: Passage, score: float, rank: int) -> dict[str, Any]:
    hit = {"id": passage.pid, "title": passage.title, "text": passage.text, "score": score, "rank": rank,
           "doc_id": passage.doc}
    if passage.start is not None:
        hit["start"], hit["end"] = passage.start, passage.end
    if passage.metadata:
        hit["metadata"] = passage.metadata
    return hit
