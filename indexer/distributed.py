"""``torchrun ... dpr index``: every rank embeds its slice of the knowledge base, rank 0 merges.

Under ``torchrun`` (``WORLD_SIZE > 1``) rank ``r`` of ``W`` embeds KB rows ``r/W`` into the same
resumable shard layout ``dpr index --shard r/W`` writes (``<out>.work/shard-r-of-W/``), on its local
GPU when it has one. The ranks then meet at a barrier and rank 0 merges the shards (streaming, see
:mod:`indexer.merge`) and publishes the index as a new build of ``--out``; the work directory goes once
that succeeded. A rank that dies leaves its finished chunks: the same command run again embeds only
what is missing. With ``WORLD_SIZE == 1`` this is :func:`indexer.build.build_index`.
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from indexer.build import default_work_dir, embed_shard
from indexer.builds import DEFAULT_KEEP
from indexer.config import IndexConfig
from indexer.merge import merge_shards
from indexer.shards import DEFAULT_CHUNK, ShardSpec
from retriever.distributed import DistContext, setup, teardown
from retriever.distributed import barrier as dist_barrier

logger = logging.getLogger(__name__)

# Rank 0 merges (and, for IVF, trains) while the others have nothing left to do; they wait for
# each other only once, after embedding, so the longest wait is the slowest rank's embedding.
BARRIER_TIMEOUT = timedelta(hours=24)


def shard_dir(work: Path, spec: ShardSpec) -> Path:
    return work / f"shard-{spec.index:03d}-of-{spec.count:03d}"


def build_index_distributed(encoder: Any, kb_paths: Sequence[str | Path], out_dir: str | Path,
                            config: IndexConfig = IndexConfig(), *, model_dir: str | Path | None = None,
                            ctx: DistContext | None = None, work_dir: str | Path | None = None,
                            chunk_size: int = DEFAULT_CHUNK, bm25: bool = True, keep_builds: int = DEFAULT_KEEP,
                            progress: bool = True, barrier: Callable[[], None] | None = None,
                            local_gpu: bool = True) -> dict[str, Any]:
    """This rank's part of a multi-process build; rank 0 returns with the index published.

    ``ctx`` (default: joined from torchrun's environment by :func:`retriever.distributed.setup`, as
    training does, on ``cuda:LOCAL_RANK`` when there is a GPU and ``local_gpu``; off for ONNX Runtime
    or int8 encoders, which run on the CPU) says which rank this is. ``barrier`` (default: the process
    group's) is called once every rank's shard is complete. Returns this rank's embedding stats, its
    ``rank`` and ``world``, and ``out`` on rank 0.
    """
    owned = ctx is None
    ctx = ctx or setup(device="auto" if local_gpu else "cpu", timeout=BARRIER_TIMEOUT)
    try:
        out_dir = Path(out_dir)
        work = Path(work_dir) if work_dir is not None else default_work_dir(out_dir)
        spec = ShardSpec(ctx.rank, ctx.world_size)
        if ctx.device.type == "cuda":
            encoder.to(ctx.device)
        logger.info("rank %d/%d embeds its slice on %s into %s", ctx.rank, ctx.world_size, ctx.device,
                    shard_dir(work, spec))
        stats = embed_shard(encoder, kb_paths, shard_dir(work, spec), spec, model_dir=model_dir,
                            chunk_size=chunk_size, batch_size=config.batch_size, progress=progress,
                            reuse_from=out_dir, private=True)
        (barrier or (lambda: dist_barrier(ctx)))()
        stats = {**stats, "rank": ctx.rank, "world": ctx.world_size}
        if ctx.rank != 0:
            return stats
        shards = [shard_dir(work, ShardSpec(i, ctx.world_size)) for i in range(ctx.world_size)]
        out = merge_shards(shards, out_dir, config, kb_paths=list(kb_paths), bm25=bm25, progress=progress,
                           keep_builds=keep_builds)
        shutil.rmtree(work, ignore_errors=True)
        return {**stats, "out": str(out)}
    finally:
        if owned:
            # No closing barrier: the other ranks are done once rank 0 merges (or may be gone).
            teardown(ctx, clean=False)
