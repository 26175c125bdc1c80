"""Multi-process training with ``torch.distributed``: process group set-up, batch sharding, gathering.

Launched by ``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) each process
trains on its slice of every global batch. The global batch is what a single process would use, so
one step on N processes equals one step on one process: embeddings are all-gathered so every query
still sees every passage of the global batch as a negative.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from retriever.batching import Batch

logger = logging.getLogger(__name__)

# TrainConfig.dist_timeout_minutes is what training passes; this is for other callers.
DEFAULT_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``world_size == 1`` is plain single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str = "auto", timeout: timedelta = DEFAULT_TIMEOUT) -> DistContext:
    """Join the process group when launched with WORLD_SIZE > 1 (gloo on CPU, nccl on GPU).

    ``device="auto"`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU. ``timeout`` bounds
    every collective: long enough for rank 0 to validate and mine alone while the others wait.
    """
    world = env_world_size()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        chosen = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        chosen = torch.device(device)
        if chosen.type == "cuda" and chosen.index is None and world > 1:
            chosen = torch.device(f"cuda:{local_rank}")
    if world == 1:
        return DistContext(device=chosen)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout)
        logger.info("rank %d/%d joined the %s process group on %s", rank, world, backend, chosen)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=chosen)


# The last barrier's work handles, kept until the process ends (see teardown).
_LAST_WORK: list[Any] = []


def teardown(ctx: DistContext, clean: bool = True) -> None:
    """Leave the process group; after an error skip the barrier (the other ranks may be gone).

    The barrier's work handle is kept alive on purpose. Otherwise gloo's worker thread frees it right
    after it completes, which needs the GIL, while the main thread may be freeing the process group
    (the DDP reducer holds the last reference) with the GIL held and waiting for that thread's lock: a
    deadlock seen on a resumed 2-rank run, rank 1 hung in ``~ProcessGroupGloo`` after training ended.
    Kept here, the work is freed by the main thread at exit, after the group is gone.
    """
    if ctx.enabled and dist.is_initialized():
        if clean:
            work = dist.barrier(async_op=True)
            work.wait()
            _LAST_WORK.append(work)
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a JSON-like value: mined passage ids, a flag)."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(ctx: DistContext, obj: Any) -> list[Any]:
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def split_sizes(n: int, world_size: int) -> list[int]:
    """How many of ``n`` questions each rank takes: contiguous slices differing by at most one."""
    return [len(part) for part in np.array_split(np.arange(n), world_size)]


def shard_batch(batch: Batch, rank: int, world_size: int) -> Batch:
    """Rank ``rank``'s contiguous slice of a global batch, passages kept grouped with their question.

    Concatenating the slices in rank order gives back the global batch, so gathered embeddings keep
    the grouped layout that :func:`retriever.loss.contrastive_loss` expects.
    """
    if world_size == 1:
        return batch
    sizes = split_sizes(len(batch), world_size)
    start = sum(sizes[:rank])
    stop = start + sizes[rank]
    g = batch.group_size
    return Batch(qids=batch.qids[start:stop], questions=batch.questions[start:stop],
                 passages=batch.passages[start * g:stop * g])


def gather_rows(local: Tensor, sizes: list[int], rank: int) -> Tensor:
    """All ranks' rows ``[sum(sizes), D]``, with gradient flowing only into this rank's own rows.

    Every rank computes the loss over the full gathered batch, so each rank's backward covers the
    gradient through its own embeddings from all queries; summing over ranks gives the full gradient.
    Ranks hold different row counts (the last batch), so rows are padded to the largest and trimmed.
    """
    if len(sizes) == 1:
        return local
    if local.shape[0] != sizes[rank]:
        raise ValueError(f"rank {rank} holds {local.shape[0]} rows, expected {sizes[rank]}")
    longest = max(sizes)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[:local.shape[0]] = local.detach()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    rows = [part[:n] for part, n in zip(parts, sizes)]
    rows[rank] = local
    return torch.cat(rows)
