"""``build_index``: embed a knowledge base and write an index directory atomically.

Passages whose content (``sha1(title + "\\n" + text)``) is already in the index at ``out_dir``,
built by an encoder with the same weights and config, keep their vectors; only new or changed
passages are embedded.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from indexer.bm25_files import same_passage_hashes, write_bm25
from indexer.config import IndexConfig
from indexer.faiss_index import check_buildable, create_index, write_faiss
from indexer.manifest import (
    CONFIG_FILE, EMBEDDINGS_FILE, FAISS_FILE, FORMAT_VERSION, HASHES_FILE, MANIFEST_FILE, STORE_FILE,
    encoder_differences, file_entries, kb_sources, read_manifest,
)
from indexer.store import write_store
from retriever.atomic import atomic_dir
from retriever.config import write_json
from retriever.data import Passage, load_corpus
from retriever.encoder import DualEncoder, model_ref

logger = logging.getLogger(__name__)

# Hex, not raw digests: numpy drops trailing NUL bytes of "S" values, which broke 1 digest in 256.
HASH_DTYPE = np.dtype("S40")


def content_hash(passage: Passage) -> str:
    """The embedding-cache key, hex SHA-1 of what the passage encoder sees (the id plays no part)."""
    return hashlib.sha1(f"{passage.title}\n{passage.text}".encode("utf-8")).hexdigest()


def load_cached_vectors(index_dir: Path, description: dict[str, Any]) -> dict[str, np.ndarray]:
    """Vectors of a previous build at ``index_dir`` by content hash, if its encoder matches; else ``{}``.

    A missing, foreign or damaged previous index only means no reuse; the build goes on.
    """
    if not (index_dir / MANIFEST_FILE).exists():
        return {}
    try:
        manifest = read_manifest(index_dir)
        diffs = encoder_differences(manifest["model"], description)
        if diffs:
            logger.info("not reusing embeddings from %s: encoder differs in %s", index_dir, [d[0] for d in diffs])
            return {}
        vectors = np.load(index_dir / EMBEDDINGS_FILE, allow_pickle=False)
        hashes = np.load(index_dir / HASHES_FILE, allow_pickle=False)
    except (ValueError, OSError) as e:
        logger.warning("not reusing embeddings from %s: %s", index_dir, e)
        return {}
    n = manifest["count"]
    if (vectors.dtype != np.float32 or vectors.shape != (n, description["dim"])
            or hashes.dtype != HASH_DTYPE or hashes.shape != (n,)):
        logger.warning("not reusing embeddings from %s: %s/%s do not match its manifest",
                       index_dir, EMBEDDINGS_FILE, HASHES_FILE)
        return {}
    return {h.decode("ascii"): vectors[i] for i, h in enumerate(hashes.tolist())}


def embed_with_cache(encoder: DualEncoder, passages: Sequence[Passage], hashes: Sequence[str],
                     cache: dict[str, np.ndarray], batch_size: int, progress: bool) -> tuple[np.ndarray, dict]:
    """Embeddings for ``passages`` (float32 [n, d]), and stats: reused, embedded, seconds, passages/s."""
    vectors = np.empty((len(passages), encoder.dim), dtype=np.float32)
    todo = []
    for i, h in enumerate(hashes):
        cached = cache.get(h)
        if cached is None:
            todo.append(i)
        else:
            vectors[i] = cached
    start = time.perf_counter()
    if todo:
        vectors[todo] = encoder.encode_passages([passages[i] for i in todo], batch_size=batch_size,
                                                progress=progress)
    seconds = time.perf_counter() - start
    if not np.isfinite(vectors).all():
        raise RuntimeError("the encoder produced non-finite passage embeddings (NaN or inf); index not written")
    stats = {"reused": len(passages) - len(todo), "embedded": len(todo), "embed_seconds": round(seconds, 3),
             "passages_per_s": round(len(todo) / seconds, 1) if todo and seconds > 0 else None}
    logger.info("embeddings: %d reused from the previous index, %d embedded in %.1fs%s", stats["reused"],
                stats["embedded"], seconds,
                f" ({stats['passages_per_s']} passages/s)" if stats["passages_per_s"] else "")
    return vectors, stats


def _previous_manifest(out_dir: Path) -> dict[str, Any] | None:
    if not (out_dir / MANIFEST_FILE).exists():
        return None
    try:
        return read_manifest(out_dir)
    except ValueError:
        return None


def _check_target(out_dir: Path) -> None:
    """The build replaces ``out_dir`` wholesale: never let that be a directory of someone's files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).exists():
        raise ValueError(f"{out_dir}: exists and is not an index directory (no {MANIFEST_FILE}); "
                         "refusing to replace it")


