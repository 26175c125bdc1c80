"""Gradient caching: chunked embedding + cached embedding gradients give the plain gradient."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import corpus_from_examples, load_examples
from retriever.batching import Batch, make_batches
from retriever.encoder import DualEncoder
from retriever.gradcache import RngState, backward_cached
from retriever.train_step import compute_gradients


def _batch(small_nq: tuple[Path, Path], n: int = 7) -> Batch:
    examples = load_examples(small_nq[0])
    return make_batches(examples[:n], n, np.random.default_rng(0), num_hard_negatives=1,
                        filler=corpus_from_examples(examples))[0]


def _grads(model: DualEncoder, batch: Batch, seed: int = 0, **kw) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, _ = compute_gradients(model, batch, torch.device("cpu"), **kw)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and len(a) > 10
    # Chunks pad to different lengths, so sums run in another order: float32 noise, relative to the
    # largest gradient (attention key biases have a true gradient of 0, i.e. only noise).
    scale = max(float(g.abs().max()) for g in a.values())
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-3, atol=1e-5 * scale), name


def test_cached_gradient_equals_plain_gradient_without_dropout(tiny_encoder: DualEncoder,
                                                                small_nq: tuple[Path, Path]) -> None:
    batch = _batch(small_nq)
    tiny_encoder.eval()                         # no dropout: chunking alone must not change anything
    plain_loss, plain = _grads(tiny_encoder, batch)
    cached_loss, cached = _grads(tiny_encoder, batch, grad_cache_chunk=3)
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5)
    _assert_close(plain, cached)


def test_cached_gradient_replays_dropout_masks(tiny_encoder: DualEncoder, small_nq: tuple[Path, Path]) -> None:
    batch = _batch(small_nq)
    tiny_encoder.train()
    # Same chunks and seed: the plain pass draws the masks the cached first pass draws, and the
    # replay must redraw exactly those.
    plain_loss, plain = _grads(tiny_encoder, batch, seed=1, q_chunk=4, p_chunk=4)
    cached_loss, cached = _grads(tiny_encoder, batch, seed=1, grad_cache_chunk=4)
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5)
    _assert_close(plain, cached)
    _, other = _grads(tiny_encoder, batch, seed=2, q_chunk=4, p_chunk=4)
    assert not torch.allclose(plain["query_model.embeddings.word_embeddings.weight"],
                              other["query_model.embeddings.word_embeddings.weight"], atol=1e-6)


def test_rng_replay_restores_the_stream_and_cached_backward_checks_shapes() -> None:
    state = RngState.capture(torch.device("cpu"))
    first = torch.rand(3)
    after = torch.get_rng_state()
    with state.replay():
        assert torch.equal(torch.rand(3), first)
    assert torch.equal(torch.get_rng_state(), after)
    x = torch.ones(2, 3, requires_grad=True)
    backward_cached(x * 2, torch.full((2, 3), 0.5))
    assert torch.equal(x.grad, torch.ones(2, 3))
    with pytest.raises(ValueError, match="does not match"):
        backward_cached(x * 2, torch.ones(3, 2))
