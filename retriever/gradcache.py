"""Gradient caching (Gao et al. 2021, "GradCache"): large contrastive batches in bounded memory.

The contrastive loss couples every query with every passage, so a batch cannot simply be split into
gradient-accumulation pieces. GradCache splits the work instead: (1) embed every chunk without a
graph, (2) compute the loss on the full embedding matrices and backpropagate only to the embeddings,
(3) re-run each chunk with a graph and backpropagate the cached embedding gradient through it. Only
one chunk's activations are alive at a time; the result equals the plain gradient when step (3)
sees the same dropout masks as step (1), which :class:`RngState` arranges.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RngState:
    """The random state a chunk's forward pass started from (CPU, plus the GPU it ran on)."""

    cpu: Tensor
    cuda: Tensor | None
    device: torch.device

    @classmethod
    def capture(cls, device: torch.device) -> RngState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda, device)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state, then put the generators back where they were."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def embedding_grads(loss_fn, *embeddings: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Step (2): the loss on detached embeddings and d loss / d embedding for each of them.

    ``loss_fn(*leaves)`` must build the loss from the given tensors only (no model in between).
    """
    leaves = [e.detach().requires_grad_(True) for e in embeddings]
    loss = loss_fn(*leaves)
    grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), list(grads)


def backward_cached(embedding: Tensor, grad: Tensor) -> None:
    """Step (3) for one chunk: push the cached gradient through the freshly built graph.

    ``sum(embedding * grad)`` has exactly ``grad`` as its gradient w.r.t. ``embedding``.
    """
    if embedding.shape != grad.shape:
        raise ValueError(f"cached gradient {tuple(grad.shape)} does not match embedding {tuple(embedding.shape)}")
    (embedding * grad).sum().backward()
