"""Real index directories over synthetic vectors, for serving and latency tests at sizes no corpus here has.

:func:`build_synthetic_index` writes an ordinary index (FAISS + passage store + manifest, no BM25)
whose manifest names a real model (MiniLM, 384-d, by default), so ``dpr serve --index DIR`` opens it
with that model: the served answers are meaningless, the costs (search, store lookups, HTTP) are the
real ones. :func:`ann_quality` measures such an index's recall against exact search and its size.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from bench.synthetic import DEFAULT_CLUSTERS, synthetic_passages, synthetic_queries
from common.data import Passage
from common.files import read_json, write_json
from indexer.builds import current_build, is_index_root
from indexer.manifest import MANIFEST_FILE

logger = logging.getLogger(__name__)

DEFAULT_ROOT = Path("runs/ann")
MODEL_REF = "minilm"
_DESCRIPTION_CACHE = "minilm_description.json"


def model_description(model: str = MODEL_REF, cache_dir: Path = DEFAULT_ROOT) -> dict[str, Any]:
    """The model's ``describe()``; MiniLM's (weights hashed once) is cached as JSON under ``cache_dir``."""
    from retriever.encoder import load_encoder

    if model != MODEL_REF:
        return load_encoder(model).describe()
    path = Path(cache_dir) / _DESCRIPTION_CACHE
    if path.is_file():
        return read_json(path)
    description = load_encoder(MODEL_REF).describe()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, description)
    return description


def synthetic_passage_texts(n: int) -> list[Passage]:
    """``n`` short distinct passages; ids ``syn-<row>`` so a hit names its row."""
    return [Passage(pid=f"syn-{i}", title=f"Synthetic {i // 1000}",
                    text=f"synthetic passage {i}: a stand-in text so the store and the API return something")
            for i in range(n)]


def build_synthetic_index(out_dir: str | Path | None, n: int, index_type: str = "flat", seed: int = 0,
                          clusters: int = DEFAULT_CLUSTERS, progress: bool = True, model: str = MODEL_REF,
                          **params: Any) -> Path:
    """An index directory over ``n`` synthetic vectors of ``model``'s dim (``bench.synthetic``), reused when built.

    ``params`` are :class:`indexer.IndexConfig` fields (``hnsw_m``, ``ivf_nlist``, ``pq_m``, ``opq``...).
    ``out_dir=None`` means ``runs/ann/index-<type>-<n>``. A directory whose manifest records the same
    count, type, parameters and seed is returned as is.
    """
    from indexer import IndexConfig
    from indexer.build import build_index_from_vectors

    config = IndexConfig(index_type=index_type, **params)
    out = Path(out_dir) if out_dir is not None else DEFAULT_ROOT / f"index-{index_type}-{n}"
    description = model_description(model, out.parent)
    dim = int(description["dim"])
    resolved = config.resolve(n, dim).to_dict()
    wanted = {"n": n, "seed": seed, "clusters": clusters}
    if is_index_root(out):
        old = read_json(current_build(out) / MANIFEST_FILE)
        if (old.get("count") == n and old.get("index_params") == resolved
                and (old.get("build") or {}).get("synthetic") == wanted):
            logger.info("reusing synthetic index %s", out)
            return out
    vectors = synthetic_passages(n, dim, clusters=clusters, seed=seed)
    build_index_from_vectors(vectors, synthetic_passage_texts(n), out, config, description, model,
                             build_stats={"synthetic": wanted, "reused": 0, "embedded": 0}, bm25=False,
                             progress=progress)
    return out


def build_seconds(index_dir: str | Path) -> float:
    """How long the index's build took, from its manifest."""
    return float(read_json(current_build(index_dir) / MANIFEST_FILE)["build"]["seconds"])


def ann_quality(index_dir: str | Path, queries: int = 100, k: int = 10, seed: int = 1) -> dict[str, Any]:
    """Recall@k of the index's own search against exact search, its FAISS file size and a flat index's size."""
    from indexer import SearchIndex

    with SearchIndex.open(index_dir, verify=False) as index:
        q = synthetic_queries(np.asarray(index.embeddings), queries, seed=seed)
        _, approx = index.search(q, k)                                   # [queries, k]
        _, exact = index.exact_search(q, k)                              # [queries, k]
        recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact, strict=True)]))
        faiss_bytes = (index.build_dir / "index.faiss").stat().st_size
        return {"index_type": index.config.index_type, "count": len(index), f"recall@{k}": round(recall, 4),
                "faiss_mb": round(faiss_bytes / 2**20, 1),
                "flat_mb": round(len(index) * index.dim * 4 / 2**20, 1)}
