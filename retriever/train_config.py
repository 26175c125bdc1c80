"""The trainer's configuration: a frozen dataclass saved as ``train_config.json`` beside the checkpoint."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.choices import HARD_NEGATIVE_SOURCES, POOLINGS, SIMILARITIES, HardNegatives
from common.data import is_beir_dir
from common.files import check_config_keys, read_json

TRAIN_CONFIG_FILE = "train_config.json"
TRAIN_LOG_FILE = "train_log.json"
# The encoder fields a fresh model takes from the command line; None means EncoderConfig's default.
ENCODER_FIELDS = ("pooling", "similarity", "temperature", "tie_encoders", "query_max_length", "passage_max_length")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (paths included), so a run can be repeated from its JSON.

    Defaults were chosen on nq_oracle (500 train questions) from the packaged MiniLM: see the
    README/report. ``epochs=2`` with model-mined negatives stays well inside 15 minutes on 2 CPU cores.
    """

    train: str
    val: str
    out: str
    model: str = "minilm"
    kb: tuple[str, ...] = ()
    train_split: str = "train"
    val_split: str | None = None           # BEIR only; None picks val, dev or test, whichever exists
    epochs: int = 2
    batch_size: int = 32
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    hard_negatives: HardNegatives = "model"
    num_hard_negatives: int = 1
    remine_every: int = 0                  # epochs between re-mining; 0 = mine once before training
    skip_answer_negatives: bool = True
    mine_depth: int = 100                  # how deep to look for negatives past the filtered passages
    val_k: int = 5
    # Checkpoint selection: "auto" = nDCG@10 on a BEIR folder (graded, several relevant passages per
    # query), else Recall@val_k (DPR top-k accuracy, one gold passage); or name one: recall@K, mrr@10, ndcg@10.
    select_metric: str = "auto"
    eval_ks: tuple[int, ...] = (1, 5, 10, 20, 100)
    eval_batch_size: int = 64
    seed: int = 42
    device: str = "auto"
    # Texts per forward pass with gradient caching (0 = off): bounds activation memory, same gradient.
    grad_cache_chunk: int = 0
    # Optimiser steps between resume checkpoints in <out>/resume (also written at each epoch end).
    checkpoint_every: int = 50
    # How long a rank waits for the others in a collective (torch.distributed's default is 30 min for
    # gloo, 10 for NCCL); rank 0 alone validates and mines a whole corpus meanwhile, which can take hours.
    dist_timeout_minutes: float = 360.0
    # Encoder options for a fresh model (None = EncoderConfig defaults); a saved model keeps its own.
    pooling: str | None = None
    similarity: str | None = None
    temperature: float | None = None
    tie_encoders: bool | None = None
    query_max_length: int | None = None
    passage_max_length: int | None = None

    def __post_init__(self) -> None:
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
