"""The streaming merge: memory stays near one chunk plus the index (IVF-PQ) or one chunk (flat), not
the corpus, and its files are the in-memory merge's, byte for byte."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bench.merge_memory import measure_merge, write_kb, write_shards
from indexer.builds import current_build

N, DIM = 60_000, 768                                         # 175.8 MB of float32 vectors in 3 shards
VECTORS_MB = N * DIM * 4 / 2**20


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("merge-memory")
    kb = write_kb(root / "kb.jsonl", N)
    return kb, write_shards(root / "shards", kb, 3, DIM, chunk_size=2048)


@pytest.mark.parametrize("config", [{"index_type": "ivfpq", "pq_m": 16, "ivf_nlist": 16, "train_sample": 4_000},
                                    {"index_type": "flat"}], ids=["ivfpq", "flat"])
def test_streaming_merge_stays_under_a_memory_budget_and_equals_the_in_memory_one(
        config: dict, shards: tuple[Path, list[Path]], tmp_path: Path) -> None:
    kb, dirs = shards
    streaming = measure_merge(dirs, kb, tmp_path / "streaming", config, streaming=True)
    in_memory = measure_merge(dirs, kb, tmp_path / "in-memory", config, streaming=False)
    # The budget: half the vectors' size. What the streaming merge holds: a 6 MB chunk, IVF-PQ's
    # 24 bytes a vector (16 PQ codes + id), its 11.7 MB training sample and a bounded encoding table, ids and hashes.
    assert streaming["growth_mb"] < 0.5 * VECTORS_MB, (streaming, VECTORS_MB)
    assert in_memory["growth_mb"] > VECTORS_MB, (in_memory, VECTORS_MB)      # holds them all: what it replaced
    a, b = current_build(tmp_path / "streaming"), current_build(tmp_path / "in-memory")
    for name in ("index.faiss", "embeddings.npy", "passages.sqlite", "passage_hashes.npy"):
        assert _digest(a / name) == _digest(b / name), name
