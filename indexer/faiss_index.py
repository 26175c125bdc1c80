"""Building, saving and loading the FAISS inner-product index for each index type."""
from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from indexer.config import IVF_TYPES, IndexConfig
from indexer.errors import IndexLoadError
from indexer.sources import VectorSource, as_source

logger = logging.getLogger(__name__)

_ADD_CHUNK = 16384
# Encoding a batch for PQ builds a distance table of rows x m x 2**nbits floats (8,192 rows at m 48:
# 400 MB, transient but the merge's peak); batches are sized to keep it near this.
_PQ_TABLE_BYTES = 16 << 20
# FAISS k-means itself keeps at most 256 points per centroid; a fixed sample keeps training bounded
# and reproducible on large knowledge bases.
_MAX_TRAIN = 262144
_SEED = 1234
_PARALLEL_FROM = 50_000


@contextlib.contextmanager
def _omp_threads_for(n: int) -> Iterator[None]:
    """One OpenMP thread for small builds.

    Below ~50k vectors, per-iteration thread barriers dominate FAISS k-means; on a busy CPU the
    spinning threads made training 200 vectors take 10 s instead of 0.01 s (measured, 2 cores).
    """
    if n >= _PARALLEL_FROM:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def create_index(vectors: np.ndarray | VectorSource, config: IndexConfig, progress: bool = False) -> faiss.Index:
    """An inner-product index over ``vectors`` (float32 [n, d], or a :class:`VectorSource` read chunk
    by chunk: only the IVF training sample is ever held whole); ``config`` must be resolved."""
    source = as_source(vectors)
    with _omp_threads_for(source.count):
        return _create_index(source, config, progress)


def _create_index(source: VectorSource, config: IndexConfig, progress: bool) -> faiss.Index:
    n, dim = source.count, source.dim
    if config.index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif config.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
    else:
        index = _trained_ivf(source, config)
    apply_search_params(index, config)
    batch = _add_batch(config)
    with tqdm(total=n, unit="vec", desc=f"add to {config.index_type} index",
              disable=not progress or n <= _ADD_CHUNK) as bar:
        for block in source.chunks():
            for start in range(0, len(block), batch):
                part = np.ascontiguousarray(block[start:start + batch])
                index.add(part)
                bar.update(len(part))
    return index


