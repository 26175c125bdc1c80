"""The dense rows' search in the recall benchmark: encode the knowledge base once (its vectors cached
by :mod:`bench.reuse`), then exact search, by passage or -- for a row with a ``chunk`` spec -- by
document, each passage record cut into pieces and ranked by its best one."""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.reuse import cached_vectors, store_vectors, vectors_key
from common.data import Passage
from eval.retrieve import Retrieval, _from_rows, exact_search, exact_search_by_group
from indexer.chunking import ChunkSpec, check_token_window, chunk_passages

logger = logging.getLogger(__name__)


def encode_and_search(encoder: Any, kb: Sequence[Passage], query_sets: Sequence[Mapping[str, str]], k: int,
                       batch_size: int, progress: bool, cache: Path | None = None,
                       chunk: str | None = None) -> list[Retrieval]:
    """Encode the knowledge base once (or take its vectors from ``cache``, :mod:`bench.reuse`) and rank
    it for each query set; with ``chunk``, each passage record is cut by that spec and ranked by its
    best piece (what an index built with ``dpr index --chunk`` does for documents)."""
    start = time.perf_counter()
    pieces, starts = kb, None
    if chunk is not None:
        spec = ChunkSpec.parse(chunk)
        check_token_window(spec, encoder.config.passage_max_length)
        pieces, starts = chunk_passages(kb, spec, encoder.tokenizer if spec.unit == "tokens" else None)
    key = vectors_key(encoder, pieces) if cache is not None else None
    hit = cached_vectors(cache, key) if cache is not None else None
    if hit is not None:
        p_emb, earlier = hit
        logger.info("%s: reusing the passage vectors of the same model and passages", cache)
        timings = {**earlier, "vectors_reused": True}
    else:
        p_emb = encoder.encode_passages(pieces, batch_size=batch_size, progress=progress)
        encode_s = time.perf_counter() - start
        timings = {"encode_passages_s": round(encode_s, 3), "passages_per_s": round(len(pieces) / encode_s, 1),
                   **({"pieces": len(pieces)} if starts is not None else {})}
        if cache is not None:
            store_vectors(cache, key, p_emb, timings)
    vectors_s = time.perf_counter() - start
    out = []
    for queries in query_sets:
        t0 = time.perf_counter()
        q_emb = encoder.encode_queries(list(queries.values()), batch_size=batch_size, progress=progress)
        found = exact_search(q_emb, p_emb, k) if starts is None else exact_search_by_group(q_emb, p_emb, starts, k)
        retrieval = _from_rows(list(queries), *found, kb)
        retrieval.seconds = vectors_s + time.perf_counter() - t0
        retrieval.timings = dict(timings)
        out.append(retrieval)
    return out
