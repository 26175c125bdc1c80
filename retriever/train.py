"""The training loop: in-batch (+ hard) negatives, AdamW, linear warmup/decay, best-checkpoint keeping.

Deliberately one short readable loop (no HF Trainer). Per epoch: (re)mine hard negatives if asked,
build duplicate-free batches, take one optimiser step per batch, then measure validation Recall@k.
The starting model is measured too (epoch 0) and saved first, and a later epoch replaces the
checkpoint only if it beats the best Recall@val_k so far (MRR@10 breaks ties): training never
ships a model that validates worse than the one it started from.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from retriever.batching import Batch, make_batches
from retriever.config import write_json
from retriever.data import (DataError, Example, Passage, corpus_from_examples, is_beir_dir, load_corpus,
                            load_examples)
from retriever.encoder import DualEncoder, load_encoder, model_ref
from retriever.loss import contrastive_labels, contrastive_loss
from retriever.mining import mine_hard_negatives
from retriever.train_config import TRAIN_CONFIG_FILE, TRAIN_LOG_FILE, TrainConfig
from retriever.validation import evaluate

logger = logging.getLogger(__name__)

VAL_SPLITS = ("val", "dev", "test")
PASSAGE_CHUNK = 16
TIE_BREAK = "mrr@10"


@dataclass(frozen=True)
class TrainData:
    train: list[Example]
    val: list[Example]
    val_kb: list[Passage]      # what validation ranks
    mining_kb: list[Passage]   # where hard negatives come from (never a validation gold passage)


@dataclass(frozen=True)
class TrainResult:
    out: Path
    best_epoch: int
    best_metrics: dict[str, float]
    log: dict[str, Any]


# ----------------------------------------------------------------------------- setup


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_val_split(folder: str | Path, split: str | None) -> str:
    """The BEIR split to validate on: the one asked for, else the first of val/dev/test that exists."""
    if split is not None:
        return split
    available = sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))
    for name in VAL_SPLITS:
        if name in available:
            return name
    raise DataError(f"{folder}: no validation split among qrels {available}; pass --val-split")


def load_data(config: TrainConfig) -> TrainData:
    """Training/validation examples and the two knowledge bases.

    The validation KB defaults to the gold passages of train + val (the oracle KB) plus the corpus of
    any BEIR folder given. Hard negatives are mined from the same KB minus validation gold passages:
    mining those would train the model against the very passages validation looks for.
    """
    train = load_examples(config.train, config.train_split)
    if len(train) < 2:
        raise DataError(f"{config.train}: {len(train)} training question(s); in-batch negatives need at least 2")
    val_split = pick_val_split(config.val, config.val_split) if is_beir_dir(config.val) else "val"
    val = load_examples(config.val, val_split)
    if config.kb:
        val_kb = load_corpus(config.kb)
    else:
        beir = [p for p in dict.fromkeys((config.train, config.val)) if is_beir_dir(p)]
        val_kb = _dedup(corpus_from_examples([*train, *val]) + (load_corpus(beir) if beir else []))
    train_gold = {key for ex in train for p in ex.positives for key in (p.pid, p.text)}
    val_gold = {key for ex in val for p in ex.positives for key in (p.pid, p.text)} - train_gold
    mining_kb = _dedup(corpus_from_examples(train) + [p for p in val_kb if p.pid not in val_gold
                                                      and p.text not in val_gold])
    logger.info("train %d questions, val %d questions, validation KB %d passages, mining KB %d passages",
                len(train), len(val), len(val_kb), len(mining_kb))
    return TrainData(train, val, val_kb, mining_kb)


def _dedup(passages: Sequence[Passage]) -> list[Passage]:
    seen: dict[str, Passage] = {}
    for p in passages:
        seen.setdefault(p.pid, p)
    return list(seen.values())


def build_model(config: TrainConfig) -> DualEncoder:
    """Continue from a saved dual encoder (it keeps its own options) or start from a base checkpoint."""
    return load_encoder(config.model, **config.encoder_overrides())


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; biases and LayerNorm weights (all 1-d parameters) get no weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to the base LR over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- one step


def embed_passages_sorted(model: DualEncoder, passages: Sequence[Passage], device: torch.device,
                          chunk: int = PASSAGE_CHUNK) -> torch.Tensor:
    """Passage embeddings (with grad) in input order, computed in length-sorted chunks.

    Passage lengths vary a lot (mean ~110 tokens, max 256 on nq_oracle); padding a whole random
    batch to its longest member wastes a third of the encoder's work, chunks of similar length don't.
    """
    tokens = model.tokenize_passages(passages, padding=False)
    order = np.argsort([-len(ids) for ids in tokens["input_ids"]], kind="stable")
    parts = []
    for start in range(0, len(order), chunk):
        features = [{k: tokens[k][i] for k in tokens} for i in order[start:start + chunk]]
        inputs = model.tokenizer.pad(features, return_tensors="pt")
        parts.append(model.embed_passages({k: v.to(device) for k, v in inputs.items()}))
    inverse = torch.from_numpy(np.argsort(order)).to(device)
    return torch.cat(parts)[inverse]


def train_step(model: DualEncoder, batch: Batch, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, max_grad_norm: float,
               device: torch.device) -> tuple[float, float]:
    """One optimiser step on one batch; returns (loss, in-batch accuracy of picking the positive)."""
    q_inputs = {k: v.to(device) for k, v in model.tokenize_queries(batch.questions).items()}
    q_emb = model.embed_queries(q_inputs)                                     # [B, D]
    p_emb = embed_passages_sorted(model, batch.passages, device)              # [B*(1+H), D]
    loss = contrastive_loss(q_emb, p_emb, model.config.temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        labels = contrastive_labels(q_emb.shape[0], p_emb.shape[0], device)
        accuracy = (model.score(q_emb, p_emb).argmax(dim=1) == labels).float().mean().item()
    return loss.item(), accuracy


# ----------------------------------------------------------------------------- the loop


def hard_negatives_for(config: TrainConfig, model: DualEncoder, data: TrainData,
                       progress: bool) -> list[list[Passage]]:
    """Ranked hard-negative candidates per training example (a few spares for batch conflicts)."""
    if config.hard_negatives == "file":
        return [list(ex.hard_negatives) for ex in data.train]
    spares = config.num_hard_negatives + 3
    return mine_hard_negatives(
        data.train, data.mining_kb, spares, method=config.hard_negatives, encoder=model,
        skip_answer_passages=config.skip_answer_negatives, depth=config.mine_depth,
        batch_size=config.eval_batch_size, progress=progress,
    )


def run_epoch(model: DualEncoder, batches: Sequence[Batch], optimizer: torch.optim.Optimizer,
              scheduler: torch.optim.lr_scheduler.LRScheduler, config: TrainConfig, device: torch.device,
              epoch: int, progress: bool = True) -> list[dict[str, Any]]:
    """One pass over ``batches``; returns per-step loss, in-batch accuracy and learning rate."""
    model.train()
    steps: list[dict[str, Any]] = []
    bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not progress)
    try:
        for batch in bar:
            if len(batch.passages) < 2:
                continue     # a lone leftover question with no negative has nothing to learn from
            lr = scheduler.get_last_lr()[0]
            loss, accuracy = train_step(model, batch, optimizer, scheduler, config.max_grad_norm, device)
            steps.append({"epoch": epoch, "loss": round(loss, 5), "accuracy": round(accuracy, 4), "lr": lr})
            recent = steps[-10:]
            bar.set_postfix(loss=f"{np.mean([s['loss'] for s in recent]):.4f}",
                            acc=f"{np.mean([s['accuracy'] for s in recent]):.3f}")
    finally:
        model.eval()
    return steps


def _check_file_negatives(config: TrainConfig, data: TrainData) -> None:
    missing = sum(not ex.hard_negatives for ex in data.train)
    if missing == len(data.train):
        raise DataError(f"{config.train}: --hard-negatives file, but no record has hard negatives "
                        f"('hard_negative(s)' or DPR 'hard_negative_ctxs'); `dpr mine` can add them")
    if missing:
        logger.warning("%d of %d training records have no hard negative; random passages stand in",
                       missing, len(data.train))


def _needs_mining(config: TrainConfig, epoch: int) -> bool:
    if not config.uses_hard_negatives:
        return False
    if config.hard_negatives == "file" or config.remine_every == 0:
        return epoch == 1
    return (epoch - 1) % config.remine_every == 0


def _save(model: DualEncoder, config: TrainConfig, log: dict[str, Any]) -> None:
    # The model directory is replaced as a whole, so the JSON files beside the weights go in again.
    out = Path(config.out)
    model.save(out, extra={"training": {"base": model_ref(config.model), "epoch": log["best_epoch"],
                                        config.val_metric: log["best_value"]}})
    write_json(out / TRAIN_CONFIG_FILE, config.to_dict())
    write_json(out / TRAIN_LOG_FILE, log)


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Run training as configured; the best checkpoint, its config and the log end up in ``config.out``."""
    started = time.perf_counter()
    seed_everything(config.seed)
    device = resolve_device(config.device)
    data = load_data(config)
    model = build_model(config).to(device)
    if config.hard_negatives == "file":
        _check_file_negatives(config, data)
    optimizer = build_optimizer(model, config.lr, config.weight_decay)
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
    log: dict[str, Any] = {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model_ref(config.model), "encoder": model.config.to_dict(), "device": str(device),
        "data": {"train": len(data.train), "val": len(data.val), "val_kb": len(data.val_kb),
                 "mining_kb": len(data.mining_kb)},
        "best_metric": config.val_metric, "tie_break": TIE_BREAK, "epochs": [], "steps": [], "finished": False,
    }

    t0 = time.perf_counter()
    metrics = evaluate(model, data.val, data.val_kb, config.eval_ks, config.eval_batch_size, progress)
    log["epochs"].append({"epoch": 0, "metrics": metrics, "eval_seconds": round(time.perf_counter() - t0, 1)})
    log.update(best_epoch=0, best_value=metrics[config.val_metric])
    best_key = _rank_key(metrics, config)
    logger.info("epoch 0 (start): %s", _fmt(metrics))
    _save(model, config, log)

    negatives: list[list[Passage]] | None = None
    mined_at = None
    for epoch in range(1, config.epochs + 1):
        row: dict[str, Any] = {"epoch": epoch}
        t0 = time.perf_counter()
        if _needs_mining(config, epoch):
            negatives, mined_at = hard_negatives_for(config, model, data, progress), epoch
        row["mine_seconds"] = round(time.perf_counter() - t0, 1)
        row["negatives"] = ({"source": config.hard_negatives, "per_question": config.num_hard_negatives,
                             "mined_before_epoch": mined_at} if config.uses_hard_negatives else {"source": "none"})
        batches = make_batches(data.train, config.batch_size, np.random.default_rng([config.seed, epoch]),
                               num_hard_negatives=config.num_hard_negatives if config.uses_hard_negatives else 0,
                               negatives=negatives, filler=data.mining_kb)
        if scheduler is None:
            # Sized from real batches: deferring a conflicting example can add one per epoch.
            total = len(batches) * config.epochs
            scheduler = linear_schedule(optimizer, int(config.warmup_ratio * total), total)

        t0 = time.perf_counter()
        steps = run_epoch(model, batches, optimizer, scheduler, config, device, epoch, progress)
        for i, s in enumerate(steps, start=len(log["steps"]) + 1):
            s["step"] = i
        log["steps"].extend(steps)
        row.update(loss=float(np.mean([s["loss"] for s in steps])), steps=len(steps),
                   accuracy=float(np.mean([s["accuracy"] for s in steps])),
                   train_seconds=round(time.perf_counter() - t0, 1))

        t0 = time.perf_counter()
        metrics = evaluate(model, data.val, data.val_kb, config.eval_ks, config.eval_batch_size, progress)
        row.update(metrics=metrics, eval_seconds=round(time.perf_counter() - t0, 1))
        row["best"] = _rank_key(metrics, config) > best_key
        log["epochs"].append(row)
        logger.info("epoch %d: loss %.4f, in-batch accuracy %.3f, %s%s", epoch, row["loss"], row["accuracy"],
                    _fmt(metrics), " (best so far)" if row["best"] else "")
        if row["best"]:
            log.update(best_epoch=epoch, best_value=metrics[config.val_metric])
            best_key = _rank_key(metrics, config)
            _save(model, config, log)
        else:
            write_json(Path(config.out) / TRAIN_LOG_FILE, log)

    log.update(finished=True, total_seconds=round(time.perf_counter() - started, 1))
    write_json(Path(config.out) / TRAIN_LOG_FILE, log)
    best = log["epochs"][log["best_epoch"]]["metrics"]
    return TrainResult(Path(config.out), log["best_epoch"], best, log)


def _rank_key(metrics: dict[str, float], config: TrainConfig) -> tuple[float, float]:
    # Recall@5 saturates quickly (MiniLM starts at 99.2 on nq_oracle), so ties are common: MRR@10 breaks them.
    return metrics[config.val_metric], metrics[TIE_BREAK]


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items())
