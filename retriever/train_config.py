"""The trainer's configuration: a frozen dataclass saved as ``train_config.json`` beside the checkpoint."""
from __future__ import annotations

import dataclasses
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from common.choices import (
    HARD_NEGATIVE_SOURCES,
    PASSAGE_FORMATS,
    POOLINGS,
    PRECISIONS,
    SIMILARITIES,
    HardNegatives,
    PassageFormat,
    Pooling,
    Precision,
    Similarity,
)
from common.data import is_beir_dir
from common.files import check_config_keys, read_json
from common.flags import opt

TRAIN_CONFIG_FILE = "train_config.json"
TRAIN_LOG_FILE = "train_log.json"
# Fields a resumed run may change: they decide where and how fast it runs, not which steps it takes.
RESUME_FREE_FIELDS = ("device", "checkpoint_every", "grad_cache_chunk", "eval_batch_size", "dist_timeout_minutes",
                      "precision")
# The encoder fields a fresh model takes from the command line; None means EncoderConfig's default.
ENCODER_FIELDS = ("pooling", "similarity", "temperature", "tie_encoders", "query_max_length", "passage_max_length",
                  "passage_format")
HYBRID_TEACHER = "hybrid"
# The hybrid teacher's scores are min-max normalised to [0, 1] per candidate list (retriever.teacher):
# at 0.1 the best candidate is e^10 times likelier than the worst. Untuned; benchmarks will tell.
HYBRID_TEACHER_TEMPERATURE = 0.1
# How validation (and mining) encode: the training model in torch, or a frozen ONNX Runtime copy of its
# current weights, fp32 or int8 (retriever.validation.EvalEncoder).
EvalRuntime = Literal["auto", "torch", "onnx", "onnx-int8"]
EVAL_RUNTIMES: tuple[str, ...] = get_args(EvalRuntime)
# "auto" picks onnx-int8 on a CPU from this many validation passages on: SciFact's 5,183 passages took
# 3.5 min a validation on int8 against about twice that on torch, while an export takes ~8 s, which
# only a few hundred passages would not repay (retriever.validation.resolve_eval_runtime). Training in
# bf16 validates on torch instead: 512 SciFact passages encoded at 95.6/s in bf16 against 99.3/s on int8
# (47.9/s ONNX fp32, 44.0/s torch fp32) on an AMX CPU, with no export and vectors at cosine 0.99998 to fp32.
AUTO_INT8_MIN_PASSAGES = 2000
# What a run gets for each of these fields left at None: one recipe for labelled questions, one for
# --unsupervised, each the best measured on SciFact (nDCG@10) from the packaged MiniLM
# (docs/training.md). Supervised, on the 81 dev claims, from 64.7: 2 epochs at 2e-5 (the earlier
# default) 67.6; 4 at 2e-5 70.7, 5e-5 75.7, 1e-4 77.9, 2e-4 79.0 (at epoch 3); 6 at 1e-4 79.0 (at
# epoch 4), with 3 re-mined negatives. Unsupervised, one epoch over 5,000 title pseudo queries, on the
# 566 training claims too (it trains on none of them), from 65.2: 5e-5 65.6 (dev 66.2), 1e-4 64.6 (dev
# 68.2: 81 claims rank by noise), 2e-4 61.6. One BM25 negative with hybrid distillation fell to 61.0
# on dev; ICT and crops never rose above the start.
RECIPE_DEFAULTS: dict[bool, dict[str, Any]] = {
    False: {"epochs": 6, "lr": 1e-4, "hard_negatives": "model"},
    True: {"epochs": 1, "lr": 5e-5, "hard_negatives": "none"},
}
# --pseudo-method auto: title pseudo queries when at least this share of the passages has a title.
AUTO_TITLE_SHARE = 0.5


def _recipe_default(name: str) -> str:
    return f"(default: {RECIPE_DEFAULTS[False][name]}, or {RECIPE_DEFAULTS[True][name]} with --unsupervised)"


def missing_onnx_packages() -> list[str]:
    """The packages an ONNX Runtime validation needs and this environment lacks."""
    return [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]


