"""Corpus encoding throughput, side by side in one process: the indexer's path against the alternatives.

Rows (same weights, max length, batch size and torch threads; same passages):

- ``indexer``: :meth:`DualEncoder.encode_passages` (all passages tokenised at once, length-sorted
  batches so each pads only to its own longest member, ``inference_mode``), what ``dpr index`` runs;
- ``indexer int8``: the same with torch dynamic int8 (:mod:`retriever.quantize`);
- ``indexer bf16``: the same with bf16 matrix multiplies (:mod:`retriever.precision`), ``--quantize bf16``;
- ``indexer onnx`` / ``indexer onnx int8``: the same on ONNX Runtime, fp32 and dynamic int8
  (:mod:`retriever.onnx_runtime`); ``dpr index --runtime onnx [--quantize int8]``;
- ``naive``: batches in file order, each padded to its longest member, autograd on (no no_grad);
- ``sentence-transformers``: ``SentenceTransformer(path).encode`` (optional ``.[bench]`` extra).

Each row also gets its share of the machine's fp32 matmul rate, measured in the same run: useful
FLOPs (real tokens only: ``2 * linear_params * tokens`` plus ``4 * L^2 * hidden`` attention per layer
and sequence) per second over the best ``torch.mm`` rate.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.data import Passage, corpus_from_examples, load_corpus, load_examples
from retriever.encoder import CONFIG_FILE, DualEncoder, load_encoder, resolve_model_path

logger = logging.getLogger(__name__)

ST_MISSING = "skipped: pip install '.[bench]' (sentence-transformers)"


def sample_passages(kb_paths: Sequence[str | Path], n: int, seed: int = 0) -> list[Passage]:
    """``n`` passages drawn without replacement from the union of ``kb_paths``, kept in file order.

    nq_oracle JSON files contribute their gold passages, other files are read as a corpus.
    """
    passages: list[Passage] = []
    for path in kb_paths:
        path = Path(path)
        if path.suffix == ".json":
            passages.extend(corpus_from_examples(load_examples(path)))
        else:
            passages.extend(load_corpus([path]))
    if not passages:
        raise ValueError(f"no passages in {list(map(str, kb_paths))}")
    if n >= len(passages):
        return passages
    keep = np.sort(np.random.default_rng(seed).choice(len(passages), n, replace=False))
    return [passages[i] for i in keep]


def mixed_lengths(passages: Sequence[Passage], seed: int = 0, min_words: int = 5,
                  max_words: int = 250) -> list[Passage]:
    """The same number of passages, re-cut to log-uniform lengths between ``min_words`` and ``max_words``.

    DPR-style knowledge bases are uniform ~100-word chunks; real ones mix titles, FAQ answers and long
    paragraphs. The text stream (all passages' words in order) is cut into pieces of drawn lengths, so
    the words stay real and the order of lengths is random, as in a file written without sorting.
    """
    rng = np.random.default_rng(seed)
    words = [w for p in passages for w in p.text.split()]
    lengths = np.exp(rng.uniform(np.log(min_words), np.log(max_words), len(passages))).astype(int)
    out, at = [], 0
    for p, length in zip(passages, lengths, strict=True):
        if at + length > len(words):
            at = 0
        out.append(Passage(pid=f"{p.pid}-mixed", title=p.title, text=" ".join(words[at:at + length])))
        at += length
    return out


def matmul_gflops(seconds: float = 1.0, size: int = 1024) -> float:
    """Best fp32 ``torch.mm`` rate (GFLOP/s) over ``seconds``, with torch's current thread count."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)                                                     # warm-up: thread pool, caches
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * size ** 3 / (time.perf_counter() - start))
    return best / 1e9


def _linear_params(model: nn.Module) -> int:
    # Counted from the fp32 towers: a quantised tower's packed weights are not parameters.
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def encoder_flops(encoder: DualEncoder, lengths: Sequence[int]) -> float:
    """Useful forward FLOPs to encode sequences of ``lengths`` real tokens (no padding) with the passage tower."""
    config = encoder.passage_tower.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers")
    hidden = encoder.dim
    lengths = np.asarray(lengths, dtype=np.float64)
    dense = 2.0 * _linear_params(encoder.passage_tower) * lengths.sum()
    attention = 4.0 * layers * hidden * (lengths ** 2).sum()
    return float(dense + attention)


def naive_encode(encoder: DualEncoder, passages: Sequence[Passage], batch_size: int) -> np.ndarray:
    """The loop a first version would write: file order, pad each batch to its longest, autograd on."""
    out = []
    for start in range(0, len(passages), batch_size):
        inputs = encoder.tokenize_passages(passages[start:start + batch_size])
        out.append(encoder.embed_passages(inputs).detach().numpy())
    return np.concatenate(out).astype(np.float32)


