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
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from indexer.build import default_work_dir, embed_shard
from indexer.builds import DEFAULT_KEEP
from indexer.config import IndexConfig
from indexer.merge import merge_shards
from indexer.shards import DEFAULT_CHUNK, ShardSpec

logger = logging.getLogger(__name__)

# Rank 0 merges (and, for IVF, trains) while the others have nothing left to do; they wait for
# each other only once, after embedding, so the longest wait is the slowest rank's embedding.
BARRIER_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int

    @classmethod
    def from_env(cls) -> Ranks:
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")))


def shard_dir(work: Path, spec: ShardSpec) -> Path:
    return work / f"shard-{spec.index:03d}-of-{spec.count:03d}"


def place_on_local_gpu(encoder: Any, local_rank: int) -> str:
    """Move the encoder to ``cuda:LOCAL_RANK`` when CUDA is there; returns the device used."""
    import torch

    if torch.cuda.is_available():
        device = f"cuda:{local_rank % torch.cuda.device_count()}"
        encoder.to(device)
        return device
    return "cpu"


def _torch_barrier(ranks: Ranks) -> Callable[[], None]:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", rank=ranks.rank, world_size=ranks.world, timeout=BARRIER_TIMEOUT)

    def barrier() -> None:
        dist.barrier()
    return barrier


def build_index_distributed(encoder: Any, kb_paths: Sequence[str | Path], out_dir: str | Path,
                            config: IndexConfig = IndexConfig(), *, model_dir: str | Path | None = None,
                            ranks: Ranks | None = None, work_dir: str | Path | None = None,
                            chunk_size: int = DEFAULT_CHUNK, bm25: bool = True, keep_builds: int = DEFAULT_KEEP,
                            progress: bool = True, barrier: Callable[[], None] | None = None,
                            local_gpu: bool = True) -> dict[str, Any]:
    """This rank's part of a multi-process build; rank 0 returns with the index published.

    ``barrier`` (default: ``torch.distributed`` over gloo, from torchrun's environment) is called once
    every rank's shard is complete. ``local_gpu``: move a torch encoder to this rank's GPU when there
    is one (off for ONNX Runtime or int8 encoders, which run on the CPU). Returns this rank's
    embedding stats (and ``out`` on rank 0).
    """
    ranks = ranks or Ranks.from_env()
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir is not None else default_work_dir(out_dir)
    spec = ShardSpec(ranks.rank, ranks.world)
    device = place_on_local_gpu(encoder, ranks.local_rank) if local_gpu else "cpu"
    logger.info("rank %d/%d embeds its slice on %s into %s", ranks.rank, ranks.world, device, shard_dir(work, spec))
    stats = embed_shard(encoder, kb_paths, shard_dir(work, spec), spec, model_dir=model_dir, chunk_size=chunk_size,
                        batch_size=config.batch_size, progress=progress, reuse_from=out_dir, private=True)
    (barrier or _torch_barrier(ranks))()
    if ranks.rank != 0:
        return stats
    shards = [shard_dir(work, ShardSpec(i, ranks.world)) for i in range(ranks.world)]
    out = merge_shards(shards, out_dir, config, kb_paths=list(kb_paths), bm25=bm25, progress=progress,
                       keep_builds=keep_builds)
    shutil.rmtree(work, ignore_errors=True)
    return {**stats, "out": str(out)}
