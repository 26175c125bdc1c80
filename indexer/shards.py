"""Resumable embedding: a knowledge base's rows embedded into fixed-size chunk files.

A work directory holds ``shard.json`` (what is being embedded: model, KB sources, row range, dtype,
chunk size; ``complete`` once every chunk is there) and per chunk ``emb-00000.npy`` (the vectors) and
``emb-00000.json`` (its rows, passage ids, content hashes, the model fingerprint and the ``.npy``'s
SHA-256). Each file is written to a temporary name and renamed, and a chunk's JSON is written after
its vectors, so a chunk with a JSON is finished: a build killed at any point and re-run embeds only
the chunks that are missing. ``dpr index --shard I/N`` writes such a directory for rows ``I`` of
``N`` contiguous ranges, and :mod:`indexer.merge` assembles the shards into an index.
"""
from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.choices import DTYPES, check_choice
from common.data import Passage
from common.files import atomic_write, read_json, write_json
from indexer.errors import ShardError
from indexer.manifest import encoder_differences, file_sha256
from indexer.sources import ChunkFile, ChunkSource

if TYPE_CHECKING:
    from retriever.encoder import DualEncoder

logger = logging.getLogger(__name__)

SHARD_FILE = "shard.json"
SHARD_FORMAT = "dpr-embedding-shard"
SHARD_VERSION = 1
DEFAULT_CHUNK = 8192
_CHUNK_RE = re.compile(r"^emb-\d{5}\.(npy|json)$")


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count`` (0-based), parsed from ``I/N``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
        if not match:
            raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"--shard {text}: need N >= 1 and 0 <= I < N")
        return cls(index, count)

    def rows(self, total: int) -> tuple[int, int]:
        """The contiguous KB rows ``[start, stop)`` of this shard; sizes differ by at most one."""
        return total * self.index // self.count, total * (self.index + 1) // self.count


def chunk_name(j: int, suffix: str) -> str:
    return f"emb-{j:05d}.{suffix}"


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def _same_header(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Fields that differ between two ``shard.json`` headers (model compared by what changes embeddings)."""
    diffs = [label for label, _, _ in encoder_differences(old.get("model") or {}, new["model"])]
    for key in ("shard", "rows", "total", "dtype", "chunk_size"):
        if old.get(key) != new[key]:
            diffs.append(key)
    if [s.get("sha256") for s in old.get("kb") or []] != [s["sha256"] for s in new["kb"]]:
        diffs.append("kb")
    return diffs


def prepare_work_dir(work_dir: Path, header: dict[str, Any], reset_on_mismatch: bool) -> None:
    """Create ``work_dir`` or check that its unfinished work is this work.

    Work for another model, KB or row range is either discarded with a warning (a build's private
    work dir) or refused (a shard directory the user named).
    """
    work_dir = Path(work_dir)
    if work_dir.exists() and not work_dir.is_dir():
        raise ShardError(f"{work_dir}: exists and is not a directory")
    if work_dir.is_dir() and any(work_dir.iterdir()):
        head = work_dir / SHARD_FILE
        if not head.is_file():
            foreign = [p.name for p in work_dir.iterdir() if not _CHUNK_RE.match(p.name)][:3]
            if foreign or not reset_on_mismatch:
                raise ShardError(f"{work_dir}: exists, is not empty and holds no {SHARD_FILE}; refusing to use it")
        else:
            try:
                old = read_json(head)
                diffs = _same_header(old, header) if isinstance(old, dict) else ["not a JSON object"]
            except ValueError as e:
                diffs = [str(e)]
            if diffs:
                if not reset_on_mismatch:
                    raise ShardError(f"{work_dir}: holds embeddings of other work (differs in {diffs}); "
                                     "use another --out or delete it")
                logger.warning("%s: discarding unfinished embeddings of other work (differs in %s)", work_dir, diffs)
                shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json(work_dir / SHARD_FILE, {**header, "complete": False})


def _usable_chunk(work_dir: Path, j: int, header: dict[str, Any], start: int,
                  hashes: Sequence[str]) -> dict[str, Any] | None:
    """The chunk's JSON if chunk ``j`` is finished, for these rows, model and dtype, and intact; else None."""
    meta_path, npy = work_dir / chunk_name(j, "json"), work_dir / chunk_name(j, "npy")
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path)
        ok = (isinstance(meta, dict) and meta.get("rows") == [start, start + len(hashes)]
              and meta.get("dtype") == header["dtype"] and meta.get("hashes") == list(hashes)
              and not encoder_differences(meta.get("model") or {}, header["model"])
              and npy.is_file() and file_sha256(npy) == meta.get("sha256"))
    except (ValueError, OSError):
        ok = False
    if not ok:
        logger.warning("%s: chunk %d does not match this build (other model, rows or content, or damaged); "
                       "re-embedding it", work_dir, j)
        return None
    return meta


