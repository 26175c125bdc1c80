"""How an index is built and searched: a frozen dataclass saved as ``index_config.json``."""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

from common.choices import INDEX_TYPES, IVF_TYPES, IndexType, check_choice
from common.files import check_config_keys
from common.flags import opt

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class IndexConfig:
    """FAISS index type and its parameters.

    ``ivf_nlist=None`` means about ``4 * sqrt(n)`` lists. ``pq_m`` must divide the embedding dim;
    :meth:`resolve` lowers it to the nearest divisor. ``opq`` rotates vectors before PQ (ivfpq only).
    IVF coarse centroids, PQ codebooks and OPQ are trained on at most ``train_sample`` vectors
    (``None``: FAISS's useful maximum, 256 per centroid). ``hnsw_ef_search`` and ``nprobe`` are
    search-time settings, restored whenever the index is opened. ivfpq fetches ``k * rescore_factor``
    candidates and re-ranks them on the exact vectors (measured on 1M x 384 with pq_m=48: 4 gives recall@10
    0.57, 10 gives 0.78, 30 gives 0.96; see bench/ann.py). ``dpr index``'s flags are generated from
    these fields.
    """

    index_type: IndexType = opt("flat", "flat (exact), hnsw, ivfflat or ivfpq (see `dpr index plan`)")
    batch_size: int = opt(64, "passages per encoder batch")
    hnsw_m: int = opt(32, "HNSW graph degree", group="hnsw")
    hnsw_ef_construction: int = opt(200, "HNSW build-time candidate list", group="hnsw")
    hnsw_ef_search: int = opt(128, "HNSW search-time candidate list (at least k)", group="hnsw")
    ivf_nlist: int | None = opt(None, "inverted lists; none: about 4*sqrt(n)", group="ivfflat / ivfpq")
    pq_m: int = opt(48, "PQ sub-quantizers (lowered to a divisor of the dim)", group="ivfflat / ivfpq")
    pq_nbits: int = opt(8, "bits per PQ code", group="ivfflat / ivfpq")
    nprobe: int = opt(16, "inverted lists searched per query", group="ivfflat / ivfpq")
    opq: bool = opt(False, "ivfpq: rotate vectors (OPQ) before product quantisation", group="ivfflat / ivfpq")
    train_sample: int | None = opt(None, "train IVF/PQ/OPQ on at most this many vectors; none: 256 per centroid",
                                   group="ivfflat / ivfpq")
    rescore_factor: int = opt(4, "ivfpq: re-rank k*F candidates on the exact vectors (at 1M x 384, pq_m 48: 10 "
                              "reached recall@10 0.78, 30 reached 0.96)", group="ivfflat / ivfpq")

    def __post_init__(self) -> None:
        check_choice("index_type", self.index_type, INDEX_TYPES)
        for name in ("batch_size", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "pq_m", "nprobe",
                     "rescore_factor"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.ivf_nlist is not None and (not isinstance(self.ivf_nlist, int) or self.ivf_nlist < 1):
            raise ValueError(f"ivf_nlist must be a positive integer or None, got {self.ivf_nlist!r}")
        if self.train_sample is not None and (not isinstance(self.train_sample, int) or self.train_sample < 1):
            raise ValueError(f"train_sample must be a positive integer or None, got {self.train_sample!r}")
        if not isinstance(self.opq, bool):
            raise ValueError(f"opq must be true or false, got {self.opq!r}")
        if self.opq and self.index_type != "ivfpq":
            raise ValueError(f"opq applies to ivfpq only, not {self.index_type!r}")
        if not isinstance(self.pq_nbits, int) or not 1 <= self.pq_nbits <= 16:
            raise ValueError(f"pq_nbits must be an integer in 1..16, got {self.pq_nbits!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexConfig:
        check_config_keys(cls, data, "index")
        return cls(**data)

    def resolve(self, n: int, dim: int) -> IndexConfig:
        """The concrete parameters for ``n`` vectors of size ``dim`` (auto nlist, a pq_m that divides dim)."""
        if self.index_type not in IVF_TYPES:
            return self
        nlist = self.ivf_nlist or max(1, int(round(4 * math.sqrt(n))))
        pq_m = self.pq_m
        if self.index_type == "ivfpq" and dim % pq_m:
            # A PQ sub-quantizer needs an equal slice of the vector; take the closest divisor below.
            fixed = max(d for d in range(1, min(pq_m, dim) + 1) if dim % d == 0)
            logger.warning("pq_m=%d does not divide dim %d; using pq_m=%d", pq_m, dim, fixed)
            pq_m = fixed
        return dataclasses.replace(self, ivf_nlist=nlist, pq_m=pq_m)