def _add_batch(config: IndexConfig) -> int:
    """Rows per ``index.add``: bounded for IVF-PQ by its encoding table (see ``_PQ_TABLE_BYTES``)."""
    if config.index_type != "ivfpq" or not config.pq_m:
        return _ADD_CHUNK
    return max(256, min(_ADD_CHUNK, _PQ_TABLE_BYTES // (config.pq_m * 2 ** config.pq_nbits * 4)))


def check_buildable(n: int, config: IndexConfig) -> None:
    """Fail before any embedding work if ``n`` vectors cannot train the (resolved) ``config``."""
    if config.index_type not in IVF_TYPES:
        return
    nlist, nbits = config.ivf_nlist, config.pq_nbits
    if nlist is None:
        raise ValueError(f"IndexConfig.resolve() must run before building an {config.index_type} index")
    needed = max(nlist, 2 ** nbits) if config.index_type == "ivfpq" else nlist
    if n < needed:
        what = (f"ivf_nlist={nlist}, 2**pq_nbits={2 ** nbits}" if config.index_type == "ivfpq"
                else f"ivf_nlist={nlist}")
        raise ValueError(
            f"{config.index_type} needs at least {needed} vectors to train ({what}) "
            f"but the knowledge base has {n}: use --index-type flat or hnsw, or lower --ivf-nlist/--pq-nbits"
        )


def factory_string(config: IndexConfig) -> str:
    """The FAISS ``index_factory`` description of a resolved IVF ``config``."""
    nlist, m, nbits = config.ivf_nlist, config.pq_m, config.pq_nbits
    if config.index_type == "ivfflat":
        return f"IVF{nlist},Flat"
    return f"{f'OPQ{m},' if config.opq else ''}IVF{nlist},PQ{m}x{nbits}"


def training_rows(n: int, config: IndexConfig) -> np.ndarray:
    """The rows IVF/PQ train on: all ``n``, or at most ``train_sample`` (default 256 per centroid,
    capped) drawn reproducibly, sorted."""
    limit = config.train_sample or min(_MAX_TRAIN, 256 * max(config.ivf_nlist or 1, 2 ** config.pq_nbits))
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(_SEED).choice(n, limit, replace=False))


def training_sample(vectors: np.ndarray | VectorSource, config: IndexConfig) -> np.ndarray:
    """The training vectors (see :func:`training_rows`)."""
    source = as_source(vectors)
    return source.take(training_rows(source.count, config))


def _trained_ivf(source: VectorSource, config: IndexConfig) -> faiss.Index:
    n, dim = source.count, source.dim
    check_buildable(n, config)
    nlist, nbits = config.ivf_nlist, config.pq_nbits
    index = faiss.index_factory(dim, factory_string(config), faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    # FAISS prints one warning per sub-quantizer when points are few; one log line says it instead.
    ivf.cp.min_points_per_centroid = 1
    centroids = max(nlist, 2 ** nbits) if config.index_type == "ivfpq" else nlist
    if config.index_type == "ivfpq":
        pq = faiss.downcast_index(ivf)
        # Polysemous training only serves Hamming-distance filtering, which is never used here, and it
        # was most of the training time.
        pq.do_polysemous_training = False
        pq.pq.cp.min_points_per_centroid = 1
    sample = training_sample(source, config)
    if len(sample) < 39 * centroids:
        logger.warning("%s: %d training vectors is few for %d centroids (FAISS suggests 39 per centroid); "
                       "recall may suffer, consider flat or hnsw", config.index_type, len(sample), centroids)
    logger.info("training %s (%s) on %d vectors", config.index_type, factory_string(config), len(sample))
    index.train(sample)
    return index


def apply_search_params(index: faiss.Index, config: IndexConfig) -> None:
    """Set the index's default search-time knobs (efSearch, nprobe) from ``config``."""
    if config.index_type == "hnsw":
        index.hnsw.efSearch = config.hnsw_ef_search
    elif config.index_type in IVF_TYPES:
        faiss.extract_index_ivf(index).nprobe = config.nprobe


def search_params(config: IndexConfig, k: int, allowed: np.ndarray | None = None) -> faiss.SearchParameters | None:
    """Per-call parameters: thread-safe, unlike changing the index; HNSW needs efSearch >= k.

    ``allowed``: a boolean mask over the rows; only those rows are returned (a FAISS ``IDSelector``).
    """
    selector = None
    if allowed is not None:
        bits = np.packbits(np.asarray(allowed, dtype=bool), bitorder="little")
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        selector._bits = bits                   # FAISS reads the numpy buffer: keep it alive with the selector
    if config.index_type == "hnsw":
        params = faiss.SearchParametersHNSW(efSearch=max(config.hnsw_ef_search, k))
    elif config.index_type in IVF_TYPES:
        params = faiss.SearchParametersIVF(nprobe=config.nprobe)
    elif selector is None:
        return None
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
        params._sel = selector                  # the parameters do not own the selector either
    if config.index_type in IVF_TYPES and config.opq:
        # The OPQ rotation wraps the IVF index; its parameters must be passed through the wrapper.
        wrapper = faiss.SearchParametersPreTransform()
        wrapper.index_params = params
        wrapper._keep = params                  # the wrapper does not own its child: keep it alive
        return wrapper
    return params


def write_faiss(index: faiss.Index, path: str | Path) -> None:
    faiss.write_index(index, str(path))


def _flat_header(dim: int, n: int) -> bytes:
    """The bytes of FAISS's ``IndexFlatIP`` file before its vectors: fourcc, d, ntotal, two dummies,
    is_trained, metric, then the float count (``faiss/impl/index_write.cpp``)."""
    return (b"IxFI" + struct.pack("<iqqq?i", dim, n, 1 << 20, 1 << 20, True, faiss.METRIC_INNER_PRODUCT)
            + struct.pack("<Q", n * dim))


def flat_streaming_supported(dim: int) -> bool:
    """Whether this FAISS writes flat indexes as :func:`_flat_header` assumes (checked on two rows)."""
    sample = np.arange(2 * dim, dtype=np.float32).reshape(2, dim)
    index = faiss.IndexFlatIP(dim)
    index.add(sample)
    return faiss.serialize_index(index).tobytes() == _flat_header(dim, 2) + sample.tobytes()


def write_flat_streaming(source: VectorSource, path: str | Path) -> None:
    """An ``IndexFlatIP`` file written chunk by chunk, never holding the index: what
    ``faiss.write_index`` writes for the same vectors, byte for byte (see :func:`flat_streaming_supported`)."""
    with open(path, "wb") as f:
        f.write(_flat_header(source.dim, source.count))
        for block in source.chunks():
            f.write(np.ascontiguousarray(block, dtype="<f4").tobytes())


def read_faiss(path: str | Path, config: IndexConfig) -> faiss.Index:
    """Load ``path``, failing with :class:`IndexLoadError` naming it; search params restored from ``config``."""
    path = Path(path)
    if not path.is_file():
        raise IndexLoadError(f"{path}: missing")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise IndexLoadError(f"{path}: not a readable FAISS index ({first})") from e
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexLoadError(f"{path}: metric {index.metric_type} is not inner product")
    expected = {"flat": faiss.IndexFlat, "hnsw": faiss.IndexHNSW, "ivfflat": faiss.IndexIVFFlat,
                "ivfpq": faiss.IndexIVFPQ}[config.index_type]
    inner = index
    if config.opq:
        if not isinstance(index, faiss.IndexPreTransform):
            raise IndexLoadError(f"{path}: holds a {type(index).__name__}, index_config.json says ivfpq with OPQ")
        inner = faiss.downcast_index(index.index)
    if not isinstance(inner, expected):
        raise IndexLoadError(f"{path}: holds a {type(index).__name__}, index_config.json says {config.index_type!r}")
    apply_search_params(index, config)
    return index
