"""What a training run is built from: data and knowledge bases, model, optimiser, schedule, negatives."""
from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.data import DataError, Example, Passage, corpus_from_examples, is_beir_dir, load_corpus, load_examples
from retriever.encoder import DualEncoder, load_encoder
from retriever.mining import mine_hard_negatives
from retriever.train_config import TrainConfig

logger = logging.getLogger(__name__)

VAL_SPLITS = ("val", "dev", "test")


@dataclass(frozen=True)
class TrainData:
    train: list[Example]
    val: list[Example]
    val_kb: list[Passage]      # what validation ranks
    mining_kb: list[Passage]   # where hard negatives come from (never a validation gold passage)


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


# ----------------------------------------------------------------------------- negatives


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


def check_file_negatives(config: TrainConfig, data: TrainData) -> None:
    missing = sum(not ex.hard_negatives for ex in data.train)
    if missing == len(data.train):
        raise DataError(f"{config.train}: --hard-negatives file, but no record has hard negatives "
                        f"('hard_negative(s)' or DPR 'hard_negative_ctxs'); `dpr mine` can add them")
    if missing:
        logger.warning("%d of %d training records have no hard negative; random passages stand in",
                       missing, len(data.train))


def needs_mining(config: TrainConfig, epoch: int) -> bool:
    if not config.uses_hard_negatives:
        return False
    if config.hard_negatives == "file" or config.remine_every == 0:
        return epoch == 1
    return (epoch - 1) % config.remine_every == 0
