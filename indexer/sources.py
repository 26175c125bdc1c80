"""Where a build's vectors come from: an array in memory, or embedding chunk files read one at a time.

A build needs its vectors three times: written to ``embeddings.npy``, sampled to train IVF/PQ, and
added to the FAISS index. :class:`ChunkSource` does all three from the chunk files of one or more
shard directories (:mod:`indexer.shards`) while holding at most one chunk (8,192 rows by default) and
the training sample in memory, so merging N machines' shards never needs the whole corpus in RAM:
flat and HNSW indexes still hold every vector (that is what they are), IVF-PQ holds only codes.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from indexer.errors import ShardError

_F32 = np.dtype("<f4")
ARRAY_CHUNK = 16384


class VectorSource(Protocol):
    """Vectors in row order, readable in chunks and by sampled rows."""

    count: int
    dim: int

    def chunks(self) -> Iterator[np.ndarray]:
        """float32 [rows, dim] blocks, in row order, together covering every row once."""
        ...

    def take(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), dim] for sorted, distinct ``rows``."""
        ...


class ArraySource:
    """Vectors already in memory (an in-memory build)."""

    def __init__(self, vectors: np.ndarray) -> None:
        if vectors.ndim != 2 or vectors.dtype != np.float32:
            raise ValueError(f"vectors must be float32 [n, d], got {vectors.dtype} {vectors.shape}")
        self.vectors = vectors
        self.count, self.dim = vectors.shape

    def chunks(self) -> Iterator[np.ndarray]:
        for start in range(0, self.count, ARRAY_CHUNK):
            yield self.vectors[start:start + ARRAY_CHUNK]

    def take(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.vectors[rows])


@dataclass(frozen=True)
class ChunkFile:
    """One embedding chunk: its ``.npy`` file and the KB rows ``[start, stop)`` it holds."""

    path: Path
    start: int
    stop: int


class ChunkSource:
    """The rows of chunk files, in order, read (and converted to float32) one file at a time.

    The chunks must cover KB rows ``start``, ``start + 1``, ... without a gap; row ``i`` of the source
    is KB row ``start + i`` (``start`` is 0 for a whole knowledge base, a shard's first row for one shard).
    """

    def __init__(self, chunks: Sequence[ChunkFile], dim: int, dtype: str = "float32", start: int = 0) -> None:
        self.files = list(chunks)
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.start = start
        expected = start
        for c in self.files:
            if c.start != expected:
                raise ShardError(f"{c.path}: holds rows {c.start}-{c.stop - 1}, expected to start at {expected}")
            expected = c.stop
        self.count = expected - start

    def _load(self, chunk: ChunkFile) -> np.ndarray:
        try:
            array = np.load(chunk.path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ShardError(f"{chunk.path}: not a readable .npy array ({e})") from e
        if array.shape != (chunk.stop - chunk.start, self.dim) or array.dtype != self.dtype:
            raise ShardError(f"{chunk.path}: {array.dtype} {array.shape}, expected {self.dtype} "
                             f"{(chunk.stop - chunk.start, self.dim)}")
        return array.astype(np.float32, copy=False)

    def chunks(self) -> Iterator[np.ndarray]:
        for chunk in self.files:
            yield self._load(chunk)

    def take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        rows = np.asarray(rows) + self.start                                     # KB rows
        starts = np.array([c.start for c in self.files])
        owner = np.searchsorted(starts, rows, side="right") - 1                  # chunk of each row
        for i in np.unique(owner):
            picked = np.flatnonzero(owner == i)
            chunk = self.files[int(i)]
            out[picked] = self._load(chunk)[rows[picked] - chunk.start]
        return out


def as_source(vectors: np.ndarray | VectorSource) -> VectorSource:
    return ArraySource(vectors) if isinstance(vectors, np.ndarray) else vectors


def write_npy(path: Path, source: VectorSource) -> None:
    """``embeddings.npy`` written chunk by chunk (a plain C-order float32 ``.npy``, no pickle). The
    caller has checked the vectors are finite (:func:`indexer.build.build_index_from_vectors` does,
    before anything is written)."""
    with open(path, "wb") as f:
        _write_header(f, source.count, source.dim)
        for block in source.chunks():
            f.write(np.ascontiguousarray(block, dtype=_F32).tobytes())


def _write_header(f: BinaryIO, count: int, dim: int) -> None:
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(_F32), "fortran_order": False,
                                             "shape": (count, dim)})