def write_chunk(work_dir: Path, j: int, header: dict[str, Any], vectors: np.ndarray, passages: Sequence[Passage],
                hashes: Sequence[str], first_row: int) -> None:
    """Chunk ``j`` of ``work_dir``: ``vectors`` (float32 [rows, dim], stored as the header's dtype) for KB
    rows ``first_row ..`` holding ``passages`` with content ``hashes``."""
    dtype = np.dtype(header["dtype"])
    npy = work_dir / chunk_name(j, "npy")
    _save_npy(npy, vectors.astype(dtype, copy=False))
    # Written after the vectors: a chunk with a JSON is a finished chunk.
    write_json(work_dir / chunk_name(j, "json"), {
        "rows": [first_row, first_row + len(vectors)], "count": len(vectors), "dtype": dtype.name,
        "dim": int(vectors.shape[1]), "model": header["model"], "sha256": file_sha256(npy),
        "ids": [p.pid for p in passages], "hashes": list(hashes),
    })


def finish_shard(work_dir: Path, header: dict[str, Any]) -> None:
    """Mark ``work_dir`` complete: every chunk of its rows is written."""
    start, stop = header["rows"]
    write_json(work_dir / SHARD_FILE, {**header, "complete": True,
                                       "chunks": len(range(start, stop, header["chunk_size"]))})


def embed_rows(encoder: DualEncoder, passages: Sequence[Passage], hashes: Sequence[str], work_dir: Path,
               header: dict[str, Any], cache: dict[str, np.ndarray] | None = None, batch_size: int = 64,
               progress: bool = True) -> dict[str, Any]:
    """Embed KB rows ``header['rows']`` into chunk files under ``work_dir``, reusing finished chunks.

    ``passages``/``hashes`` are the whole KB; ``cache`` maps content hash to a vector from a previous
    index. Returns stats: reused (from ``cache``), resumed (from chunks), embedded, seconds, passages/s.
    """
    import time

    start, stop = header["rows"]
    size = header["chunk_size"]
    cache = cache or {}
    stats = {"reused": 0, "resumed": 0, "embedded": 0}
    seconds = 0.0
    bounds = [(a, min(stop, a + size)) for a in range(start, stop, size)]
    finished = [_usable_chunk(work_dir, j, header, a, hashes[a:b]) is not None for j, (a, b) in enumerate(bounds)]
    stats["resumed"] = sum(b - a for (a, b), done in zip(bounds, finished) if done)
    if stats["resumed"]:
        logger.info("resumed: %d of %d passages already embedded (%s)", stats["resumed"], stop - start, work_dir)
    for j, (a, b) in enumerate(bounds):
        if finished[j]:
            continue
        vectors = np.empty((b - a, encoder.dim), dtype=np.float32)
        todo = []
        for i in range(a, b):
            cached = cache.get(hashes[i])
            if cached is None:
                todo.append(i)
            else:
                vectors[i - a] = cached
        began = time.perf_counter()
        if todo:
            vectors[[i - a for i in todo]] = encoder.encode_passages(
                [passages[i] for i in todo], batch_size=batch_size, progress=progress)
        seconds += time.perf_counter() - began
        if not np.isfinite(vectors).all():
            raise RuntimeError("the encoder produced non-finite passage embeddings (NaN or inf); index not written")
        write_chunk(work_dir, j, header, vectors, passages[a:b], hashes[a:b], a)
        stats["embedded"] += len(todo)
        stats["reused"] += b - a - len(todo)
        logger.info("chunk %d/%d written (rows %d-%d)", j + 1, len(bounds), a, b - 1)
    finish_shard(work_dir, header)
    stats["embed_seconds"] = round(seconds, 3)
    stats["passages_per_s"] = round(stats["embedded"] / seconds, 1) if stats["embedded"] and seconds > 0 else None
    logger.info("embeddings: %d reused from the previous index, %d resumed from chunks, %d embedded in %.1fs",
                stats["reused"], stats["resumed"], stats["embedded"], seconds)
    return stats


