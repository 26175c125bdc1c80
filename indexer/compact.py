"""``dpr index compact``: fold the live segment and its tombstones into a new build.

The log is rotated first, so writes go on (into the new file) while the build is made; the files
before it are folded: the build's passages minus the deleted and replaced ones, in row order, then
the live passages in the order they were written, every vector reused (nothing is embedded), the
BM25 index rebuilt over the result. The new build records ``live_from`` = the new file, so a server
that reloads it applies exactly the writes made since (:mod:`indexer.live_log`). Its passages,
vectors and metadata are those of a fresh build of the same documents.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from indexer.build import HASH_DTYPE, build_index_from_vectors, content_hash
from indexer.builds import DEFAULT_KEEP
from indexer.live_index import LiveIndex
from indexer.live_log import LiveLog
from indexer.manifest import HASHES_FILE, documents_entry
from indexer.searcher import SearchIndex

logger = logging.getLogger(__name__)


def compact(index_dir: str | Path, progress: bool = True, keep_builds: int = DEFAULT_KEEP) -> dict[str, Any]:
    """Publish the build ``index_dir`` serves plus its live segment as a new build; returns what it did."""
    started = time.perf_counter()
    index_dir = Path(index_dir)
    log = LiveLog(index_dir)
    with SearchIndex.open(index_dir) as index:
        live_from = documents_entry(index.manifest)["live_from"]
        stop = log.rotate()
        live = LiveIndex(index, stop=stop)
        view = live.segment.view()
        n = len(index)
        keep = np.ones(n, dtype=bool)
        keep[view.base_dead] = False
        base_rows = np.flatnonzero(keep)
        slots = np.flatnonzero(~view.dead[:view.count])
        passages = [p for p, k in zip(index.all_passages(), keep, strict=True) if k]
        passages += [view.passages[s] for s in slots]
        if not passages:
            raise ValueError(f"{index_dir}: every passage is deleted; an index cannot be empty (nothing compacted)")
        vectors = np.concatenate([index.embeddings[base_rows], view.vectors[slots]])       # [m, d]
        base_hashes = np.load(index.build_dir / HASHES_FILE, allow_pickle=False)
        if base_hashes.dtype != HASH_DTYPE:
            raise ValueError(f"{index.build_dir / HASHES_FILE}: unexpected dtype {base_hashes.dtype}")
        hashes = [h.decode("ascii") for h in base_hashes[base_rows].tolist()]
        hashes += [content_hash(view.passages[s]) for s in slots]
        stats = {"from_build": index.build, "live_files": [live_from, stop - 1], "kept": int(len(base_rows)),
                 "deleted": int(n - len(base_rows)), "live_passages": int(len(slots)), "embedded": 0,
                 "reused": len(passages)}
        build_index_from_vectors(np.ascontiguousarray(vectors, dtype=np.float32), passages, index_dir, index.config,
                                 index.manifest["model"], index.manifest.get("model_dir"), hashes=hashes,
                                 kb=index.manifest.get("kb") or [], build_stats=stats, bm25=index.bm25 is not None,
                                 progress=progress, started=started, keep_builds=keep_builds, chunk=live.chunk,
                                 live_from=stop, extra={"compacted": stats})
    logger.info("compacted %s: %d passages kept, %d deleted, %d live folded in", index_dir, stats["kept"],
                stats["deleted"], stats["live_passages"])
    return {**stats, "passages": len(passages), "seconds": round(time.perf_counter() - started, 3)}
