"""``build_index``: embed a knowledge base and publish it as a new build of an index directory.

Passages whose content (``sha1(title + "\\n" + text)``) is already in the build ``out_dir`` serves,
made by an encoder with the same weights and config, keep their vectors; only new or changed
passages are embedded. Embeddings go to resumable chunk files in a work directory first
(:mod:`indexer.shards`), so a killed build re-run with the same arguments embeds only what is
missing. The index is written as a new immutable build under ``out_dir/builds/`` and published by
switching ``out_dir/current`` (:mod:`indexer.builds`): a server reading the previous build keeps
reading it until it reloads.
:func:`build_index_from_vectors` writes an index from vectors already at hand (shard merge, benchmarks).
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Collection, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from common.data import DataError, Passage, load_corpus
from common.documents import read_documents
from common.files import write_json
from indexer.bm25_files import same_passage_hashes, write_bm25
from indexer.builds import DEFAULT_KEEP, check_target, current_build, list_builds, new_build, prune_builds
from indexer.chunking import ChunkSpec, check_token_window, chunk_documents
from indexer.config import IndexConfig
from indexer.errors import IndexLoadError
from indexer.faiss_index import (
    check_buildable,
    create_index,
    flat_streaming_supported,
    write_faiss,
    write_flat_streaming,
)
from indexer.filters import infer_schema
from indexer.live_log import LiveLog
from indexer.manifest import (
    CONFIG_FILE,
    EMBEDDINGS_FILE,
    FAISS_FILE,
    FORMAT_VERSION,
    HASHES_FILE,
    MANIFEST_FILE,
    STORE_FILE,
    documents_entry,
    encoder_differences,
    file_entries,
    kb_sources,
    read_manifest,
)
from indexer.shards import DEFAULT_CHUNK, ShardSpec, chunk_source, embed_rows, make_header, prepare_work_dir
from indexer.sources import ArraySource, VectorSource, as_source, write_npy
from indexer.store import write_store
from indexer.vectors import FileVectors
from retriever.encoder import DualEncoder, model_ref

logger = logging.getLogger(__name__)

# Hex, not raw digests: numpy drops trailing NUL bytes of "S" values, which broke 1 digest in 256.
HASH_DTYPE = np.dtype("S40")


def content_hash(passage: Passage) -> str:
    """The embedding-cache key, hex SHA-1 of what the passage encoder sees (the id plays no part)."""
    return hashlib.sha1(f"{passage.title}\n{passage.text}".encode("utf-8")).hexdigest()


def load_cached_vectors(out_dir: Path, description: dict[str, Any],
                        wanted: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """Vectors of the build ``out_dir`` serves, by content hash, if its encoder matches; else ``{}``.

    ``wanted``: only these content hashes (a rank's slice), read row by row, so a rank of a large
    rebuild holds its own share of the previous vectors rather than all of them. A missing, foreign
    or damaged previous index only means no reuse; the build goes on.
    """
    build = _previous_build(out_dir)
    if build is None:
        return {}
    try:
        manifest = read_manifest(build)
        diffs = [d[0] for d in encoder_differences(manifest["model"], description)]
        # Same weights at another precision (int8, bf16) give other vectors: a build keeps one precision,
        # the one its manifest records.
        if (manifest["model"].get("quantize") or "none") != (description.get("quantize") or "none"):
            diffs.append("quantize")
        if diffs:
            logger.info("not reusing embeddings from %s: encoder differs in %s", build, diffs)
            return {}
        n = manifest["count"]
        hashes = np.load(build / HASHES_FILE, allow_pickle=False)
        if hashes.dtype != HASH_DTYPE or hashes.shape != (n,):
            raise ValueError(f"{HASHES_FILE} does not match its manifest")
        keys = [h.decode("ascii") for h in hashes.tolist()]
        rows = np.arange(n) if wanted is None else np.array([i for i, h in enumerate(keys) if h in wanted], dtype=int)
        file = FileVectors(build / EMBEDDINGS_FILE, n, int(description["dim"]))
        try:
            vectors = file.rows(rows)
        finally:
            file.close()
    except (ValueError, OSError, KeyError, IndexLoadError) as e:
        logger.warning("not reusing embeddings from %s: %s", build, e)
        return {}
    return {keys[i]: vectors[j] for j, i in enumerate(rows.tolist())}


def _previous_build(out_dir: Path) -> Path | None:
    """The build ``out_dir`` serves now, or None (nothing there yet, or not readable)."""
    if not out_dir.is_dir():
        return None
    try:
        return current_build(out_dir)
    except IndexLoadError:
        return None


def _previous_manifest(build: Path | None) -> dict[str, Any] | None:
    if build is None:
        return None
    try:
        return read_manifest(build)
    except ValueError:
        return None


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
    keep_builds: int = DEFAULT_KEEP,
    chunk: str | None = None,
) -> Path:
    """Embed the knowledge base at ``kb_paths`` and publish it as a new build of ``out_dir``.

    ``chunk``: the records are documents (``{"id", "title", "text", "metadata"}``) cut into passages
    as the spec says (``words:100``, ``words:100:50``, ``tokens:200``; :mod:`indexer.chunking`);
    without it they are passages, as read by :func:`common.data.load_corpus`.

    ``model_dir`` is the model reference the manifest records for the server: a saved model dir
    (recorded as an absolute path) or an alias such as ``minilm``. Bad KB input raises ``DataError`` before anything
    is written; a failure at any later point leaves a previous index at ``out_dir`` untouched. A
    non-empty ``out_dir`` that is not an index is refused rather than replaced. With ``bm25`` a BM25
    index is written to ``out_dir/bm25/`` in the same build (copied from the previous build when
    its passages are the same). Embeddings are written in chunks of ``chunk_size`` to ``work_dir``
    (default ``<out_dir>.work``), reused by a re-run after a crash, and removed after success.
    The newest ``keep_builds`` builds are kept (for rollback); older ones no process holds are deleted.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    check_target(out_dir)
    if isinstance(kb_paths, (str, Path)):
        kb_paths = [kb_paths]
    passages = read_knowledge_base(list(kb_paths), chunk, encoder)
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
    build_index_from_vectors(chunk_source([work]), passages, out_dir, config, description, model_dir, hashes=hashes,
                             kb=sources, build_stats=stats, bm25=bm25, progress=progress, started=started,
                             keep_builds=keep_builds, chunk=chunk)
    shutil.rmtree(work, ignore_errors=True)
    return out_dir


def read_knowledge_base(kb_paths: Sequence[str | Path], chunk: str | None, encoder: DualEncoder) -> list[Passage]:
    """The passages to index: records as passages, or documents cut as ``chunk`` says (DataError on bad input)."""
    if chunk is None:
        return load_corpus(list(kb_paths))
    spec = ChunkSpec.parse(chunk)
    check_token_window(spec, encoder.config.passage_max_length)
    documents = read_documents(list(kb_paths))
    passages = chunk_documents(documents, spec, encoder.tokenizer if spec.unit == "tokens" else None)
    logger.info("cut %d documents into %d passages (%s)", len(documents), len(passages), spec)
    return passages


def documents_entry_for(passages: Sequence[Passage], chunk: str | None) -> dict[str, Any]:
    """The manifest's ``documents`` entry, less ``live_from``: the chunk spec and the metadata fields' types."""
    try:
        fields = infer_schema((p.metadata for p in passages), where=lambda i: f"passage {passages[i].pid!r}")
    except ValueError as e:
        raise DataError(f"knowledge base: {e}") from None
    return {"chunk": None if chunk is None else str(ChunkSpec.parse(chunk)), "metadata_fields": fields}


def build_index_from_vectors(
    vectors: np.ndarray | VectorSource,
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
    keep_builds: int = DEFAULT_KEEP,
    chunk: str | None = None,
    live_from: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Publish an index over ``vectors`` (row i = ``passages[i]``) as a new build of ``out_dir``.

    ``chunk``: how the passages were cut from documents (recorded). ``live_from``: the first live log
    file the build does not contain (compaction); None: the build is made from its KB files alone, so
    the log is rotated and later writes apply to it (:mod:`indexer.live_log`). ``extra``: more
    manifest fields (compaction records what it folded).

    ``vectors``: float32 [n, d] in memory, or a :class:`indexer.sources.VectorSource` (embedding chunk
    files, read one at a time: the streaming path of builds and merges). ``model_description`` is the
    ``DualEncoder.describe()`` of the model the vectors come from and ``model_dir`` its reference for
    the server, so the index opens with that model like any other.
    """
    started = time.perf_counter() if started is None else started
    out_dir = Path(out_dir)
    check_target(out_dir)
    dim = int(model_description["dim"])
    if isinstance(vectors, np.ndarray) and vectors.dtype != np.float32:
        raise ValueError(f"vectors must be float32, got {vectors.dtype}")
    if isinstance(vectors, np.ndarray) and vectors.ndim != 2:
        raise ValueError(f"vectors have shape {vectors.shape}, expected ({len(passages)}, {dim}) "
                         "(one row per passage, the model's dim)")
    source = as_source(vectors)
    if (source.count, source.dim) != (len(passages), dim):
        raise ValueError(f"vectors have shape {(source.count, source.dim)}, expected ({len(passages)}, {dim}) "
                         "(one row per passage, the model's dim)")
    resolved = config.resolve(len(passages), dim)
    check_buildable(len(passages), resolved)
    hashes = [content_hash(p) for p in passages] if hashes is None else list(hashes)
    encoder_config = model_description.get("encoder") or {}
    for block in source.chunks():                    # before anything is written: refuse NaN early
        if not np.isfinite(block).all():
            raise RuntimeError("non-finite passage embeddings (NaN or inf); index not written")
    # A flat index read from chunk files is written straight to its file: the merge then never holds
    # the corpus (the server loads it whole anyway). Every other type is built in memory.
    streamed_flat = (resolved.index_type == "flat" and not isinstance(source, ArraySource)
                     and flat_streaming_supported(dim))
    index = None if streamed_flat else create_index(source, resolved, progress=progress)
    hash_array = np.array([h.encode("ascii") for h in hashes], dtype=HASH_DTYPE)
    documents = documents_entry_for(passages, chunk)      # refuses conflicting metadata types early
    previous = _previous_build(out_dir) if bm25 else None
    previous_manifest = _previous_manifest(previous)
    stats = build_stats or {}
    documents["live_from"] = live_from if live_from is not None else start_live_log(out_dir)

    with new_build(out_dir) as tmp:
        if index is None:
            write_flat_streaming(source, tmp / FAISS_FILE)
        else:
            write_faiss(index, tmp / FAISS_FILE)
        write_npy(tmp / EMBEDDINGS_FILE, source)
        np.save(tmp / HASHES_FILE, hash_array, allow_pickle=False)
        write_store(tmp / STORE_FILE, passages, hashes)
        write_json(tmp / CONFIG_FILE, resolved.to_dict())
        bm25_entry = None
        if bm25:
            same = previous_manifest is not None and same_passage_hashes(previous, hash_array)
            bm25_entry = write_bm25(tmp, passages, previous, previous_manifest, same, progress)
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
            "documents": documents,
            "files": file_entries(tmp),
            **(extra or {}),
        }
        if bm25_entry is not None:
            manifest["bm25"] = bm25_entry
        # Written last: a directory with a manifest is a finished index.
        write_json(tmp / MANIFEST_FILE, manifest)
    logger.info("indexed %d passages (%s, dim %d) into %s in %.1fs", len(passages), resolved.index_type,
                dim, out_dir, time.perf_counter() - started)
    prune_builds(out_dir, keep_builds)
    prune_live_log(out_dir)
    return out_dir


def start_live_log(out_dir: Path) -> int:
    """The ``live_from`` of a build made from KB files alone: a new log file when the index has a
    live log (the build replaces the knowledge base; writes made since the previous build are not
    in it, and stay in the log for a rollback), else 1."""
    log = LiveLog(out_dir)
    if not log.files():
        return 1
    previous = _previous_manifest(_previous_build(out_dir))
    since = documents_entry(previous)["live_from"] if previous else 1
    unapplied = sum(log.path(n).stat().st_size for n in log.files() if n >= since)
    if unapplied:
        logger.warning("%s: %d bytes of live document writes since the previous build are not in this build, "
                       "which is made from the KB files alone (they stay in %s for a rollback; `dpr index "
                       "compact` first to keep them)", out_dir, unapplied, log.dir)
    return log.rotate()


def prune_live_log(out_dir: Path) -> None:
    """Delete the live log files no kept build applies."""
    log = LiveLog(out_dir)
    if not log.files():
        return
    needed = []
    for build in list_builds(out_dir):
        manifest = _previous_manifest(build.path)
        needed.append(documents_entry(manifest)["live_from"] if manifest else 1)
    gone = log.prune(min(needed, default=1))
    if gone:
        logger.info("%s: pruned live log files %s (folded into every kept build)", log.dir, gone)


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
    reuse_from: str | Path | None = None,
    private: bool = False,
) -> dict[str, Any]:
    """Embed shard ``spec`` (contiguous KB rows) into the shard directory ``out_dir``; resumable.

    ``reuse_from``: an index directory whose served build's vectors are reused for this shard's
    passages where the content hash and the encoder match. ``private``: ``out_dir`` is a
    work directory of ours (torchrun builds), so unfinished work for other inputs is discarded
    rather than refused. Returns the stats of :func:`indexer.shards.embed_rows` plus ``rows``.
    ``dpr index merge`` turns the N shard directories into an index.
    """
    out_dir = Path(out_dir)
    if isinstance(kb_paths, (str, Path)):
        kb_paths = [kb_paths]
    passages = load_corpus(list(kb_paths))
    sources = kb_sources(kb_paths)
    ref = None if model_dir is None else model_ref(model_dir)
    header = make_header(encoder.describe(), ref, sources, spec, len(passages), dtype, chunk_size)
    prepare_work_dir(out_dir, header, reset_on_mismatch=private)
    start, stop = header["rows"]
    hashes = [""] * start + [content_hash(p) for p in passages[start:stop]] + [""] * (len(passages) - stop)
    cache = (load_cached_vectors(Path(reuse_from), encoder.describe(), wanted=set(hashes[start:stop]))
             if reuse_from is not None else None)
    stats = embed_rows(encoder, passages, hashes, out_dir, header, cache, batch_size, progress)
    return {**stats, "rows": [start, stop]}
