"""``build_index``: embed a knowledge base and write an index directory atomically.

Passages whose content (``sha1(title + "\\n" + text)``) is already in the index at ``out_dir``,
built by an encoder with the same weights and config, keep their vectors; only new or changed
passages are embedded. Embeddings go to resumable chunk files in a work directory first
(:mod:`indexer.shards`), so a killed build re-run with the same arguments embeds only what is
missing; ``out_dir`` is replaced only by the final atomic rename.
:func:`build_index_from_vectors` writes an index from vectors already at hand (shard merge, benchmarks).
"""
from __future__ import annotations

import hashlib
import logging
import shutil
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
from indexer.shards import DEFAULT_CHUNK, ShardSpec, embed_rows, make_header, prepare_work_dir, read_shard
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


def default_work_dir(out_dir: str | Path) -> Path:
    """Where a build of ``out_dir`` keeps its resumable embedding chunks: a sibling ``<name>.work``."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}.work")


def build_index(
    encoder: DualEncoder,
    kb_paths: Sequence[str | Path],
    out_dir: str | Path,
    config: IndexConfig = IndexConfig(),
    model_dir: str | Path | None = None,
    progress: bool = True,
    bm25: bool = True,
    work_dir: str | Path | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> Path:
    """Embed the knowledge base at ``kb_paths`` and write an index to ``out_dir`` atomically.

    ``model_dir`` is the model reference the manifest records for the server: a saved model dir
    (recorded as an absolute path) or an alias such as ``minilm``. Bad KB input raises ``DataError`` before anything
    is written; a failure at any later point leaves a previous index at ``out_dir`` untouched. A
    non-empty ``out_dir`` that is not an index is refused rather than replaced. With ``bm25`` a BM25
    index is written to ``out_dir/bm25/`` in the same build (copied from the previous build when
    its passages are the same). Embeddings are written in chunks of ``chunk_size`` to ``work_dir``
    (default ``<out_dir>.work``), reused by a re-run after a crash, and removed after success.
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
    work = Path(work_dir) if work_dir is not None else default_work_dir(out_dir)
    ref = None if model_dir is None else model_ref(model_dir)
    header = make_header(description, ref, sources, ShardSpec(0, 1), len(passages), "float32", chunk_size)
    prepare_work_dir(work, header, reset_on_mismatch=True)
    cache = load_cached_vectors(out_dir, description)
    stats = embed_rows(encoder, passages, hashes, work, header, cache, config.batch_size, progress)
    del cache
    vectors = read_shard(work, verify=False).vectors
    build_index_from_vectors(vectors, passages, out_dir, config, description, model_dir, hashes=hashes,
                             kb=sources, build_stats=stats, bm25=bm25, progress=progress, started=started)
    shutil.rmtree(work, ignore_errors=True)
    return out_dir


def build_index_from_vectors(
    vectors: np.ndarray,
    passages: Sequence[Passage],
    out_dir: str | Path,
    config: IndexConfig,
    model_description: dict[str, Any],
    model_dir: str | Path | None,
    *,
    hashes: Sequence[str] | None = None,
    kb: list[dict[str, Any]] | None = None,
    build_stats: dict[str, Any] | None = None,
    bm25: bool = True,
    progress: bool = True,
    started: float | None = None,
) -> Path:
    """Write an index over ``vectors`` (float32 [n, d], row i = ``passages[i]``) to ``out_dir`` atomically.

    ``model_description`` is the ``DualEncoder.describe()`` of the model the vectors come from and
    ``model_dir`` its reference for the server, so the index opens with that model like any other.
    """
    started = time.perf_counter() if started is None else started
    out_dir = Path(out_dir)
    _check_target(out_dir)
    dim = int(model_description["dim"])
    if vectors.ndim != 2 or vectors.shape != (len(passages), dim):
        raise ValueError(f"vectors have shape {vectors.shape}, expected ({len(passages)}, {dim}) "
                         "(one row per passage, the model's dim)")
    if vectors.dtype != np.float32:
        raise ValueError(f"vectors must be float32, got {vectors.dtype}")
    if not np.isfinite(vectors).all():
        raise RuntimeError("non-finite passage embeddings (NaN or inf); index not written")
    resolved = config.resolve(len(passages), dim)
    check_buildable(len(passages), resolved)
    hashes = [content_hash(p) for p in passages] if hashes is None else list(hashes)
    encoder_config = model_description.get("encoder") or {}
    index = create_index(vectors, resolved, progress=progress)
    hash_array = np.array([h.encode("ascii") for h in hashes], dtype=HASH_DTYPE)
    previous_manifest = _previous_manifest(out_dir) if bm25 else None
    stats = build_stats or {}

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
            "model": model_description,
            "model_dir": None if model_dir is None else model_ref(model_dir),
            "pooling": encoder_config.get("pooling"),
            "similarity": encoder_config.get("similarity"),
            "normalize": model_description.get("normalize"),
            "dim": dim,
            "count": len(passages),
            "index_type": resolved.index_type,
            "index_params": resolved.to_dict(),
            "kb": kb or [],
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build": {**stats, "seconds": round(time.perf_counter() - started, 3)},
            "files": file_entries(tmp),
        }
        if bm25_entry is not None:
            manifest["bm25"] = bm25_entry
        # Written last: a directory with a manifest is a finished index.
        write_json(tmp / MANIFEST_FILE, manifest)
    logger.info("indexed %d passages (%s, dim %d) into %s in %.1fs", len(passages), resolved.index_type,
                dim, out_dir, time.perf_counter() - started)
    return out_dir


def embed_shard(
    encoder: DualEncoder,
    kb_paths: Sequence[str | Path],
    out_dir: str | Path,
    spec: ShardSpec,
    model_dir: str | Path | None = None,
    dtype: str = "float32",
    chunk_size: int = DEFAULT_CHUNK,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed shard ``spec`` (contiguous KB rows) into the shard directory ``out_dir``; resumable.

    Returns the stats of :func:`indexer.shards.embed_rows` plus ``rows``. ``dpr index merge`` turns
    the N shard directories into an index.
    """
    out_dir = Path(out_dir)
    if isinstance(kb_paths, (str, Path)):
        kb_paths = [kb_paths]
    passages = load_corpus(list(kb_paths))
    sources = kb_sources(kb_paths)
    ref = None if model_dir is None else model_ref(model_dir)
    header = make_header(encoder.describe(), ref, sources, spec, len(passages), dtype, chunk_size)
    prepare_work_dir(out_dir, header, reset_on_mismatch=False)
    start, stop = header["rows"]
    hashes = [""] * start + [content_hash(p) for p in passages[start:stop]] + [""] * (len(passages) - stop)
    stats = embed_rows(encoder, passages, hashes, out_dir, header, None, batch_size, progress)
    return {**stats, "rows": [start, stop]}
