"""ivfflat, OPQ ivfpq, the torch flat path, and indexes over given vectors (`build_index_from_vectors`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.synthetic import synthetic_passages, synthetic_queries
from common.data import Passage
from indexer import IndexConfig, SearchIndex
from indexer.build import build_index_from_vectors
from indexer.builds import current_build
from indexer.searcher import TORCH_FLAT_FROM

N, DIM = 3000, 32


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return synthetic_passages(N, DIM, clusters=50, seed=3)


def _passages(n: int) -> list[Passage]:
    return [Passage(f"p{i}", f"T{i}", f"text {i}") for i in range(n)]


def _build(vectors: np.ndarray, out: Path, tiny_encoder, **params) -> Path:
    return build_index_from_vectors(vectors, _passages(len(vectors)), out, IndexConfig(**params),
                                    tiny_encoder.describe(), "tiny", bm25=False, progress=False)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def test_ivfflat_probing_every_list_is_exact(vectors, tiny_encoder, tmp_path: Path) -> None:
    out = _build(vectors, tmp_path / "ivf", tiny_encoder, index_type="ivfflat", ivf_nlist=16, nprobe=16)
    q = synthetic_queries(vectors, 20)
    with SearchIndex.open(out, tiny_encoder) as index:
        assert index.config.index_type == "ivfflat" and index.config.ivf_nlist == 16
        scores, rows = index.search(q, 10)
        ex_scores, ex_rows = index.exact_search(q, 10)
        np.testing.assert_array_equal(rows, ex_rows)
        np.testing.assert_allclose(scores, ex_scores, atol=1e-5)


def test_ivfpq_with_opq_rescored_on_exact_vectors(vectors, tiny_encoder, tmp_path: Path) -> None:
    out = _build(vectors, tmp_path / "opq", tiny_encoder, index_type="ivfpq", ivf_nlist=16, pq_m=8, pq_nbits=4,
                 nprobe=8, opq=True, train_sample=800)
    manifest = json.loads((current_build(out) / "manifest.json").read_text())
    assert manifest["index_params"]["opq"] is True and manifest["index_params"]["train_sample"] == 800
    q = synthetic_queries(vectors, 30)
    with SearchIndex.open(out, tiny_encoder) as index:
        scores, rows = index.search(q, 10)
        # Re-scored: the scores are the exact inner products of the rows returned.
        exact = np.einsum("qd,qkd->qk", q, vectors[rows])
        np.testing.assert_allclose(scores, exact, atol=1e-5)
        assert _recall(rows, index.exact_search(q, 10)[1]) >= 0.8


def test_opq_needs_ivfpq_and_train_sample_positive() -> None:
    with pytest.raises(ValueError, match="opq applies to ivfpq only"):
        IndexConfig(index_type="hnsw", opq=True)
    with pytest.raises(ValueError, match="train_sample"):
        IndexConfig(index_type="ivfflat", train_sample=0)
    with pytest.raises(ValueError, match="ivfflat needs at least 64 vectors"):
        build_index_from_vectors(np.zeros((10, 4), np.float32), _passages(10), "unused",
                                 IndexConfig(index_type="ivfflat", ivf_nlist=64),
                                 {"dim": 4, "encoder": {}}, None, bm25=False, progress=False)


def test_torch_flat_batches_match_faiss_single_queries(vectors, tiny_encoder, tmp_path: Path) -> None:
    out = _build(vectors, tmp_path / "flat", tiny_encoder)
    q = synthetic_queries(vectors, TORCH_FLAT_FROM + 4, seed=5)
    with SearchIndex.open(out, tiny_encoder) as index:
        batch_scores, batch_rows = index.search(q, 10)                   # torch path
        singles = [index.search(q[i], 10) for i in range(len(q))]        # FAISS path
    np.testing.assert_array_equal(batch_rows, np.concatenate([r for _, r in singles]))
    np.testing.assert_allclose(batch_scores, np.concatenate([s for s, _ in singles]), atol=1e-5)
    assert batch_rows.dtype == np.int64 and batch_scores.dtype == np.float32


def test_build_from_vectors_checks_shape_and_values(vectors, tiny_encoder, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expected \(5, 32\)"):
        build_index_from_vectors(vectors[:4], _passages(5), tmp_path / "x", IndexConfig(), tiny_encoder.describe(),
                                 None, bm25=False)
    bad = vectors[:5].copy()
    bad[2, 3] = np.nan
    with pytest.raises(RuntimeError, match="non-finite"):
        build_index_from_vectors(bad, _passages(5), tmp_path / "x", IndexConfig(), tiny_encoder.describe(), None,
                                 bm25=False)
    assert not (tmp_path / "x").exists()
