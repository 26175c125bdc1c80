"""Two gloo processes on the CPU take the same optimisation steps as one process on the global batch."""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from common.data import Passage
from reliability.serve_proc import free_port
from retriever.batching import Batch
from retriever.distributed import gather_rows, shard_batch, split_sizes

REPO = Path(__file__).resolve().parents[2]

# Each process: the tiny model without dropout (ranks draw different masks than one process would),
# a plain step on a 7-question batch (uneven 4/3 split), then a gradient-cached step on another.
WORKER = textwrap.dedent('''
    import json, sys
    import numpy as np, torch
    from safetensors.torch import save_file
    from retriever.batching import make_batches
    from common.data import corpus_from_examples, load_examples
    from retriever.distributed import setup, teardown
    from retriever.encoder import load_encoder
    from retriever.train_setup import build_optimizer, linear_schedule
    from retriever.train_step import train_step, wrap_towers

    def main(tiny, train_file, out):
        torch.set_num_threads(1)
        ctx = setup("cpu")
        model = load_encoder(tiny, query_max_length=32, passage_max_length=64)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        model.train()
        examples = load_examples(train_file)
        batches = make_batches(examples[:14], 7, np.random.default_rng(0), num_hard_negatives=1,
                               filler=corpus_from_examples(examples))
        towers = wrap_towers(model, ctx)
        opt = build_optimizer(model, 1e-3, 0.01)
        sched = linear_schedule(opt, 0, 10)
        losses = [train_step(model, batches[0], opt, sched, 1.0, ctx.device, towers=towers, ctx=ctx)[0],
                  train_step(model, batches[1], opt, sched, 1.0, ctx.device, towers=towers, ctx=ctx,
                             grad_cache_chunk=3)[0]]
        if ctx.rank == 0:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out + ".safetensors")
            open(out + ".json", "w").write(json.dumps({"losses": losses, "sizes": [len(b) for b in batches]}))
        teardown(ctx)

    if __name__ == "__main__":
        main(*sys.argv[1:4])
''')


def test_two_gloo_ranks_step_like_one_process(tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(free_port())
    base_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port}
    procs = []
    for rank in range(2):
        env = {**base_env, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}
        procs.append(subprocess.Popen([sys.executable, str(script), str(tiny_base), str(small_nq[0]),
                                       str(tmp_path / "two")], env=env, stderr=subprocess.PIPE, text=True))
    # The single-process reference runs here meanwhile (WORLD_SIZE unset: no process group).
    runpy.run_path(str(script), run_name="worker")["main"](str(tiny_base), str(small_nq[0]), str(tmp_path / "one"))
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert one["sizes"][0] == 7 and one["sizes"][1] >= 3        # uneven shards: 4/3, then grad cache
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    w1, w2 = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    start = load_file(str(tiny_base / "model.safetensors"))
    moved = 0
    for name, value in w1.items():
        assert torch.allclose(value, w2[name], atol=1e-6), name
        moved += not torch.allclose(value, start[name.removeprefix("query_model.")], atol=1e-7)
    assert moved > 10                                   # the steps changed the weights at all


def _batch(n: int, group: int) -> Batch:
    passages = tuple(Passage(f"p{i}", "", f"text {i}") for i in range(n * group))
    return Batch(qids=tuple(f"q{i}" for i in range(n)), questions=tuple(f"question {i}" for i in range(n)),
                 passages=passages)


def test_shards_are_contiguous_groups_that_rebuild_the_batch() -> None:
    batch = _batch(7, 3)
    assert split_sizes(7, 2) == [4, 3] and split_sizes(7, 3) == [3, 2, 2]
    shards = [shard_batch(batch, r, 3) for r in range(3)]
    assert sum((s.questions for s in shards), ()) == batch.questions
    assert sum((s.passages for s in shards), ()) == batch.passages
    assert all(s.group_size == 3 for s in shards) and shard_batch(batch, 0, 1) is batch
    local = torch.ones(2, 4, requires_grad=True)
    assert gather_rows(local, [2], 0) is local


def test_the_process_group_gets_the_configured_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 validates and mines alone while the others wait in a collective: the default 30 min
    (gloo) must not cut a long mining pass short, so the timeout comes from TrainConfig."""
    from datetime import timedelta

    import retriever.distributed as distributed
    from retriever.train_config import TrainConfig

    seen: dict = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: seen.update(kw))
    ctx = distributed.setup("cpu", timeout=timedelta(minutes=TrainConfig("t", "v", "o").dist_timeout_minutes))
    assert ctx.world_size == 2 and ctx.rank == 1
    assert seen["backend"] == "gloo" and seen["timeout"] == timedelta(hours=6)