def sentence_transformers_encoder(model_path: str, max_length: int) -> Callable[[Sequence[Passage], int], np.ndarray] | None:
    """``encode(passages, batch_size)`` through sentence-transformers, or None when it is not installed."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = max_length

    def encode(passages: Sequence[Passage], batch_size: int) -> np.ndarray:
        # "title [SEP] text" gives the same tokens as the indexer's text pair (token type ids aside).
        texts = [f"{p.title} [SEP] {p.text}" for p in passages]
        return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    return encode


VARIANTS = (("torch", "int8"), ("torch", "bf16"), ("onnx", "none"), ("onnx", "int8"))
VARIANT_NOTES = {
    ("torch", "int8"): "torch dynamic int8 nn.Linear (retriever/quantize.py)",
    ("torch", "bf16"): "torch, bf16 matmuls by autocast (retriever/precision.py; AMX tiles where the CPU has them)",
    ("onnx", "none"): "ONNX Runtime, fused layers, fp32 (retriever/onnx_runtime.py)",
    ("onnx", "int8"): "ONNX Runtime, fused layers, dynamic int8 (retriever/onnx_runtime.py)",
}


def variant_name(runtime: str, quantize: str) -> str:
    return "indexer " + " ".join(x for x in ("onnx" if runtime == "onnx" else "", "" if quantize == "none" else quantize)
                                 if x)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * b, axis=1)))


def run_encoding(model: str, passages: Sequence[Passage], batch_size: int = 64, repeats: int = 1,
                 sentence_transformers: bool = True, variants: Sequence[tuple[str, str]] = VARIANTS,
                 naive: bool = True) -> dict[str, Any]:
    """Encode ``passages`` every way in this process; rows with passages/s, FLOP share and ratios.

    ``variants``: (runtime, quantize) pairs run besides the fp32 torch indexer, see
    :func:`retriever.runtime.prepare_encoder`. The ways take turns (``repeats`` rounds of one pass
    each, best pass kept), so a change in the machine's load during the run hits every row alike
    instead of whichever ran at that moment. Each round starts one way later than the last, so no
    way always follows the same neighbour (an ONNX Runtime session's threads spin for a moment after
    a run). Besides the best-of ratio, each row keeps its speed-up over the indexer in every round
    (``x_indexer_rounds``): on a shared 2-core VM one pass varies by several percent, and the spread
    says how far a single ratio can be trusted.
    """
    from retriever.runtime import prepare_encoder

    encoder = load_encoder(model)
    max_length = encoder.config.passage_max_length
    lengths = [len(ids) for ids in encoder.tokenize_passages(passages, padding=False)["input_ids"]]
    flops = encoder_flops(encoder, lengths)
    peak = matmul_gflops()
    ways: dict[str, tuple[Callable[[], np.ndarray] | None, str]] = {
        "indexer": (lambda: encoder.encode_passages(passages, batch_size=batch_size),
                    "length-sorted batches, inference_mode")}
    if naive:
        ways["naive"] = (lambda: naive_encode(encoder, passages, batch_size),
                         "file order, pad to batch longest, autograd on")
    if sentence_transformers:
        if (Path(model) / CONFIG_FILE).exists():
            # A saved dual encoder (towers in sub-directories) is not something sentence-transformers loads.
            ways["sentence-transformers"] = (None, "skipped: a saved dual-encoder directory is not a "
                                                   "sentence-transformers checkpoint")
        else:
            st = sentence_transformers_encoder(resolve_model_path(model), max_length)
            ways["sentence-transformers"] = ((lambda: st(passages, batch_size)) if st is not None else None,
                                             "SentenceTransformer.encode" if st is not None else ST_MISSING)
    others = []
    for runtime, quantize in variants:
        other = prepare_encoder(load_encoder(model), runtime, quantize)
        others.append(other)
        ways[variant_name(runtime, quantize)] = (
            (lambda e=other: e.encode_passages(passages, batch_size=batch_size)), VARIANT_NOTES[runtime, quantize])
    warm = passages[:batch_size]
    for e in (encoder, *others):                                            # thread pools, allocator
        e.encode_passages(warm, batch_size=batch_size)
    if sentence_transformers and ways["sentence-transformers"][0] is not None:
        st(warm, batch_size)
    runnable = [name for name, (fn, _note) in ways.items() if fn is not None]
    passes: dict[str, list[float]] = {name: [] for name in runnable}
    vectors: dict[str, np.ndarray] = {}
    for round_ in range(max(1, repeats)):
        shift = round_ % len(runnable)
        for name in runnable[shift:] + runnable[:shift]:
            start = time.perf_counter()
            vectors[name] = ways[name][0]()
            passes[name].append(time.perf_counter() - start)
    best = {name: min(times) for name, times in passes.items()}
    reference = vectors["indexer"]
    rows: list[dict[str, Any]] = []
    for name, (_fn, note) in ways.items():
        row: dict[str, Any] = {"name": name, "note": note}
        if name in best:
            seconds = best[name]
            row.update(seconds=round(seconds, 3), passages_per_s=round(len(passages) / seconds, 1),
                       gflops=round(flops / seconds / 1e9, 2),
                       share_of_matmul=round(flops / seconds / 1e9 / peak, 3),
                       indexer_speedup=round(seconds / best["indexer"], 2),
                       passes_s=[round(t, 3) for t in passes[name]])
            if name != "indexer":
                rounds = [i / t for i, t in zip(passes["indexer"], passes[name], strict=True)]
                row.update(x_indexer_best=round(best["indexer"] / seconds, 2),
                           x_indexer_rounds=[round(x, 2) for x in rounds],
                           x_indexer_median=round(float(np.median(rounds)), 2),
                           cosine_to_indexer=round(_cosine(vectors[name], reference), 4))
        rows.append(row)
    return {
        "model": model, "passages": len(passages), "tokens": int(sum(lengths)),
        "mean_tokens": round(float(np.mean(lengths)), 1), "max_tokens": int(max(lengths)),
        "batch_size": batch_size, "max_length": max_length, "torch_threads": torch.get_num_threads(),
        "repeats": repeats, "matmul_gflops": round(peak, 1), "rows": rows,
    }
