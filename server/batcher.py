"""Micro-batching for ``POST /search``: concurrent single queries are encoded and searched together.

On a CPU the encoder dominates a query's cost, and one forward pass over 16 short queries costs far
less than 16 passes over one (one set of weight reads, wider matmuls, one thread-pool wake-up).
Requests are put on a queue; a collector takes the first one and whatever else is queued (never
more than ``max_size``) and runs the batch in a worker thread. At most ``workers`` batches run at
once, so while the cores are busy the queue fills and the next batch is simply bigger: batching
grows with load by itself. Only while another batch is running does the collector also wait up to
``max_wait_ms`` for stragglers; on an idle server a lone query is never held back.

What does not change with batching:

- Hot swap: each request still takes its engine from :class:`server.engine.EngineHolder` at its
  start and gives it back at its end (``EngineDep``). A batch only groups requests holding the same
  engine, so it never mixes two indexes, and that engine cannot close while the batch runs.
- Errors stay per request: if a group's batched search fails, each of its requests is retried
  alone, and only the ones that fail again get the error.
- The query-embedding LRU (:meth:`Engine.encode` looks up each query before encoding the misses).
- Modes: requests are grouped by ``(mode, k)``; the dense/hybrid ones share one encode.

The queue is bounded (``max_queue``): when it is full a request is refused at once with
:class:`server.errors.Overloaded` (503 + ``Retry-After``) rather than waiting behind thousands.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import numpy as np

from server.engine import Engine
from server.errors import Overloaded
from server.settings import Settings

logger = logging.getLogger(__name__)

Hits = list[dict[str, Any]]


@dataclass
class _Item:
    engine: Engine
    query: str
    k: int
    mode: str                  # a search mode, or "embed-query" / "embed-passage" (``texts`` then)
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    texts: tuple[str, ...] = ()


class BatcherClosed(RuntimeError):
    """The server is shutting down; the request was not run."""


class MicroBatcher:
    """Queue single searches and run them in batches; :meth:`search` is what a route awaits."""

    def __init__(self, settings: Settings, *, workers: int, limiter: anyio.CapacityLimiter | None = None) -> None:
        self.settings = settings
        self.max_wait_s = settings.microbatch_max_wait_ms / 1000
        self.max_size = settings.microbatch_max_size
        self.max_queue = settings.max_queue
        self.workers = workers
        self._limiter = limiter
        self._queue: asyncio.Queue[_Item] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._collector: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self.batches = 0
        self.batched_queries = 0

    # ------------------------------------------------------------------ lifecycle (inside the event loop)

    def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._slots = asyncio.Semaphore(self.workers)
        self._collector = asyncio.get_running_loop().create_task(self._collect(), name="microbatch-collector")
        logger.info("micro-batching on: max wait %.1f ms, max batch %d, %d batch(es) at once",
                    self.max_wait_s * 1000, self.max_size, self.workers)

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
            self._collector = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._queue is not None and not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(BatcherClosed("the server is shutting down"))

    @property
    def mean_batch_size(self) -> float:
        return self.batched_queries / self.batches if self.batches else 0.0

    # ------------------------------------------------------------------ the route's side

    async def search(self, engine: Engine, query: str, k: int, mode: str) -> tuple[Hits, dict[str, float]]:
        """Hits for one query, and its timings (``queue_ms``, ``encode_ms``, ``search_ms``, ``fetch_ms``,
        ``batch``: how many requests shared the batch; encode/search/fetch are the batch's)."""
        return await self._submit(_Item(engine, query, k, mode, asyncio.get_running_loop().create_future()))

    async def embed(self, engine: Engine, texts: list[str], kind: str) -> tuple[tuple[np.ndarray, list[int]], dict]:
        """``(vectors [n, d], token counts)`` for ``texts`` as ``kind`` (query or passage), batched with
        the other requests' texts of the same kind; and the timings."""
        return await self._submit(_Item(engine, "", 0, f"embed-{kind}", asyncio.get_running_loop().create_future(),
                                        texts=tuple(texts)))

    async def _submit(self, item: _Item) -> Any:
        if self._queue is None or self._collector is None:
            raise BatcherClosed("the micro-batcher is not running")
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Overloaded(self.max_queue) from None
        return await item.future

    # ------------------------------------------------------------------ the collector

    async def _collect(self) -> None:
        assert self._queue is not None and self._slots is not None
        loop = asyncio.get_running_loop()
        while True:
            # A free slot first, then the batch: while every slot is busy the queue keeps filling.
            await self._slots.acquire()
            try:
                batch = [await self._queue.get()]
                # Idle server: nobody else is about to arrive for sure, so waiting is pure latency.
                wait = self.max_wait_s if self._running else 0.0
                deadline = loop.time() + wait
                while len(batch) < self.max_size:
                    if not self._queue.empty():
                        batch.append(self._queue.get_nowait())
                        continue
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                    except asyncio.TimeoutError:
                        break
            except BaseException:
                self._slots.release()
                raise
            task = loop.create_task(self._dispatch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _dispatch(self, batch: list[_Item]) -> None:
        assert self._slots is not None
        try:
            live = [item for item in batch if not item.future.done()]     # a cancelled client is skipped
            if not live:
                return
            started = time.perf_counter()
            try:
                outcomes = await anyio.to_thread.run_sync(self.run_batch, live, limiter=self._limiter)
            except BaseException as e:                                     # noqa: BLE001 - handed to every request
                outcomes = [e] * len(live)
            self.batches += 1
            self.batched_queries += len(live)
            for item, outcome in zip(live, outcomes, strict=True):
                if item.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    hits, timings = outcome
                    timings["queue_ms"] = 1000 * (started - item.enqueued)
                    item.future.set_result((hits, timings))
        finally:
            self._slots.release()

    # ------------------------------------------------------------------ one batch (worker thread)

    def run_batch(self, items: list[_Item]) -> list[tuple[Hits, dict[str, float]] | BaseException]:
        """Each item's ``(hits, timings)`` or the exception its search raised, in order."""
        out: list[Any] = [None] * len(items)
        by_engine: dict[int, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            by_engine[id(item.engine)].append(i)
        for positions in by_engine.values():
            self._run_engine(items, positions, out)
        return out

    def _run_engine(self, items: list[_Item], positions: list[int], out: list[Any]) -> None:
        engine = items[positions[0]].engine
        embeds = [i for i in positions if items[i].mode.startswith("embed-")]
        if embeds:
            self._run_embeds(engine, items, embeds, out)
            positions = [i for i in positions if i not in set(embeds)]
            if not positions:
                return
        dense = [i for i in positions if items[i].mode != "bm25"]
        embeddings: dict[int, np.ndarray] = {}
        encode_ms = 0.0
        if dense:
            start = time.perf_counter()
            try:
                vectors = engine.encode([items[i].query for i in dense])   # [n, d], one forward pass
                embeddings = {i: vectors[j] for j, i in enumerate(dense)}
            except Exception:                                              # noqa: BLE001 - retried one by one
                logger.warning("batched encode of %d queries failed; encoding them one by one", len(dense),
                               exc_info=True)
            encode_ms = 1000 * (time.perf_counter() - start)
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        for i in positions:
            groups[(items[i].mode, items[i].k)].append(i)
        for (mode, k), members in groups.items():
            have = mode == "bm25" or all(i in embeddings for i in members)
            if have:
                try:
                    timings: dict[str, float] = {}
                    emb = None if mode == "bm25" else np.stack([embeddings[i] for i in members])
                    results = self._search(engine, [items[i].query for i in members], k, mode, emb, timings)
                    timings.update(encode_ms=encode_ms if mode != "bm25" else 0.0, batch=float(len(positions)))
                    for i, hits in zip(members, results, strict=True):
                        out[i] = (hits, dict(timings))
                    continue
                except Exception:                                          # noqa: BLE001 - retried one by one
                    logger.warning("batched %s search of %d queries failed; retrying them one by one", mode,
                                   len(members), exc_info=True)
            for i in members:
                out[i] = self._alone(engine, items[i])

    def _run_embeds(self, engine: Engine, items: list[_Item], positions: list[int], out: list[Any]) -> None:
        for kind in ("query", "passage"):
            members = [i for i in positions if items[i].mode == f"embed-{kind}"]
            if not members:
                continue
            start = time.perf_counter()
            try:
                vectors, tokens = engine.embed([t for i in members for t in items[i].texts], kind)
            except Exception:                                              # noqa: BLE001 - retried one by one
                logger.warning("batched embedding of %d requests failed; retrying them one by one", len(members),
                               exc_info=True)
                for i in members:
                    try:
                        out[i] = (engine.embed(list(items[i].texts), kind), {"batch": 1.0})
                    except Exception as e:                                 # noqa: BLE001 - this request's error
                        out[i] = e
                continue
            timings = {"encode_ms": 1000 * (time.perf_counter() - start), "batch": float(len(members))}
            at = 0
            for i in members:
                n = len(items[i].texts)
                out[i] = ((vectors[at:at + n], tokens[at:at + n]), dict(timings))
                at += n

    def _alone(self, engine: Engine, item: _Item) -> tuple[Hits, dict[str, float]] | BaseException:
        try:
            timings: dict[str, float] = {}
            (hits,) = self._search(engine, [item.query], item.k, item.mode, None, timings)
            timings["batch"] = 1.0
            return hits, timings
        except Exception as e:                                             # noqa: BLE001 - this request's error
            return e

    def _search(self, engine: Engine, queries: list[str], k: int, mode: str, emb: np.ndarray | None,
                timings: dict[str, float]) -> list[Hits]:
        return engine.search(queries, k, mode=mode, query_emb=emb, timings=timings)
