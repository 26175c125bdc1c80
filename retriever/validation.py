"""Validation retrieval metrics for the trainer: encode a knowledge base, rank it, score with common.metrics.

Also the encoder validation and mining run (:class:`EvalEncoder`, ``--eval-runtime``): the training
model itself, or a frozen ONNX Runtime copy (fp32 or int8) of its current weights.
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
from torch import nn

from common.data import Example, Passage
from common.metrics import mrr_at_k, ndcg_at_k, recall_at_k
from retriever.encoder import DualEncoder
from retriever.mining import dense_topk

logger = logging.getLogger(__name__)


def relevance(examples: Sequence[Example], kb: Sequence[Passage]) -> dict[str, dict[str, int]]:
    """``{qid: {pid: 1}}`` over knowledge-base ids: a hit is the gold passage's id or its exact text.

    Matching by text too matters because a knowledge base may hold one gold text under two ids.
    """
    by_text: dict[str, list[str]] = {}
    for p in kb:
        by_text.setdefault(p.text.strip(), []).append(p.pid)
    kb_pids = {p.pid for p in kb}
    qrels: dict[str, dict[str, int]] = {}
    for ex in examples:
        rel = qrels.setdefault(ex.qid, {})
        for gold in ex.positives:
            rel[gold.pid] = 1
            rel.update({pid: 1 for pid in by_text.get(gold.text.strip(), [])})
    missing = sum(not (rel.keys() & kb_pids) for rel in qrels.values())
    if missing:
        logger.warning("%d of %d validation questions have no gold passage in the knowledge base", missing,
                       len(qrels))
    return qrels


def evaluate(encoder: DualEncoder, examples: Sequence[Example], kb: Sequence[Passage],
             ks: Sequence[int] = (1, 5, 10, 20, 100), batch_size: int = 64,
             progress: bool = False, on_vectors: Callable[[np.ndarray], None] | None = None) -> dict[str, float]:
    """Recall@k (share of questions with a gold passage in the top k) for each k, plus MRR@10 and nDCG@10.

    ``on_vectors`` receives the passage embeddings of ``kb`` (float32 [N, D]): the trainer's mining reuses them.
    """
    depth = max(max(ks), 10)
    p_emb = encoder.encode_passages(kb, batch_size=batch_size, progress=progress)
    if on_vectors is not None:
        on_vectors(p_emb)
    q_emb = encoder.encode_queries([ex.question for ex in examples], batch_size=batch_size, progress=progress)
    _, rows = dense_topk(q_emb, p_emb, depth)
    run: dict[str, list[str]] = {}
    for ex, row in zip(examples, rows):
        run.setdefault(ex.qid, [kb[j].pid for j in row])
    qrels = relevance(examples, kb)
    metrics = {f"recall@{k}": recall_at_k(qrels, run, k) for k in ks}
    metrics["mrr@10"] = mrr_at_k(qrels, run, 10)
    metrics["ndcg@10"] = ndcg_at_k(qrels, run, 10)
    return metrics


def format_metrics(metrics: dict[str, float]) -> str:
    """``recall@1 41.2, ...``: metrics as percentages, for the log."""
    return ", ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items())


# ----------------------------------------------------------------------------- the encoder that validates

# --eval-runtime -> (retriever.runtime.prepare_encoder's runtime, quantize)
EVAL_RUNTIMES: dict[str, tuple[str, str]] = {"torch": ("torch", "none"), "onnx": ("onnx", "none"),
                                              "onnx-int8": ("onnx", "int8")}


def resolve_eval_runtime(eval_runtime: str, device_type: str, passages: int, precision: str = "fp32") -> str:
    """``--eval-runtime auto`` made concrete: torch when the model computes in bf16 (``precision``, the
    resolved training precision), else onnx-int8 for a CPU run validating on at least
    :data:`~retriever.train_config.AUTO_INT8_MIN_PASSAGES` passages (when ONNX Runtime is installed),
    else torch. Any other value is returned as given."""
    from retriever.train_config import AUTO_INT8_MIN_PASSAGES, missing_onnx_packages

    if eval_runtime != "auto":
        return eval_runtime
    if precision == "bf16" or device_type != "cpu" or passages < AUTO_INT8_MIN_PASSAGES:
        return "torch"
    if missing_onnx_packages():
        logger.info("--eval-runtime auto: onnxruntime/onnx not installed, validating on torch")
        return "torch"
    return "onnx-int8"


def inference_copy(model: DualEncoder, eval_runtime: str) -> DualEncoder:
    """A frozen CPU copy of ``model``'s current weights, running on ``eval_runtime`` (not torch).

    ``model`` is left as it was (same towers, device, mode and gradients): it keeps training.
    """
    from retriever.runtime import prepare_encoder

    runtime, quantize = EVAL_RUNTIMES[eval_runtime]

    def tower(module: nn.Module | None) -> nn.Module | None:
        # Parameter.__deepcopy__ copies the data, never .grad.
        return None if module is None else copy.deepcopy(module).cpu().float().eval().requires_grad_(False)

    clone = DualEncoder(model.config, tower(model.query_model), model.tokenizer, tower(model.passage_model))
    return prepare_encoder(clone, runtime, quantize)


class EvalEncoder:
    """What validation and mining encode with: the training model (``torch``) or an inference copy of
    its current weights (:func:`inference_copy`), exported once per set of weights (optimiser step)
    and kept until the weights change, so mining right after a validation reuses validation's export.

    Every validation, the starting model's (epoch 0) included, runs on the same runtime, so the
    metric that selects the checkpoint is measured one way throughout.
    """

    def __init__(self, eval_runtime: str) -> None:
        if eval_runtime not in EVAL_RUNTIMES:
            raise ValueError(f"eval_runtime must be one of {tuple(EVAL_RUNTIMES)}, got {eval_runtime!r}")
        self.eval_runtime = eval_runtime
        self._copy: tuple[int, DualEncoder] | None = None
        self._warned = False

    def get(self, model: DualEncoder, step: int) -> tuple[DualEncoder, float | None]:
        """The encoder for ``model`` at optimiser step ``step`` and the seconds an export took now
        (None: nothing was exported, i.e. torch or the copy of this step was there)."""
        if self.eval_runtime == "torch":
            return model, None
        if self._copy is not None and self._copy[0] == step:
            return self._copy[1], None
        self._copy = None   # free the old graphs before building the new ones
        if not self._warned and next(model.parameters()).device.type != "cpu":
            logger.warning("--eval-runtime %s validates and mines with ONNX Runtime on the CPU while training "
                           "runs on %s; --eval-runtime torch encodes there", self.eval_runtime,
                           next(model.parameters()).device)
            self._warned = True
        t0 = time.perf_counter()
        clone = inference_copy(model, self.eval_runtime)
        seconds = round(time.perf_counter() - t0, 1)
        logger.info("validation encoder: exported the weights of step %d to %s in %.1f s", step,
                    self.eval_runtime, seconds)
        self._copy = (step, clone)
        return clone, seconds

    def drop(self) -> None:
        """Forget the copy (the weights moved on)."""
        self._copy = None
