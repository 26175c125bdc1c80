"""What a training run is built from: data and knowledge bases, model, optimiser, schedule, loss,
negatives (and their teacher scores)."""
from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.data import DataError, Example, Passage, corpus_from_examples, is_beir_dir, load_corpus, load_examples
from retriever.distributed import DistContext, broadcast_object
from retriever.encoder import DualEncoder, load_encoder
from retriever.loss import LossConfig
from retriever.mining import PassageVectors, mine_hard_negatives, read_mining_input
from retriever.teacher import Teacher, TeacherScores, read_teacher_scores, score_candidates, teacher_temperature
from retriever.train_config import TrainConfig

logger = logging.getLogger(__name__)

VAL_SPLITS = ("val", "dev", "test")
# Third word of the mining sampler's seed [seed, epoch, stream]: apart from batching's [seed, epoch].
MINING_STREAM = 1


@dataclass(frozen=True)
class TrainData:
    train: list[Example]
    val: list[Example]
    val_kb: list[Passage]      # what validation ranks
    mining_kb: list[Passage]   # where hard negatives come from (never a validation gold passage)
    pseudo_queries: dict[str, Any] | None = None   # --unsupervised: how the examples were made

    def summary(self) -> dict[str, Any]:
        """The train log's ``data`` entry."""
        sizes = {"train": len(self.train), "val": len(self.val), "val_kb": len(self.val_kb),
                 "mining_kb": len(self.mining_kb)}
        return sizes if self.pseudo_queries is None else {**sizes, "pseudo_queries": self.pseudo_queries}


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
    ``--unsupervised`` trains on pseudo queries from the ``--kb`` passages instead
    (:mod:`retriever.unsupervised`, which also says how it validates without ``--val``).
    """
    if config.unsupervised:
        return _unsupervised_data(config)
    train = load_examples(config.train, config.train_split)
    if len(train) < 2:
        raise DataError(f"{config.train}: {len(train)} training question(s); in-batch negatives need at least 2")
    val = _load_val(config)
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


def _load_val(config: TrainConfig) -> list[Example]:
    return load_examples(config.val, pick_val_split(config.val, config.val_split) if is_beir_dir(config.val) else "val")


def _unsupervised_data(config: TrainConfig) -> TrainData:
    """Pseudo training examples from the KB; validation on ``--val`` or on held-out pseudo queries, both
    ranked against the whole KB."""
    from retriever.unsupervised import pseudo_data

    kb = load_corpus(config.kb)
    val = _load_val(config) if config.val else None
    made = pseudo_data(config, kb, val)
    val = made.val if val is None else val
    logger.info("unsupervised: %d %s pseudo training examples, val %d %s, validation KB %d passages, mining KB %d "
                "passages", len(made.train), made.summary["method"], len(val), made.summary["validation"], len(kb),
                len(made.mining_kb))
    return TrainData(made.train, val, kb, made.mining_kb, made.summary)


def _dedup(passages: Sequence[Passage]) -> list[Passage]:
    seen: dict[str, Passage] = {}
    for p in passages:
        seen.setdefault(p.pid, p)
    return list(seen.values())


def build_model(config: TrainConfig) -> DualEncoder:
    """Continue from a saved dual encoder (it keeps its own options) or start from a base checkpoint."""
    model = load_encoder(config.model, **config.encoder_overrides())
    if config.attention_dropout is not None:
        set_attention_dropout(model, config.attention_dropout)
    return model


def attention_dropouts(model: nn.Module) -> list[nn.Dropout]:
    """The dropout on attention probabilities of every BERT-family self-attention layer of ``model``.

    ``BertSelfAttention``, ``DistilBertSelfAttention``, ... hold it as ``.dropout`` and read its ``p``
    at each forward.
    """
    return [m.dropout for m in model.modules()
            if type(m).__name__.endswith("SelfAttention") and isinstance(getattr(m, "dropout", None), nn.Dropout)]


def set_attention_dropout(model: nn.Module, p: float) -> int:
    """Set the dropout on attention probabilities of every tower to ``p``; returns the layers changed.

    The saved ``config.json`` keeps the checkpoint's own rate: this is a training setting
    (``train_config.json`` records it), and inference never drops out.
    """
    layers = attention_dropouts(model)
    for dropout in layers:
        dropout.p = p
    changed = len(layers)
    if not changed:
        raise ValueError(f"--attention-dropout: found no self-attention dropout in {type(model).__name__}'s towers "
                         "(a BERT-family encoder has one per layer)")
    logger.info("attention dropout %.2f in %d self-attention layers", p, changed)
    return changed


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


def loss_config_for(config: TrainConfig, model: DualEncoder) -> LossConfig:
    """The loss a step computes; the contrastive temperature is the model's own."""
    distill = config.distill_weight > 0
    return LossConfig(temperature=model.config.temperature, symmetric=config.symmetric,
                      distill_weight=config.distill_weight,
                      teacher_temperature=teacher_temperature(config.teacher, config.teacher_temperature)
                      if distill else 1.0,
                      student_temperature=config.student_temperature)


# ----------------------------------------------------------------------------- negatives


