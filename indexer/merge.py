"""``dpr index merge``: check embedding shards from several machines and assemble one index.

The merge streams: vectors are read from the shards' chunk files one at a time (for IVF/PQ, a
training sample first), written to ``embeddings.npy`` and added to the FAISS index as they come, so
its memory is one chunk plus the index (plus the sample), not the corpus (:mod:`indexer.sources`).

The shards must come from one model and one knowledge base (same sources, same SHA-256), number
``0..N-1`` of the same ``N`` with no shard missing or repeated, and cover the KB rows exactly; the
passage ids and content hashes each shard recorded must be the KB's at those rows. Any problem is
an error naming the shard directory, and nothing is written.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.data import load_corpus
from common.files import read_json
from indexer.build import build_index_from_vectors, content_hash
from indexer.builds import DEFAULT_KEEP
from indexer.config import IndexConfig
from indexer.errors import ShardError
from indexer.manifest import encoder_differences, kb_sources
from indexer.shards import SHARD_FILE, ShardData, ShardSpec, read_shard, shards_source
from indexer.sources import ChunkSource

logger = logging.getLogger(__name__)


def _headers(shard_dirs: Sequence[Path]) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for d in shard_dirs:
        head = d / SHARD_FILE
        if not head.is_file():
            raise ShardError(f"{d}: not a shard directory (no {SHARD_FILE})")
        header = read_json(head)
        if not isinstance(header, dict) or not isinstance(header.get("shard"), list):
            raise ShardError(f"{head}: not a shard header")
        out.append((d, header))
    return out


def check_shard_set(headers: list[tuple[Path, dict[str, Any]]]) -> list[tuple[Path, dict[str, Any]]]:
    """The shards in order 0..N-1, after checking they are one complete, consistent set."""
    if not headers:
        raise ShardError("no shard directories given")
    first_dir, first = headers[0]
    n, total = first["shard"][1], first["total"]
    by_index: dict[int, Path] = {}
    for d, h in headers:
        diffs = [label for label, _, _ in encoder_differences(first["model"], h["model"])]
        if diffs:
            raise ShardError(f"{d}: embedded by another model than {first_dir} (differs in {diffs})")
        if [s["sha256"] for s in h["kb"]] != [s["sha256"] for s in first["kb"]]:
            raise ShardError(f"{d}: embedded from other knowledge-base files than {first_dir} (SHA-256 differs)")
        if h["shard"][1] != n or h["total"] != total:
            raise ShardError(f"{d}: shard {h['shard'][0]}/{h['shard'][1]} of {h['total']} passages does not "
                             f"belong with {first_dir} (shard of {n}, {total} passages)")
        i = h["shard"][0]
        if i in by_index:
            raise ShardError(f"shard {i}/{n} given twice: {by_index[i]} and {d}")
        by_index[i] = d
        if h["rows"] != list(ShardSpec(i, n).rows(total)):
            raise ShardError(f"{d}: rows {h['rows']} are not shard {i}/{n}'s {list(ShardSpec(i, n).rows(total))}")
        if not h.get("complete"):
            raise ShardError(f"{d}: shard {i}/{n} is unfinished; re-run its `dpr index --shard {i}/{n}` command")
    missing = sorted(set(range(n)) - set(by_index))
    if missing:
        raise ShardError(f"shards {', '.join(f'{i}/{n}' for i in missing)} missing (given: "
                         f"{', '.join(f'{i}/{n}' for i in sorted(by_index))})")
    order = {d: h for d, h in headers}
    return [(by_index[i], order[by_index[i]]) for i in range(n)]


def merge_shards(shard_dirs: Sequence[str | Path], out_dir: str | Path, config: IndexConfig = IndexConfig(),
                 kb_paths: Sequence[str | Path] | None = None, bm25: bool = True, progress: bool = True,
                 keep_builds: int = DEFAULT_KEEP, streaming: bool = True) -> Path:
    """Assemble the index at ``out_dir`` from the shard directories (any order).

    ``kb_paths`` overrides where the KB files are (e.g. another mount on the merging machine); they
    must have the SHA-256 the shards recorded. ``streaming=False`` loads every vector first (the old
    in-memory merge, kept to measure against).
    """
    started = time.perf_counter()
    shards = check_shard_set(_headers([Path(d) for d in shard_dirs]))
    header = shards[0][1]
    recorded = header["kb"]
    paths = list(kb_paths) if kb_paths else [s["path"] for s in recorded]
    sources = kb_sources(paths)
    if [s["sha256"] for s in sources] != [s["sha256"] for s in recorded]:
        raise ShardError(f"knowledge base {[str(p) for p in paths]} differs from the one the shards were "
                         f"embedded from ({[s['file'] for s in recorded]}, SHA-256 differs)")
    passages = load_corpus(paths)
    if len(passages) != header["total"]:
        raise ShardError(f"knowledge base has {len(passages)} passages, the shards say {header['total']}")
    parts: list[ShardData] = []
    for d, _ in shards:
        data = read_shard(d)
        a, b = data.header["rows"]
        for offset, (pid, h) in enumerate(zip(data.ids, data.hashes)):
            p = passages[a + offset]
            if pid != p.pid or h != content_hash(p):
                raise ShardError(f"{d}: row {a + offset} holds passage {pid!r}, the knowledge base has {p.pid!r} "
                                 "(or its content changed)")
        parts.append(data)
    if streaming:
        vectors: np.ndarray | ChunkSource = shards_source(parts)
    else:
        vectors = np.concatenate([p.vectors for p in parts])
    hashes = [h for p in parts for h in p.hashes]
    stats = {"merged_shards": len(parts), "shard_dtype": header["dtype"], "reused": 0, "embedded": 0,
             "streaming": streaming}
    logger.info("merging %d shards (%d passages, %s)", len(parts), len(passages), header["dtype"])
    return build_index_from_vectors(vectors, passages, out_dir, config, header["model"], header.get("model_dir"),
                                    hashes=hashes, kb=sources, build_stats=stats, bm25=bm25, progress=progress,
                                    started=started, keep_builds=keep_builds)