def parse_rank_window(text: str) -> tuple[int, int]:
    """``"START:END"`` as ``(start, end)``: 0-based ranks ``start .. end - 1`` (END exclusive, START < END)."""
    found = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not found or int(found.group(1)) >= int(found.group(2)):
        raise ValueError(f"negative ranks must be START:END with 0 <= START < END, got {text!r}")
    return int(found.group(1)), int(found.group(2))


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (paths included), so a run can be repeated from its JSON.

    ``dpr train``'s flags are generated from these fields (:mod:`common.flags`): each default and help
    text is written here once, except that ``epochs``, ``lr`` and ``hard_negatives`` left at None take
    :data:`RECIPE_DEFAULTS`, one recipe with labelled questions and one with ``--unsupervised``. The
    recipe defaults (6 epochs at a peak learning rate of 1e-4, 3 model-mined hard negatives re-mined
    before each epoch, no dropout on attention probabilities, gradient caching, bf16 where the CPU has
    AMX; unsupervised: title pseudo queries, 1 epoch at 5e-5, in-batch negatives only) validated best on
    SciFact's dev claims from the packaged MiniLM (docs/training.md); nq_oracle is too near its ceiling
    to choose on.
    """

    # "" = not given: --train and --val are required, except that --unsupervised takes no --train and
    # makes --val optional; --out is always required (__post_init__ checks).
    train: str = opt("", "training questions: nq_oracle JSON/JSONL, DPR JSON or a BEIR folder", group="data",
                     metavar="PATH", show_default=False)
    val: str = opt("", "validation questions (same layouts); optional with --unsupervised", group="data",
                   metavar="PATH", show_default=False)
    out: str = opt("", "where the best checkpoint, train_config.json and train_log.json go (--train, --val and "
                   "--out are required unless --resume; --unsupervised needs --kb and --out)", group="data",
                   metavar="DIR", show_default=False)
    kb: tuple[str, ...] = opt((), "validation knowledge base (repeatable; JSONL, BEIR folder or question files); "
                              "default: the gold passages of --train and --val. With --unsupervised also the "
                              "passages pseudo queries are made from and negatives mined from", group="data",
                              action="append", metavar="PATH", show_default=False)
    train_split: str = opt("train", "BEIR qrels split for --train", group="data")
    val_split: str | None = opt(None, "BEIR qrels split for --val; none: val, dev or test, whichever exists",
                                group="data")
    # Unsupervised adaptation (retriever.unsupervised): pseudo queries from retriever.pseudo_queries,
    # whose other options keep PseudoQueryConfig's defaults; the seed is --seed.
    unsupervised: bool = opt(False, "train on pseudo queries made from the --kb passages: no labelled questions "
                             "(no --train)", group="unsupervised")
    pseudo_method: str = opt("auto", "ict (one sentence of a passage is the query, the rest its positive), "
                             "crop (two disjoint spans of a passage), title (the title is the query, the text "
                             f"its positive) or auto: title when {AUTO_TITLE_SHARE:.0%} of the passages or more "
                             "have one, else ict", group="unsupervised", metavar="auto|ict|crop|title")
    # Training time scales with the examples, not the KB (a KB of millions of passages would take days
    # per epoch on one GPU); 5000 is ~160 steps of 32 per epoch. Mining and validation still encode the
    # whole KB.
    pseudo_max_examples: int = opt(5000, "at most N pseudo training examples, from passages sampled by --seed "
                                   "(0: one from every usable passage)", group="unsupervised", metavar="N")
    pseudo_val: int = opt(200, "without --val: hold out N pseudo queries (at most a fifth of them; their passages "
                          "make no training example) and pick the checkpoint on them, ranked against the whole "
                          "--kb", group="unsupervised", metavar="N")
    model: str = opt("minilm", "base checkpoint (hub name, local dir, or 'minilm', the packaged offline default) "
                     "or a saved dual-encoder dir to continue from", group="model")
    # Encoder options for a fresh model (None = EncoderConfig's defaults); a saved model keeps its own.
    pooling: Pooling | None = opt(None, "new models only (none: mean)", group="model")
    similarity: Similarity | None = opt(None, "new models only (none: cos)", group="model")
    temperature: float | None = opt(None, "softmax temperature (none: 0.05 for cos, 1 for dot)", group="model")
    tie_encoders: bool | None = opt(None, "one shared encoder for queries and passages (none: tied)", group="model")
    query_max_length: int | None = opt(None, "new models only (none: 64 tokens)", group="model")
    passage_max_length: int | None = opt(None, "new models only (none: 256 tokens)", group="model")
    passage_format: PassageFormat | None = opt(None, "new models only: pair (title [SEP] text) or joined (the one "
                                               "string 'title. text') (none: pair)", group="model")
    # epochs, lr and hard_negatives: None takes RECIPE_DEFAULTS (supervised or unsupervised).
    epochs: int | None = opt(None, f"passes over the training questions {_recipe_default('epochs')}",
                             group="optimisation", metavar="N", show_default=False)
    batch_size: int = opt(32, "questions per batch (the global batch under torchrun)", group="optimisation")
    lr: float | None = opt(None, "peak learning rate (AdamW, linear warmup and decay) "
                           f"{_recipe_default('lr')}; chosen for MiniLM on a few hundred questions or a few "
                           "thousand passages, a larger model or data set may want less", group="optimisation",
                           metavar="LR", show_default=False)
    weight_decay: float = opt(0.01, "AdamW weight decay (not on biases and norms)", group="optimisation")
    warmup_ratio: float = opt(0.1, "share of the steps spent warming up", group="optimisation")
    max_grad_norm: float = opt(1.0, "gradient clipping norm", group="optimisation")
    seed: int = opt(42, "seed of batching, mining and initialisation", group="optimisation")
    device: str = opt("auto", "auto (cuda:LOCAL_RANK under torchrun if CUDA is there, else cpu), cpu, cuda, "
                      "cuda:1 ...", group="optimisation")
    # Texts per forward pass with gradient caching (0 = off): bounds activation memory, same gradient.
    # On by default since the default batch holds 4 passages per question: on SciFact (256-token
    # passages) a step held 15 GB of RSS without it and 3.9 GB with chunks of 16.
    grad_cache_chunk: int = opt(16, "gradient caching: embed N texts per forward pass, so activation memory is "
                                "that of N, not of the whole batch; same gradient, one extra forward pass "
                                "(0: off)", group="optimisation", metavar="N")
    # None leaves the checkpoint's own rate (0.1 for BERT and DistilBERT). Dropout on the attention
    # probabilities pushes torch's CPU attention off its fused kernel onto the unfused one plus a
    # [texts, heads, tokens, tokens] random mask: a 16 x 256-token MiniLM chunk took 6.2 s forward +
    # backward with it and 3.5 s at 0 (2 cores); a whole SciFact step 11.1 s against 5.6 s in bf16. Every
    # recipe the default was chosen among trained at 0. Hidden-state dropout is kept either way.
    attention_dropout: float | None = opt(0.0, "dropout on the attention probabilities while training (none: the "
                                          "checkpoint's own, 0.1 for BERT and DistilBERT); at 0 torch can use its "
                                          "fused attention kernel", group="optimisation", metavar="P")
    # bf16 on an AMX CPU: a MiniLM step 2.2x and an encoding pass ~2x as fast as fp32 (retriever.precision).
    precision: Precision = opt("auto", "matrix-multiply precision of the forward passes in training, validation "
                               "and mining: fp32, or bf16 autocast (weights and AdamW stay fp32); auto: bf16 on a "
                               "CPU with AMX tiles, else fp32", group="optimisation")
    hard_negatives: HardNegatives | None = opt(None, "none (in-batch only), model (mined by the current model), "
                                               "bm25, or file (hard_negative(s) / hard_negative_ctxs in --train) "
                                               f"{_recipe_default('hard_negatives')}", group="hard negatives",
                                               metavar="none|model|bm25|file", show_default=False)
    # The defaults are the recipe that validated best on SciFact's dev claims (docs/training.md): three
    # model-mined negatives, mined again before every epoch.
    num_hard_negatives: int = opt(3, "hard negatives per question", group="hard negatives")
    remine_every: int = opt(1, "re-mine every N epochs with the current model; 0: mine once",
                            group="hard negatives", metavar="N")
    skip_answer_negatives: bool = opt(True, "never use a passage containing an answer string as a negative",
                                      group="hard negatives")
    mine_depth: int = opt(100, "how deep to look for negatives past the filtered passages", group="hard negatives")
    # Ranks count the mined ranking once gold, repeated and (with --skip-answer-negatives) answer-bearing
    # passages are removed, before --negative-margin drops any (retriever.mining.select_negatives).
    negative_ranks: str | None = opt(None, "mine negatives at random from ranks START..END-1 (0-based, END "
                                     "exclusive) of the ranking after gold, repeated and skipped answer passages "
                                     "are removed; a new seeded sample each mining round (none: the top ranks in "
                                     "order)", group="hard negatives", metavar="START:END")
    negative_margin: float = opt(0.0, "relative margin M: drop a mined candidate scoring above (1 - M) x the "
                                 "score of the question's best positive under the same ranker, likely an "
                                 "unlabelled positive (0: off)", group="hard negatives", metavar="M")
    symmetric: bool = opt(False, "also passage-to-query cross-entropy over the batch's positives, averaged with "
                          "the query-to-passage loss (MultipleNegativesSymmetricRankingLoss)", group="loss")
    distill_weight: float = opt(0.0, "add W x KL(teacher || student) over each question's positive and hard "
                                "negatives to the contrastive loss (0: no distillation)", group="loss", metavar="W")
    teacher: str = opt(HYBRID_TEACHER, "with --distill-weight: hybrid (BM25 over the mining KB fused with the "
                       "frozen starting model) or a saved dual-encoder DIR", group="loss", metavar="hybrid|DIR")
    teacher_temperature: float | None = opt(None, "softmax temperature of the teacher's scores (none: "
                                            f"{HYBRID_TEACHER_TEMPERATURE} for hybrid, whose scores lie in [0, 1]; "
                                            "a DIR teacher's own temperature)", group="loss")
    student_temperature: float | None = opt(None, "softmax temperature of the student's scores in the KL term "
                                            "(none: the model's temperature, as in its contrastive loss)",
                                            group="loss")
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
    # On a 2-core CPU (SciFact, 256-token passages) ONNX Runtime encoded passages ~1.2x (fp32) and ~2x
    # (int8) as fast as torch fp32; int8 passage vectors had mean cosine 0.99 to fp32.
    eval_runtime: EvalRuntime = opt("auto", "how validation and model mining encode: torch (the training model "
                                    "itself), onnx or onnx-int8 (a frozen ONNX Runtime copy of the current weights "
                                    "on the CPU, fp32 or int8, exported at each validation; faster on a CPU, int8 "
                                    "approximate), or auto: torch when training in bf16 (as fast as int8 there, "
                                    "and exact to fp32), else onnx-int8 when training on a CPU with at least "
                                    f"{AUTO_INT8_MIN_PASSAGES} validation passages, else torch; the starting "
                                    "model is measured the same way", group="validation")
    checkpoint_every: int = opt(50, "write the resume state to OUT/resume every STEPS optimiser steps and at each "
                                "epoch end; a finished run deletes it", group="checkpoints and resuming",
                                metavar="STEPS")
    # torch.distributed's default is 30 min for gloo, 10 for NCCL; rank 0 alone validates and mines a
    # whole corpus meanwhile, which can take hours.
    dist_timeout_minutes: float = opt(360.0, "under torchrun: how long ranks wait for each other in a collective, "
                                      "e.g. while rank 0 validates and mines alone",
                                      group="checkpoints and resuming", metavar="MIN")

    def __post_init__(self) -> None:
        from retriever.pseudo_queries import METHODS as PSEUDO_METHODS  # numpy: not for `dpr train --help`

        for name, value in RECIPE_DEFAULTS[bool(self.unsupervised)].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        self._check_data()
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
            (self.attention_dropout is None or 0 <= self.attention_dropout < 1,
             f"attention_dropout must be in [0, 1), got {self.attention_dropout}"),
            (self.grad_cache_chunk >= 0, f"grad_cache_chunk must be >= 0, got {self.grad_cache_chunk}"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (self.dist_timeout_minutes > 0, f"dist_timeout_minutes must be > 0, got {self.dist_timeout_minutes}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
            (self.eval_runtime in EVAL_RUNTIMES,
             f"eval_runtime must be one of {EVAL_RUNTIMES}, got {self.eval_runtime!r}"),
            (self.pooling in (None, *POOLINGS), f"pooling must be one of {POOLINGS}, got {self.pooling!r}"),
            (self.similarity in (None, *SIMILARITIES),
             f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}"),
            (self.passage_format in (None, *PASSAGE_FORMATS),
             f"passage_format must be one of {PASSAGE_FORMATS}, got {self.passage_format!r}"),
            (0 <= self.negative_margin < 1, f"negative_margin must be in [0, 1), got {self.negative_margin}"),
            ((self.negative_ranks is None and not self.negative_margin) or self.hard_negatives in ("model", "bm25"),
             "negative_ranks and negative_margin apply to mined negatives (--hard-negatives model or bm25); "
             "`dpr mine --ranks/--margin` applies them to a file"),
            (self.distill_weight >= 0, f"distill_weight must be >= 0, got {self.distill_weight}"),
            (not self.distill_weight or self.uses_hard_negatives,
             "distillation scores each question's positive and hard negatives: it needs --hard-negatives "
             "model, bm25 or file and --num-hard-negatives >= 1"),
            (not self.distill_weight or self.teacher == HYBRID_TEACHER
             or (Path(self.teacher) / "encoder_config.json").is_file(),
             f"teacher must be {HYBRID_TEACHER!r} or a saved dual-encoder directory, got {self.teacher!r}"),
            (self.teacher_temperature is None or self.teacher_temperature > 0,
             f"teacher_temperature must be > 0, got {self.teacher_temperature}"),
            (self.student_temperature is None or self.student_temperature > 0,
             f"student_temperature must be > 0, got {self.student_temperature}"),
            (self.pseudo_method in ("auto", *PSEUDO_METHODS),
             f"pseudo_method must be auto or one of {PSEUDO_METHODS}, got {self.pseudo_method!r}"),
            (self.pseudo_max_examples >= 0, f"pseudo_max_examples must be >= 0, got {self.pseudo_max_examples}"),
            (self.pseudo_val >= 0, f"pseudo_val must be >= 0, got {self.pseudo_val}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.negative_ranks is not None:
            parse_rank_window(self.negative_ranks)
        if self.eval_runtime not in ("torch", "auto"):   # auto falls back to torch without them
            missing = missing_onnx_packages()
            if missing:
                raise ValueError(f"eval_runtime {self.eval_runtime!r} needs the {' and '.join(missing)} "
                                 "package(s) (pip install -e .), or --eval-runtime torch")

    def _check_data(self) -> None:
        if not self.out:
            raise ValueError("out is required (--out)")
        if not self.unsupervised:
            for name in ("train", "val"):
                if not getattr(self, name):
                    raise ValueError(f"{name} is required (--{name}), unless --unsupervised")
            return
        checks = [
            (not self.train, f"unsupervised training makes its examples from --kb, not from labelled questions: "
                             f"drop --train {self.train} (or drop --unsupervised to train on it)"),
            (bool(self.kb), "unsupervised training makes its pseudo queries from a knowledge base: give --kb PATH"),
            (self.hard_negatives != "file", "--hard-negatives file reads negatives from --train; with --unsupervised "
                                            "use model, bm25 or none"),
            (bool(self.val) or self.pseudo_val >= 1,
             "without --val, checkpoints are picked on held-out pseudo queries: --pseudo-val must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def uses_hard_negatives(self) -> bool:
        return self.hard_negatives != "none" and self.num_hard_negatives > 0

    @property
    def negative_window(self) -> tuple[int, int] | None:
        """``negative_ranks`` as ``(start, end)``, or None for the top ranks."""
        return None if self.negative_ranks is None else parse_rank_window(self.negative_ranks)

    @property
    def val_metric(self) -> str:
        """The validation metric that picks the checkpoint kept."""
        if self.select_metric != "auto":
            return self.select_metric
        return "ndcg@10" if self.val and is_beir_dir(self.val) else f"recall@{self.val_k}"

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


def config_differences(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """Fields (other than :data:`RESUME_FREE_FIELDS`) in which ``config`` differs from a saved config."""
    current = config.to_dict()
    saved = TrainConfig.from_dict(saved).to_dict()
    return [f"{k}: saved {saved[k]!r}, now {current[k]!r}" for k in current
            if k not in RESUME_FREE_FIELDS and saved[k] != current[k]]
