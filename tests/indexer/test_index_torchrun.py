"""The real `torchrun`, 2 gloo processes on the CPU: `dpr index` (each rank embeds its slice, rank 0
merges and publishes) equals a single-process build, and resumes a rank's finished work."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexer import SearchIndex, build_index
from indexer.builds import current_build
from indexer.distributed import build_index_distributed, shard_dir
from indexer.shards import ShardSpec
from retriever.distributed import DistContext
from retriever.encoder import load_encoder


class Crash(RuntimeError):
    pass


def test_torchrun_index_equals_one_process_and_resumes_a_finished_rank(saved_model: Path, make_kb, torchrun,
                                                                       tmp_path: Path) -> None:
    kb = make_kb("kb80.jsonl", 0, 80)
    single = build_index(load_encoder(saved_model), [kb], tmp_path / "single", model_dir=str(saved_model),
                         progress=False, chunk_size=16)
    out = tmp_path / "multi"
    # Rank 1 of an earlier run finished its slice, then the run died before the merge.
    def die() -> None:
        raise Crash("killed at the barrier")
    with pytest.raises(Crash):
        build_index_distributed(load_encoder(saved_model), [kb], out, model_dir=str(saved_model),
                                ctx=DistContext(rank=1, world_size=2), chunk_size=16, progress=False, barrier=die)
    assert json.loads((shard_dir(tmp_path / "multi.work", ShardSpec(1, 2)) / "shard.json").read_text())["complete"]

    done = torchrun.launch("index", "--model", str(saved_model), "--kb", str(kb), "--out", str(out),
                           "--chunk-size", "16", "--no-progress")
    assert "rank 1/2: rows 40-79 embedded (0 embedded, 40 resumed" in done.stdout
    assert "indexed 80 passages into" in done.stdout and not (tmp_path / "multi.work").exists()
    with SearchIndex.open(out) as a, SearchIndex.open(single) as b:
        assert [p.pid for p in a.passages(range(80))] == [p.pid for p in b.passages(range(80))]
        np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)
        assert a.manifest["build"]["merged_shards"] == 2 and a.manifest["build"]["streaming"] is True
    assert current_build(out).name.startswith("000001-")


def test_a_rank_reuses_its_slice_of_the_served_build_and_loads_only_that(saved_model: Path, make_kb,
                                                                         tmp_path: Path) -> None:
    from common.data import load_corpus
    from indexer.build import content_hash, load_cached_vectors

    kb = make_kb("kb80.jsonl", 0, 80)
    encoder = load_encoder(saved_model)
    out = build_index(encoder, [kb], tmp_path / "idx", model_dir=str(saved_model), progress=False, chunk_size=16)
    stats = build_index_distributed(encoder, [kb], out, model_dir=str(saved_model), ctx=DistContext(rank=1, world_size=2),
                                    chunk_size=16, progress=False, barrier=lambda: None)
    assert (stats["reused"], stats["embedded"], stats["rows"]) == (40, 0, [40, 80])
    assert (stats["rank"], stats["world"]) == (1, 2)
    passages = load_corpus([kb])
    wanted = {content_hash(passages[50])}
    cached = load_cached_vectors(out, encoder.describe(), wanted=wanted)
    assert set(cached) == wanted
    with SearchIndex.open(out) as index:
        np.testing.assert_array_equal(cached[content_hash(passages[50])], index.embeddings[50])
