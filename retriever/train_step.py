"""One optimisation step: plain, gradient-cached, and/or spread over several processes.

All three compute the same gradient for the same global batch (up to float rounding): the loss is
always :func:`retriever.loss.batch_loss` over the whole batch's embeddings (and, when distilling, the
global batch's constant teacher scores), computed outside the model. What changes is how the embeddings are produced (one graph, or chunk by chunk with
:mod:`retriever.gradcache`) and where (this process, or each rank its slice, gathered).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from common.data import Passage
from retriever.batching import Batch
from retriever.distributed import DistContext, gather_rows, shard_batch, split_sizes
from retriever.encoder import DualEncoder
from retriever.gradcache import RngState, backward_cached, embedding_grads
from retriever.loss import LossConfig, batch_loss, contrastive_labels

logger = logging.getLogger(__name__)

PASSAGE_CHUNK = 16
SINGLE = DistContext()


class Towers(nn.Module):
    """What DistributedDataParallel wraps: one forward embeds lists of query and passage chunks.

    DualEncoder has no ``forward`` (it has separate query/passage entry points) and DDP only syncs
    gradients for work done inside its own ``forward``, hence this thin wrapper.
    """

    def __init__(self, encoder: DualEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, q_chunks: Sequence[dict[str, Tensor]],
                p_chunks: Sequence[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        q = [self.encoder.embed_queries(c) for c in q_chunks]                 # each [b, D]
        p = [self.encoder.embed_passages(c) for c in p_chunks]                # each [c, D]
        return self._cat(q), self._cat(p)

    def _cat(self, parts: list[Tensor]) -> Tensor:
        if parts:
            return torch.cat(parts)
        device = next(self.encoder.parameters()).device
        return torch.zeros((0, self.encoder.dim), device=device)


def wrap_towers(model: DualEncoder, ctx: DistContext) -> nn.Module:
    """:class:`Towers` for this process: DDP-wrapped when there are several ranks."""
    towers = Towers(model)
    if not ctx.enabled:
        return towers
    # find_unused_parameters: BERT's pooler runs but never reaches the loss. Buffers are constants
    # (position ids) and syncing them would need the same number of forward calls on every rank.
    return nn.parallel.DistributedDataParallel(
        towers, device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
        find_unused_parameters=True, broadcast_buffers=False)


@dataclass(frozen=True)
class ChunkPlan:
    """Tokenised chunks of one (local) batch: queries in order, passages sorted by length."""

    q_chunks: list[dict[str, Tensor]]
    p_chunks: list[dict[str, Tensor]]
    p_order: np.ndarray          # sorted position -> row of the batch's passages

    @property
    def p_inverse(self) -> np.ndarray:
        return np.argsort(self.p_order)


def plan_chunks(model: DualEncoder, questions: Sequence[str], passages: Sequence[Passage],
                device: torch.device, q_chunk: int | None, p_chunk: int) -> ChunkPlan:
    """Split a batch into forward-pass chunks.

    Passage lengths vary a lot (mean ~110 tokens, max 256 on nq_oracle); padding a whole random
    batch to its longest member wastes a third of the encoder's work, chunks of similar length don't.
    """
    q_chunk = q_chunk or max(1, len(questions))
    q_chunks = [_to(model.tokenize_queries(questions[i:i + q_chunk]), device)
                for i in range(0, len(questions), q_chunk)]
    tokens = model.tokenize_passages(passages, padding=False)
    order = np.argsort([-len(ids) for ids in tokens["input_ids"]], kind="stable")
    p_chunks = []
    for start in range(0, len(order), p_chunk):
        features = [{k: tokens[k][i] for k in tokens} for i in order[start:start + p_chunk]]
        p_chunks.append(_to(model.tokenizer.pad(features, return_tensors="pt"), device))
    return ChunkPlan(q_chunks, p_chunks, order)


def _to(inputs: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


class StepStats(NamedTuple):
    """One step over the global batch: the loss, the in-batch accuracy of picking the positive, and
    each term of the loss (``contrastive``, and ``distill`` when distilling)."""

    loss: float
    accuracy: float
    terms: dict[str, float]


def compute_gradients(model: DualEncoder, batch: Batch, device: torch.device, *,
                      towers: nn.Module | None = None, ctx: DistContext = SINGLE, grad_cache_chunk: int = 0,
                      q_chunk: int | None = None, p_chunk: int = PASSAGE_CHUNK,
                      loss_config: LossConfig | None = None) -> tuple[float, float]:
    """(loss, in-batch accuracy) of :func:`step_gradients`."""
    stats = step_gradients(model, batch, device, towers=towers, ctx=ctx, grad_cache_chunk=grad_cache_chunk,
                           q_chunk=q_chunk, p_chunk=p_chunk, loss_config=loss_config)
    return stats.loss, stats.accuracy


def step_gradients(model: DualEncoder, batch: Batch, device: torch.device, *,
                   towers: nn.Module | None = None, ctx: DistContext = SINGLE, grad_cache_chunk: int = 0,
                   q_chunk: int | None = None, p_chunk: int = PASSAGE_CHUNK,
                   loss_config: LossConfig | None = None) -> StepStats:
    """Accumulate into ``.grad`` the gradient of :func:`retriever.loss.batch_loss` on the global ``batch``.

    Loss, accuracy and terms are over the global batch. ``towers`` is the module the forward passes
    go through (a DDP-wrapped :class:`Towers` when distributed). ``grad_cache_chunk`` > 0 embeds
    ``grad_cache_chunk`` texts at a time with gradient caching; else queries go in chunks of
    ``q_chunk`` (all at once by default) and passages in length-sorted chunks of ``p_chunk``.
    ``loss_config`` None: the plain contrastive loss at the model's temperature.
    """
    towers = towers if towers is not None else Towers(model)
    local = shard_batch(batch, ctx.rank, ctx.world_size)
    q_sizes = split_sizes(len(batch), ctx.world_size)
    p_sizes = [n * batch.group_size for n in q_sizes]
    config = loss_config or LossConfig(temperature=model.config.temperature)
    teacher = None if batch.teacher_scores is None else torch.as_tensor(
        batch.teacher_scores, dtype=torch.float32, device=device)              # [B, 1+H], NaN: unscored
    terms: dict[str, Tensor] = {}

    def loss_fn(q: Tensor, p: Tensor) -> Tensor:
        # The one loss both paths use; it records its terms for the log.
        total, parts = batch_loss(q, p, teacher, config)
        terms.update(parts)
        return total

    if grad_cache_chunk:
        plan = plan_chunks(model, local.questions, local.passages, device, grad_cache_chunk, grad_cache_chunk)
        q_all, p_all, loss = _cached(model, towers, plan, ctx, q_sizes, p_sizes, loss_fn)
    else:
        plan = plan_chunks(model, local.questions, local.passages, device, q_chunk, p_chunk)
        q_loc, p_sorted = towers(plan.q_chunks, plan.p_chunks)                # [b, D], [b*(1+H), D]
        p_loc = p_sorted[torch.from_numpy(plan.p_inverse).to(device)]
        q_all = gather_rows(q_loc, q_sizes, ctx.rank)                         # [B, D]
        p_all = gather_rows(p_loc, p_sizes, ctx.rank)                         # [B*(1+H), D]
        loss = loss_fn(q_all, p_all)
        # Each rank's backward reaches only its own rows; DDP then averages over ranks, so the sum
        # of per-rank gradients (the single-process gradient) needs the factor world_size.
        (loss * ctx.world_size).backward()
    with torch.no_grad():
        labels = contrastive_labels(q_all.shape[0], p_all.shape[0], q_all.device)
        accuracy = (model.score(q_all, p_all).argmax(dim=1) == labels).float().mean().item()
    return StepStats(loss.item(), accuracy, {k: v.item() for k, v in terms.items()})


def _cached(model: DualEncoder, towers: nn.Module, plan: ChunkPlan, ctx: DistContext, q_sizes: list[int],
            p_sizes: list[int], loss_fn: Callable[[Tensor, Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    device = next(model.parameters()).device
    jobs: list[tuple[str, dict[str, Tensor], RngState]] = []
    q_parts, p_parts = [], []
    with torch.no_grad():
        for kind, chunks, parts, embed in (("q", plan.q_chunks, q_parts, model.embed_queries),
                                           ("p", plan.p_chunks, p_parts, model.embed_passages)):
            for chunk in chunks:
                state = RngState.capture(device)
                parts.append(embed(chunk))
                jobs.append((kind, chunk, state))
    inverse = torch.from_numpy(plan.p_inverse).to(device)
    q_all = gather_rows(torch.cat(q_parts), q_sizes, ctx.rank)                # [B, D]
    p_all = gather_rows(torch.cat(p_parts)[inverse], p_sizes, ctx.rank)       # [B*(1+H), D]
    loss, (q_grad, p_grad) = embedding_grads(loss_fn, q_all, p_all)
    q_off, p_off = sum(q_sizes[:ctx.rank]), sum(p_sizes[:ctx.rank])
    q_grad = q_grad[q_off:q_off + q_sizes[ctx.rank]] * ctx.world_size       # [b, D], see compute_gradients
    p_grad = p_grad[p_off:p_off + p_sizes[ctx.rank]] * ctx.world_size       # [b*(1+H), D], batch order
    p_grad = p_grad[torch.from_numpy(plan.p_order).to(device)]               # sorted order, like the chunks
    q_start = p_start = 0
    no_sync = getattr(towers, "no_sync", None)
    for i, (kind, chunk, state) in enumerate(jobs):
        # DDP all-reduces on every backward unless told not to: only the last chunk syncs.
        sync = no_sync is None or i == len(jobs) - 1
        with (contextlib.nullcontext() if sync else no_sync()), state.replay():
            if kind == "q":
                emb, _ = towers([chunk], [])
                grad, q_start = q_grad[q_start:q_start + emb.shape[0]], q_start + emb.shape[0]
            else:
                _, emb = towers([], [chunk])
                grad, p_start = p_grad[p_start:p_start + emb.shape[0]], p_start + emb.shape[0]
            backward_cached(emb, grad)
    return q_all.detach(), p_all.detach(), loss


def train_step(model: DualEncoder, batch: Batch, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, max_grad_norm: float, device: torch.device, *,
               towers: nn.Module | None = None, ctx: DistContext = SINGLE, grad_cache_chunk: int = 0,
               loss_config: LossConfig | None = None) -> StepStats:
    """One optimiser step on one global batch; returns its :class:`StepStats` (``[0]`` is the loss)."""
    optimizer.zero_grad(set_to_none=True)
    stats = step_gradients(model, batch, device, towers=towers, ctx=ctx, grad_cache_chunk=grad_cache_chunk,
                           loss_config=loss_config)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    return stats