def build_index(
    encoder: DualEncoder,
    kb_paths: Sequence[str | Path],
    out_dir: str | Path,
    config: IndexConfig = IndexConfig(),
    model_dir: str | Path | None = None,
    progress: bool = True,
    bm25: bool = True,
) -> Path:
    """Embed the knowledge base at ``kb_paths`` and write an index to ``out_dir`` atomically.

    ``model_dir`` is the model reference the manifest records for the server: a saved model dir
    (recorded as an absolute path) or an alias such as ``minilm``. Bad KB input raises ``DataError`` before anything
    is written; a failure at any later point leaves a previous index at ``out_dir`` untouched. A
    non-empty ``out_dir`` that is not an index is refused rather than replaced. With ``bm25`` a BM25
    index is written to ``out_dir/bm25/`` in the same build (copied from the previous build when
    its passages are the same).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_target(out_dir)
    if isinstance(kb_paths, (str, Path)):
        kb_paths = [kb_paths]
    passages = load_corpus(list(kb_paths))
    sources = kb_sources(kb_paths)
    description = encoder.describe()
    if model_dir is None:
        logger.warning("no model_dir given: the index will not record which model to load for serving")
    resolved = config.resolve(len(passages), encoder.dim)
    check_buildable(len(passages), resolved)
    hashes = [content_hash(p) for p in passages]
    cache = load_cached_vectors(out_dir, description)
    vectors, stats = embed_with_cache(encoder, passages, hashes, cache, config.batch_size, progress)
    del cache
    index = create_index(vectors, resolved, progress=progress)
    hash_array = np.array([h.encode("ascii") for h in hashes], dtype=HASH_DTYPE)
    previous_manifest = _previous_manifest(out_dir) if bm25 else None

    with atomic_dir(out_dir) as tmp:
        write_faiss(index, tmp / FAISS_FILE)
        np.save(tmp / EMBEDDINGS_FILE, vectors, allow_pickle=False)
        np.save(tmp / HASHES_FILE, hash_array, allow_pickle=False)
        write_store(tmp / STORE_FILE, passages, hashes)
        write_json(tmp / CONFIG_FILE, resolved.to_dict())
        bm25_entry = None
        if bm25:
            same = previous_manifest is not None and same_passage_hashes(out_dir, hash_array)
            bm25_entry = write_bm25(tmp, passages, out_dir, previous_manifest, same, progress)
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": description,
            "model_dir": None if model_dir is None else model_ref(model_dir),
            "pooling": encoder.config.pooling,
            "similarity": encoder.config.similarity,
            "normalize": encoder.config.normalize,
            "dim": encoder.dim,
            "count": len(passages),
            "index_type": resolved.index_type,
            "index_params": resolved.to_dict(),
            "kb": sources,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build": {**stats, "seconds": round(time.perf_counter() - started, 3)},
            "files": file_entries(tmp),
        }
        if bm25_entry is not None:
            manifest["bm25"] = bm25_entry
        # Written last: a directory with a manifest is a finished index.
        write_json(tmp / MANIFEST_FILE, manifest)
    logger.info("indexed %d passages (%s, dim %d) into %s in %.1fs", len(passages), resolved.index_type,
                encoder.dim, out_dir, time.perf_counter() - started)
    return out_dir