def hard_negatives_for(config: TrainConfig, model: DualEncoder, data: TrainData,
                       progress: bool, epoch: int = 1, known: PassageVectors | None = None,
                       stats: dict[str, int] | None = None) -> list[list[Passage]]:
    """Ranked hard-negative candidates per training example (a few spares for batch conflicts).

    A rank window samples with the seed ``[seed, epoch, MINING_STREAM]``: each round draws anew, and
    a rerun (or a resume) draws the same. ``known``/``stats``: see :func:`mine_hard_negatives`.
    """
    if config.hard_negatives == "file":
        return [list(ex.hard_negatives) for ex in data.train]
    spares = config.num_hard_negatives + 3
    window = config.negative_window
    return mine_hard_negatives(
        data.train, data.mining_kb, spares, method=config.hard_negatives, encoder=model,
        skip_answer_passages=config.skip_answer_negatives, depth=config.mine_depth,
        batch_size=config.eval_batch_size, progress=progress, window=window, margin=config.negative_margin,
        rng=np.random.default_rng([config.seed, epoch, MINING_STREAM]) if window is not None else None,
        known=known, stats=stats,
    )


@dataclass
class RoundNegatives:
    """One mining round: candidates per training example and, when distilling, the teacher's score of
    each example's positives and candidates by passage id (computed once, here, not every step)."""

    passages: list[list[Passage]]
    teacher_scores: list[TeacherScores] | None = None
    reused_vectors: int = 0   # passage embeddings mining took from validation (not checkpointed)

    def ids(self) -> list[list[str]]:
        return [[p.pid for p in row] for row in self.passages]

    def digest(self) -> str:
        """A short hash of every candidate id in order: tells in the log whether a round changed them."""
        return hashlib.sha1("\n".join(" ".join(row) for row in self.ids()).encode()).hexdigest()[:12]

    def state(self, with_passages: bool) -> dict[str, Any]:
        """What a resume checkpoint keeps (passage ids; a file's negatives are read again instead)."""
        return {"negatives": self.ids() if with_passages else None, "teacher_scores": self.teacher_scores}


def mine_round(config: TrainConfig, model: DualEncoder, data: TrainData, ctx: DistContext, teacher: Teacher | None,
               epoch: int, progress: bool, known: PassageVectors | None = None,
               encoder: Callable[[], DualEncoder] | None = None) -> RoundNegatives:
    """Mine (rank 0; the weights are the same everywhere) or read the file (every rank), then score
    with the teacher on rank 0; the other ranks receive passage ids and scores.

    ``known``: passage embeddings of the model's current weights (the last validation's) that dense
    mining reuses instead of encoding those passages again. ``encoder``: makes what rank 0 mines with
    (validation's encoder of ``model``, e.g. an ONNX Runtime copy; called only when it mines; default ``model``).
    """
    stats = {"reused_vectors": 0}
    if config.hard_negatives == "file":
        passages = hard_negatives_for(config, model, data, progress, epoch)
    else:
        if ctx.is_main and encoder is not None and config.hard_negatives == "model":
            model = encoder()
        mined = hard_negatives_for(config, model, data, progress, epoch, known, stats) if ctx.is_main else None
        ids = broadcast_object(ctx, None if mined is None else RoundNegatives(mined).ids())
        passages = mined if mined is not None else passages_by_id(ids, data.mining_kb, "rank 0 mined")
    scores = None
    if config.distill_weight:
        scores = broadcast_object(ctx, teacher_scores_for(config, teacher, data, passages) if ctx.is_main else None)
    return RoundNegatives(passages, scores, stats["reused_vectors"])


def teacher_scores_for(config: TrainConfig, teacher: Teacher | None, data: TrainData,
                       negatives: Sequence[Sequence[Passage]]) -> list[TeacherScores]:
    """Scores of a file's records that hold them all (``dpr mine --teacher``); the teacher scores the rest."""
    scores: list[TeacherScores | None] = [None] * len(data.train)
    if config.hard_negatives == "file":
        scores, teachers = read_teacher_scores(*read_mining_input(config.train, config.train_split))
        if teachers and teacher is not None and teachers != {teacher.name}:
            logger.warning("%s holds scores of teacher(s) %s, used as they are; --teacher is %s (it sets the "
                           "default --teacher-temperature)", config.train, sorted(teachers), teacher.name)
    missing = [i for i, s in enumerate(scores) if s is None]
    if missing:
        if teacher is None:
            raise ValueError("distillation needs a teacher to score the negatives")
        fresh = score_candidates(teacher, [data.train[i] for i in missing], [negatives[i] for i in missing])
        for i, s in zip(missing, fresh):
            scores[i] = s
    if len(missing) < len(scores):
        logger.info("teacher scores of %d of %d questions come from %s", len(scores) - len(missing), len(scores),
                    config.train)
    return scores


def passages_by_id(ids: list[list[str]], kb: Sequence[Passage], where: str) -> list[list[Passage]]:
    by_id = {p.pid: p for p in kb}
    unknown = sorted({pid for row in ids for pid in row if pid not in by_id})
    if unknown:
        raise ValueError(f"{where}: hard negatives not in the mining knowledge base (e.g. {unknown[:3]}); "
                         "was the data changed?")
    return [[by_id[pid] for pid in row] for row in ids]


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
