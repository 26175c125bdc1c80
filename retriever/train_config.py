"""The trainer's configuration: a frozen dataclass saved as ``train_config.json`` beside the checkpoint."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.choices import HARD_NEGATIVE_SOURCES, POOLINGS, SIMILARITIES, HardNegatives, Pooling, Similarity
from common.data import is_beir_dir
from common.files import check_config_keys, read_json
from common.flags import opt

TRAIN_CONFIG_FILE = "train_config.json"
TRAIN_LOG_FILE = "train_log.json"
# Fields a resumed run may change: they decide where and how fast it runs, not which steps it takes.
RESUME_FREE_FIELDS = ("device", "checkpoint_every", "grad_cache_chunk", "eval_batch_size", "dist_timeout_minutes")
# The encoder fields a fresh model takes from the command line; None means EncoderConfig's default.
ENCODER_FIELDS = ("pooling", "similarity", "temperature", "tie_encoders", "query_max_length", "passage_max_length")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (paths included), so a run can be repeated from its JSON.

    ``dpr train``'s flags are generated from these fields (:mod:`common.flags`): each default and help
    text is written here once. Defaults were chosen on nq_oracle (500 train questions) from the
    packaged MiniLM (``dpr bench recall``); ``epochs=2`` with model-mined negatives stays well inside
    15 minutes on 2 CPU cores.
    """

    train: str = opt(help="training questions: nq_oracle JSON/JSONL, DPR JSON or a BEIR folder", group="data",
                     metavar="PATH")
    val: str = opt(help="validation questions (same layouts)", group="data", metavar="PATH")
    out: str = opt(help="where the best checkpoint, train_config.json and train_log.json go (--train, --val and "
                        "--out are required unless --resume)", group="data", metavar="DIR")
    kb: tuple[str, ...] = opt((), "validation knowledge base (repeatable; JSONL, BEIR folder or question files); "
                              "default: the gold passages of --train and --val", group="data", action="append",
                              metavar="PATH", show_default=False)
    train_split: str = opt("train", "BEIR qrels split for --train", group="data")
    val_split: str | None = opt(None, "BEIR qrels split for --val; none: val, dev or test, whichever exists",
                                group="data")
    model: str = opt("minilm", "base checkpoint (hub name, local dir, or 'minilm', the packaged offline default) "
                     "or a saved dual-encoder dir to continue from", group="model")
    # Encoder options for a fresh model (None = EncoderConfig's defaults); a saved model keeps its own.
    pooling: Pooling | None = opt(None, "new models only (none: mean)", group="model")
    similarity: Similarity | None = opt(None, "new models only (none: cos)", group="model")
    temperature: float | None = opt(None, "softmax temperature (none: 0.05 for cos, 1 for dot)", group="model")
    tie_encoders: bool | None = opt(None, "one shared encoder for queries and passages (none: tied)", group="model")
    query_max_length: int | None = opt(None, "new models only (none: 64 tokens)", group="model")
    passage_max_length: int | None = opt(None, "new models only (none: 256 tokens)", group="model")
    epochs: int = opt(2, "passes over the training questions", group="optimisation")
    batch_size: int = opt(32, "questions per batch (the global batch under torchrun)", group="optimisation")
    lr: float = opt(2e-5, "peak learning rate (AdamW, linear warmup and decay)", group="optimisation")
    weight_decay: float = opt(0.01, "AdamW weight decay (not on biases and norms)", group="optimisation")
    warmup_ratio: float = opt(0.1, "share of the steps spent warming up", group="optimisation")
    max_grad_norm: float = opt(1.0, "gradient clipping norm", group="optimisation")
    seed: int = opt(42, "seed of batching, mining and initialisation", group="optimisation")
    device: str = opt("auto", "auto (cuda:LOCAL_RANK under torchrun if CUDA is there, else cpu), cpu, cuda, "
                      "cuda:1 ...", group="optimisation")
    # Texts per forward pass with gradient caching (0 = off): bounds activation memory, same gradient.
    grad_cache_chunk: int = opt(0, "gradient caching: embed N texts per forward pass, so activation memory is "
                                "that of N, not of the whole batch; same gradient, one extra forward pass "
                                "(0: off)", group="optimisation", metavar="N")
    hard_negatives: HardNegatives = opt("model", "none (in-batch only), model (mined by the current model), bm25, "
                                        "or file (hard_negative(s) / hard_negative_ctxs in --train)",
                                        group="hard negatives")
    num_hard_negatives: int = opt(1, "hard negatives per question", group="hard negatives")
    remine_every: int = opt(0, "re-mine every N epochs with the current model; 0: mine once",
                            group="hard negatives", metavar="N")
    skip_answer_negatives: bool = opt(True, "never use a passage containing an answer string as a negative",
                                      group="hard negatives")
    mine_depth: int = opt(100, "how deep to look for negatives past the filtered passages", group="hard negatives")
    val_k: int = opt(5, "Recall@k that picks the checkpoint kept (unless --select-metric names another), ties "
                     "broken by MRR@10", group="validation")
    # "auto" = nDCG@10 on a BEIR folder (graded, several relevant passages per query), else Recall@val_k
    # (DPR top-k accuracy, one gold passage).
    select_metric: str = opt("auto", "validation metric that picks the checkpoint kept: auto (nDCG@10 for a BEIR "
                             "--val, else Recall@val-k), recall@K, mrr@10 or ndcg@10", group="validation",
                             metavar="METRIC")
    eval_ks: tuple[int, ...] = opt((1, 5, 10, 20, 100), "Recall@k cut-offs reported each epoch", group="validation",
                                   metavar="K,K,...")
    eval_batch_size: int = opt(64, "texts per encoder batch when validating and mining", group="validation")
    checkpoint_every: int = opt(50, "write the resume state to OUT/resume every STEPS optimiser steps and at each "
                                "epoch end; a finished run deletes it", group="checkpoints and resuming",
                                metavar="STEPS")
    # torch.distributed's default is 30 min for gloo, 10 for NCCL; rank 0 alone validates and mines a
    # whole corpus meanwhile, which can take hours.
    dist_timeout_minutes: float = opt(360.0, "under torchrun: how long ranks wait for each other in a collective, "
                                      "e.g. while rank 0 validates and mines alone",
                                      group="checkpoints and resuming", metavar="MIN")

    def __post_init__(self) -> None:
        for name in ("train", "val", "out"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required (--{name})")
        object.__setattr__(self, "kb", tuple(str(p) for p in self.kb))
        selected = re.fullmatch(r"recall@(\d+)", self.select_metric)
        extra = {int(selected.group(1))} if selected else set()
        object.__setattr__(self, "eval_ks", tuple(sorted({int(k) for k in self.eval_ks} | {self.val_k} | extra)))
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"batch_size must be >= 2 (in-batch negatives), got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}"),
            (self.hard_negatives in HARD_NEGATIVE_SOURCES,
             f"hard_negatives must be one of {HARD_NEGATIVE_SOURCES}, got {self.hard_negatives!r}"),
            (self.num_hard_negatives >= 0, f"num_hard_negatives must be >= 0, got {self.num_hard_negatives}"),
            (self.remine_every >= 0, f"remine_every must be >= 0, got {self.remine_every}"),
            (self.mine_depth >= 1, f"mine_depth must be >= 1, got {self.mine_depth}"),
            (self.val_k >= 1 and min(self.eval_ks) >= 1, f"k values must be >= 1, got {self.val_k}, {self.eval_ks}"),
            (self.select_metric in ("auto", "mrr@10", "ndcg@10") or re.fullmatch(r"recall@[1-9]\d*", self.select_metric),
             f"select_metric must be auto, recall@K, mrr@10 or ndcg@10, got {self.select_metric!r}"),
            (self.grad_cache_chunk >= 0, f"grad_cache_chunk must be >= 0, got {self.grad_cache_chunk}"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (self.dist_timeout_minutes > 0, f"dist_timeout_minutes must be > 0, got {self.dist_timeout_minutes}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
            (self.pooling in (None, *POOLINGS), f"pooling must be one of {POOLINGS}, got {self.pooling!r}"),
            (self.similarity in (None, *SIMILARITIES),
             f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def uses_hard_negatives(self) -> bool:
        return self.hard_negatives != "none" and self.num_hard_negatives > 0

    @property
    def val_metric(self) -> str:
        """The validation metric that picks the checkpoint kept."""
        if self.select_metric != "auto":
            return self.select_metric
        return "ndcg@10" if is_beir_dir(self.val) else f"recall@{self.val_k}"

    def encoder_overrides(self) -> dict[str, Any]:
        """The encoder options given explicitly (the rest come from the base or saved model)."""
        return {name: getattr(self, name) for name in ENCODER_FIELDS if getattr(self, name) is not None}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        check_config_keys(cls, data, "train")
        data = dict(data)
        for key in ("kb", "eval_ks"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read ``train_config.json`` (the file, or the checkpoint directory holding it)."""
        path = Path(path)
        return cls.from_dict(read_json(path / TRAIN_CONFIG_FILE if path.is_dir() else path))