@dataclass
class ShardData:
    """A finished work or shard directory, checked; its vectors stay in their chunk files."""

    path: Path
    header: dict[str, Any]
    chunks: list[ChunkFile]
    ids: list[str]
    hashes: list[str]

    @property
    def vectors(self) -> np.ndarray:
        """All of the shard's vectors, float32 [rows, dim], loaded into memory (small shards, tests)."""
        source = ChunkSource(self.chunks, int(self.header["model"]["dim"]), self.header["dtype"],
                             start=int(self.header["rows"][0]))
        parts = list(source.chunks())
        return np.concatenate(parts) if parts else np.empty((0, source.dim), dtype=np.float32)


def read_shard(work_dir: str | Path, verify: bool = True) -> ShardData:
    """Check a finished shard directory (every chunk's JSON, and with ``verify`` every ``.npy``'s
    SHA-256); every inconsistency raises :class:`ShardError` naming the file. Vectors are not loaded."""
    work_dir = Path(work_dir)
    head = work_dir / SHARD_FILE
    if not head.is_file():
        raise ShardError(f"{work_dir}: not a shard directory (no {SHARD_FILE})")
    header = read_json(head)
    if not isinstance(header, dict) or header.get("format") != SHARD_FORMAT:
        raise ShardError(f"{head}: not a {SHARD_FORMAT} header")
    if header.get("version") != SHARD_VERSION:
        raise ShardError(f"{head}: version {header.get('version')!r} is not supported (expected {SHARD_VERSION})")
    if not header.get("complete"):
        raise ShardError(f"{work_dir}: unfinished shard (embedding was interrupted); re-run the same "
                         "`dpr index --shard` command to finish it")
    start, stop = header["rows"]
    size = header["chunk_size"]
    chunks, ids, hashes = [], [], []
    for j, a in enumerate(range(start, stop, size)):
        b = min(stop, a + size)
        meta_path, npy = work_dir / chunk_name(j, "json"), work_dir / chunk_name(j, "npy")
        if not meta_path.is_file() or not npy.is_file():
            raise ShardError(f"{work_dir}: chunk {j} (rows {a}-{b - 1}) is missing")
        meta = read_json(meta_path)
        if meta.get("rows") != [a, b] or len(meta.get("ids", [])) != b - a or len(meta.get("hashes", [])) != b - a:
            raise ShardError(f"{meta_path}: rows/ids/hashes do not cover rows {a}-{b - 1}")
        if verify and file_sha256(npy) != meta.get("sha256"):
            raise ShardError(f"{npy}: SHA-256 differs from {meta_path.name} (corrupt or modified)")
        chunks.append(ChunkFile(npy, a, b))
        ids.extend(meta["ids"])
        hashes.extend(meta["hashes"])
    return ShardData(work_dir, header, chunks, ids, hashes)


def chunk_source(shard_dirs: Sequence[str | Path], verify: bool = False) -> ChunkSource:
    """The vectors of shard directories that together cover rows 0..n-1, in order, read chunk by chunk."""
    return shards_source([read_shard(d, verify=verify) for d in shard_dirs])


def shards_source(shards: Sequence[ShardData]) -> ChunkSource:
    """The vectors of read shards that together cover rows 0..n-1, in order, read chunk by chunk."""
    if not shards:
        raise ShardError("no shard directories given")
    dtypes = {s.header["dtype"] for s in shards}
    if len(dtypes) != 1:
        raise ShardError(f"shards of different dtypes {sorted(dtypes)}")
    return ChunkSource([c for s in shards for c in s.chunks], int(shards[0].header["model"]["dim"]), dtypes.pop())


def make_header(description: dict[str, Any], model_dir: str | None, kb: list[dict[str, Any]], spec: ShardSpec,
                total: int, dtype: str = "float32", chunk_size: int = DEFAULT_CHUNK) -> dict[str, Any]:
    """The ``shard.json`` of shard ``spec`` of a ``total``-passage KB."""
    check_choice("dtype", dtype, DTYPES)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk size must be a positive integer, got {chunk_size!r}")
    start, stop = spec.rows(total)
    return {"format": SHARD_FORMAT, "version": SHARD_VERSION, "shard": [spec.index, spec.count],
            "rows": [start, stop], "count": stop - start, "total": total, "dtype": dtype,
            "chunk_size": chunk_size, "model": description, "model_dir": model_dir, "kb": kb}
