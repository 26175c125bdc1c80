"""The training loop: in-batch (+ hard) negatives, AdamW, linear warmup/decay, best-checkpoint keeping.

Deliberately one short readable loop (no HF Trainer). Per epoch: (re)mine hard negatives if asked,
build duplicate-free batches, take one optimiser step per batch, then measure validation Recall@k.
The starting model is measured too (epoch 0) and saved first, and a later epoch replaces the
checkpoint only if it beats the best validation score so far (Recall@val_k on question files, nDCG@10
on BEIR folders, or --select-metric; MRR@10 breaks ties): training never ships a model that
validates worse than the one it started from.

Scaling out: the step itself (plain, gradient-cached, multi-process) is in :mod:`retriever.train_step`;
under ``torchrun`` each rank takes a slice of every global batch (:mod:`retriever.distributed`).
Every ``checkpoint_every`` steps and at each epoch end, ``<out>/resume`` receives the full training
state (:mod:`retriever.checkpoint`) so ``dpr train --resume OUT`` continues where a crash stopped;
a finished run deletes it.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from common.files import write_json
from retriever.batching import make_batches
from retriever.checkpoint import (
    device_rng_state,
    load_resume,
    load_resume_weights,
    resume_dir,
    save_resume,
    set_device_rng_state,
    set_rng_state,
)
from retriever.distributed import DistContext, all_gather_object, barrier, broadcast_object, setup, teardown
from retriever.encoder import model_ref
from retriever.mining import PassageVectors
from retriever.precision import resolve_precision
from retriever.teacher import build_teacher
from retriever.train_config import (
    RESUME_FREE_FIELDS,
    TRAIN_CONFIG_FILE,
    TRAIN_LOG_FILE,
    TrainConfig,
    config_differences,
)
from retriever.train_setup import (
    RoundNegatives,
    build_model,
    build_optimizer,
    check_file_negatives,
    hard_negatives_for,
    linear_schedule,
    load_data,
    loss_config_for,
    mine_round,
    needs_mining,
    passages_by_id,
    seed_everything,
)
from retriever.train_step import train_step, wrap_towers
from retriever.validation import EvalEncoder, evaluate, format_metrics, resolve_eval_runtime

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainResult", "resume", "resume_config", "train"]

TIE_BREAK = "mrr@10"


@dataclass(frozen=True)
class TrainResult:
    out: Path
    best_epoch: int
    best_metrics: dict[str, float]
    log: dict[str, Any]


# ----------------------------------------------------------------------------- the loop


class Trainer:
    """One training run's state; :func:`train` is the way in.

    Everything that decides the next step (weights, optimizer, scheduler, counters, negatives, RNG)
    lives here and goes into the resume checkpoint, so a resumed run takes the same steps.
    """

    reuse_vectors = True   # mining reuses validation's passage vectors (tests switch it off to compare)

    def __init__(self, config: TrainConfig, ctx: DistContext, progress: bool = True,
                 on_step: Callable[[int], None] | None = None) -> None:
        self.config, self.ctx, self.on_step = config, ctx, on_step
        self.progress = progress and ctx.is_main
        self.out = Path(config.out)
        seed_everything(config.seed + ctx.rank)   # ranks differ only in dropout masks
        self.data = load_data(config)
        self.model = build_model(config).to(ctx.device)
        self.precision = resolve_precision(config.precision, ctx.device)
        self.model.set_precision(self.precision)
        if config.precision == "auto":
            logger.info("--precision auto: %s on %s", self.precision, ctx.device)
        if config.hard_negatives == "file":
            check_file_negatives(config, self.data)
        self.loss_config = loss_config_for(config, self.model)
        # Built before any step (and before a resume loads later weights): the hybrid teacher is the
        # starting model, frozen. Only rank 0 scores; the others receive the scores.
        self.teacher = (build_teacher(config.teacher, self.model, self.data.mining_kb, config.eval_batch_size)
                        if config.distill_weight and ctx.is_main else None)
        self.towers = wrap_towers(self.model, ctx)
        self.optimizer = build_optimizer(self.model, config.lr, config.weight_decay)
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.schedule: dict[str, int] = {}
        self.epoch, self.batch_index, self.global_step = 1, 0, 0
        self.negatives: RoundNegatives | None = None
        # The last validation's val_kb vectors until a step; memory only (a resumed run encodes again).
        self.kb_vectors: PassageVectors | None = None
        # What validation and mining encode with: the model itself, or a frozen ONNX Runtime copy of it.
        self.eval_runtime = resolve_eval_runtime(config.eval_runtime, ctx.device.type, len(self.data.val_kb),
                                                 self.precision)
        if config.eval_runtime == "auto":
            logger.info("--eval-runtime auto: validating and mining on %s (%d validation passages, %s)",
                        self.eval_runtime, len(self.data.val_kb), ctx.device.type)
        self.eval_encoder = EvalEncoder(self.eval_runtime)
        self.best_key: tuple[float, float] | None = None
        self.row: dict[str, Any] = {}
        self.seconds_before = 0.0
        self.started = time.perf_counter()
        self.log: dict[str, Any] = {
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": model_ref(config.model), "encoder": self.model.config.to_dict(), "device": str(ctx.device),
            "precision": self.precision,
            "world_size": ctx.world_size,
            "data": self.data.summary(),
            "best_metric": config.val_metric, "tie_break": TIE_BREAK, "epochs": [], "steps": [], "finished": False,
        }

    # ------------------------------------------------------------------ run

    def run(self) -> TrainResult:
        if self.best_key is None:
            self._start()
        for epoch in range(self.epoch, self.config.epochs + 1):
            self.epoch = epoch
            self._train_epoch()
            self._validate()
            if epoch < self.config.epochs:
                self.epoch, self.batch_index = epoch + 1, 0
                self.checkpoint()
        self.log.update(finished=True, total_seconds=round(self._seconds(), 1))
        if self.ctx.is_main:
            write_json(self.out / TRAIN_LOG_FILE, self.log)
            # A finished run needs no resume state; its weights and AdamW moments are ~3x the model.
            shutil.rmtree(resume_dir(self.out), ignore_errors=True)
        barrier(self.ctx)
        best = self.log["epochs"][self.log["best_epoch"]]["metrics"]
        return TrainResult(self.out, self.log["best_epoch"], best, self.log)

    def _start(self) -> None:
        """Measure and save the starting model (epoch 0): the bar every later epoch must beat."""
        if self.ctx.is_main:
            if resume_dir(self.out).exists():
                logger.warning("%s holds a resume checkpoint of an earlier run; starting over "
                               "(`dpr train --resume %s` would have continued it)", self.out, self.out)
                shutil.rmtree(resume_dir(self.out))
            t0 = time.perf_counter()
            row = {"epoch": 0, **self._evaluate()}
            metrics = row["metrics"]
            self.log["epochs"].append({**row, "eval_seconds": round(time.perf_counter() - t0, 1)})
            self.log.update(best_epoch=0, best_value=metrics[self.config.val_metric])
            logger.info("epoch 0 (start): %s", format_metrics(metrics))
            self._save_best()
        self.log = broadcast_object(self.ctx, self.log)
        self.best_key = tuple(broadcast_object(self.ctx, _rank_key(self.log["epochs"][0]["metrics"], self.config)))

    def _train_epoch(self) -> None:
        config, epoch = self.config, self.epoch
        if self.batch_index == 0:
            t0 = time.perf_counter()
            self.row = {"epoch": epoch}
            if needs_mining(config, epoch):
                known = self.kb_vectors if self.reuse_vectors else None
                known = known if known is not None and known.step == self.global_step else None
                self.negatives = mine_round(config, self.model, self.data, self.ctx, self.teacher, epoch,
                                            self.progress, known,
                                            lambda: self.eval_encoder.get(self.model, self.global_step)[0])
                self.row.update(mined_at=epoch, mine_reused_vectors=self.negatives.reused_vectors)
            self.row["mine_seconds"] = round(time.perf_counter() - t0, 1)
            mined_at = max([r.get("mined_at", 0) for r in self.log["epochs"]] + [self.row.get("mined_at", 0)])
            self.row["negatives"] = ({"source": config.hard_negatives, "per_question": config.num_hard_negatives,
                                      "mined_before_epoch": mined_at or None, "digest": self.negatives.digest()}
                                     if self.negatives is not None else {"source": "none"})
            self.row["train_seconds"] = 0.0
        negatives = self.negatives or RoundNegatives([])
        batches = make_batches(self.data.train, config.batch_size, np.random.default_rng([config.seed, epoch]),
                               num_hard_negatives=config.num_hard_negatives if config.uses_hard_negatives else 0,
                               negatives=negatives.passages or None, filler=self.data.mining_kb,
                               teacher_scores=negatives.teacher_scores)
        if self.scheduler is None:
            # Sized from real batches: deferring a conflicting example can add one per epoch.
            total = len(batches) * config.epochs
            self.schedule = {"warmup_steps": int(config.warmup_ratio * total), "total_steps": total}
            self.scheduler = linear_schedule(self.optimizer, **self.schedule)
        self.model.train()
        mark = time.perf_counter()
        bar = tqdm(total=len(batches), initial=self.batch_index, desc=f"epoch {epoch}/{config.epochs}",
                   unit="batch", disable=not self.progress)
        try:
            for i in range(self.batch_index, len(batches)):
                batch = batches[i]
                self.batch_index = i + 1
                bar.update(1)
                # A lone leftover question has no negative; every rank needs at least one question.
                if len(batch.passages) < 2 or len(batch) < self.ctx.world_size:
                    continue
                lr = self.scheduler.get_last_lr()[0]
                loss, accuracy, terms = train_step(self.model, batch, self.optimizer, self.scheduler,
                                                   config.max_grad_norm, self.ctx.device, towers=self.towers,
                                                   ctx=self.ctx, grad_cache_chunk=config.grad_cache_chunk,
                                                   loss_config=self.loss_config)
                self.global_step += 1
                self.kb_vectors = None
                self.eval_encoder.drop()
                self.log["steps"].append({"epoch": epoch, "loss": round(loss, 5), "accuracy": round(accuracy, 4),
                                          "lr": lr, "step": self.global_step,
                                          **({k: round(v, 5) for k, v in terms.items()}
                                             if self.loss_config.distills else {})})
                recent = self.log["steps"][-10:]
                bar.set_postfix(loss=f"{np.mean([s['loss'] for s in recent]):.4f}",
                                acc=f"{np.mean([s['accuracy'] for s in recent]):.3f}")
                if self.global_step % config.checkpoint_every == 0 and self.batch_index < len(batches):
                    self.row["train_seconds"] += time.perf_counter() - mark
                    mark = time.perf_counter()
                    self.checkpoint()
                if self.on_step is not None:
                    self.on_step(self.global_step)
        finally:
            bar.close()
            self.model.eval()
        self.row["train_seconds"] = round(self.row["train_seconds"] + time.perf_counter() - mark, 1)

    def _validate(self) -> None:
        steps = [s for s in self.log["steps"] if s["epoch"] == self.epoch]
        row = self.row
        row.update(loss=float(np.mean([s["loss"] for s in steps])) if steps else float("nan"), steps=len(steps),
                   accuracy=float(np.mean([s["accuracy"] for s in steps])) if steps else float("nan"))
        if self.loss_config.distills:
            row["distill_loss"] = float(np.mean([s["distill"] for s in steps])) if steps else float("nan")
        if self.ctx.is_main:
            t0 = time.perf_counter()
            row.update(self._evaluate())
            metrics = row["metrics"]
            row["eval_seconds"] = round(time.perf_counter() - t0, 1)
            key = _rank_key(metrics, self.config)
            row["best"] = key > self.best_key
            self.log["epochs"].append(row)
            logger.info("epoch %d: loss %.4f, in-batch accuracy %.3f, %s%s", self.epoch, row["loss"], row["accuracy"],
                        format_metrics(metrics), " (best so far)" if row["best"] else "")
            if row["best"]:
                self.log.update(best_epoch=self.epoch, best_value=metrics[self.config.val_metric])
                self.best_key = key
                self._save_best()
            else:
                write_json(self.out / TRAIN_LOG_FILE, self.log)
        self.log = broadcast_object(self.ctx, self.log)
        self.best_key = tuple(broadcast_object(self.ctx, self.best_key))
        self.row = {}

    def _evaluate(self) -> dict[str, Any]:
        """An epoch row's ``metrics``, ``eval_runtime`` and (when the weights were exported) ``export_seconds``."""
        def keep(vectors: np.ndarray) -> None:
            self.kb_vectors = PassageVectors(self.data.val_kb, vectors, self.global_step)

        encoder, exported = self.eval_encoder.get(self.model, self.global_step)
        return {"eval_runtime": self.eval_runtime, **({} if exported is None else {"export_seconds": exported}),
                "metrics": evaluate(encoder, self.data.val, self.data.val_kb, self.config.eval_ks,
                                    self.config.eval_batch_size, self.progress, on_vectors=keep)}

    def _save_best(self) -> None:
        # The model directory is replaced as a whole, so the JSON files beside the weights go in again.
        self.model.save(self.out, extra={"training": {"base": model_ref(self.config.model),
                                                      "epoch": self.log["best_epoch"],
                                                      self.config.val_metric: self.log["best_value"]}})
        write_json(self.out / TRAIN_CONFIG_FILE, self.config.to_dict())
        write_json(self.out / TRAIN_LOG_FILE, self.log)

    def _seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    # ------------------------------------------------------------------ resume

    def checkpoint(self) -> None:
        """Write ``<out>/resume`` (rank 0; every rank contributes its torch RNG states, CPU and GPU)."""
        states = all_gather_object(self.ctx, (torch.get_rng_state(), device_rng_state(self.ctx.device)))
        torch_rng = [cpu for cpu, _ in states]
        cuda_rng = [gpu for _, gpu in states] if all(gpu is not None for _, gpu in states) else None
        if self.ctx.is_main:
            trainer = {"epoch": self.epoch, "batch_index": self.batch_index, "global_step": self.global_step,
                       "schedule": self.schedule, "row": self.row, "log": self.log,
                       "best_key": list(self.best_key or ()), "seconds": round(self._seconds(), 1),
                       **(self.negatives or RoundNegatives([])).state(self.config.hard_negatives != "file")}
            save_resume(self.out, self.model, self.optimizer, self.scheduler, trainer, torch_rng,
                        self.config.to_dict(), cuda_rng=cuda_rng)
        barrier(self.ctx)

    def restore(self) -> None:
        """Continue from ``<out>/resume``: refuses if there is none or the config differs."""
        state = load_resume(self.out)
        differences = config_differences(state.config, self.config)
        if differences:
            raise ValueError(f"{state.path}: the saved run had a different config; refusing to resume: "
                             + "; ".join(differences))
        t = state.trainer
        load_resume_weights(self.model, state)
        self.schedule = {k: int(v) for k, v in t["schedule"].items()}
        if self.schedule:
            # Before the optimizer state: building a LambdaLR resets each group's lr to its step-0 value.
            self.scheduler = linear_schedule(self.optimizer, **self.schedule)
            self.scheduler.load_state_dict(state.scheduler)
        self.optimizer.load_state_dict(state.optimizer)
        self.epoch, self.batch_index, self.global_step = int(t["epoch"]), int(t["batch_index"]), int(t["global_step"])
        self.row, self.log, self.seconds_before = t["row"], t["log"], float(t["seconds"])
        self.best_key = tuple(t["best_key"]) if t["best_key"] else None
        # Teacher scores come back as they were computed (the starting model's), also for a file.
        scores = t.get("teacher_scores")
        if t["negatives"] is not None:
            self.negatives = RoundNegatives(passages_by_id(t["negatives"], self.data.mining_kb, str(state.path)),
                                            scores)
        elif self.config.hard_negatives == "file" and self.config.uses_hard_negatives:
            self.negatives = RoundNegatives(hard_negatives_for(self.config, self.model, self.data, False), scores)
        self.log.setdefault("resumed", []).append({"global_step": self.global_step, "world_size": self.ctx.world_size,
                                                   "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        if len(state.torch_rng) != self.ctx.world_size:
            logger.warning("resuming %d rank(s) from a %d-rank checkpoint: dropout masks will differ",
                           self.ctx.world_size, len(state.torch_rng))
        set_rng_state(state.torch_rng[self.ctx.rank % len(state.torch_rng)], state.rng)
        if self.ctx.device.type == "cuda":
            if state.cuda_rng:
                set_device_rng_state(self.ctx.device, state.cuda_rng[self.ctx.rank % len(state.cuda_rng)])
            else:
                logger.warning("the checkpoint holds no CUDA RNG state (written on the CPU): dropout masks on "
                               "the GPU will differ from an uninterrupted run")
        logger.info("resuming %s at epoch %d, batch %d (global step %d)", self.out, self.epoch, self.batch_index,
                    self.global_step)


def train(config: TrainConfig, progress: bool = True, *, resume: bool = False,
          on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Run training as configured; the best checkpoint, its config and the log end up in ``config.out``.

    ``resume=True`` continues from ``<out>/resume`` (the config must match the saved one, apart from
    :data:`RESUME_FREE_FIELDS`). ``on_step(global_step)`` runs after every optimiser step (tests use it
    to simulate a crash). Under ``torchrun`` (WORLD_SIZE > 1) every process calls this; rank 0 alone
    validates, saves and shows progress.
    """
    ctx = setup(config.device, timeout=timedelta(minutes=config.dist_timeout_minutes))
    clean = False
    try:
        trainer = Trainer(config, ctx, progress, on_step)
        if resume:
            trainer.restore()
        result = trainer.run()
        clean = True
        return result
    finally:
        teardown(ctx, clean)


def resume_config(out: str | Path, given: dict[str, Any] | None = None) -> TrainConfig:
    """The config to continue the interrupted run in ``out`` with: the saved one.

    ``given``: options the caller set (``dpr train --resume OUT --lr ...``). Those of
    :data:`RESUME_FREE_FIELDS` (where and how fast training runs) override the saved values; any
    other must equal the saved value, or the resume is refused with every difference named.
    """
    saved_file = resume_dir(out) / TRAIN_CONFIG_FILE
    if not saved_file.exists():
        load_resume(out)   # raises the "nothing to resume" error
    saved = TrainConfig.load(saved_file)
    given = dict(given or {})
    given.pop("out", None)
    differences = [f"{k}: saved {getattr(saved, k)!r}, now {v!r}" for k, v in given.items()
                   if k not in RESUME_FREE_FIELDS and v != getattr(saved, k)]
    if differences:
        raise ValueError(f"--resume {out}: options differ from the interrupted run (" + "; ".join(differences)
                         + "); pass only --resume to continue it as it was")
    return dataclasses.replace(saved, **{k: v for k, v in given.items() if k in RESUME_FREE_FIELDS})


def resume(out: str | Path, progress: bool = True) -> TrainResult:
    """Continue the interrupted run in ``out`` with its saved config (``dpr train --resume OUT``)."""
    return train(resume_config(out), progress, resume=True)


def _rank_key(metrics: dict[str, float], config: TrainConfig) -> tuple[float, float]:
    # Recall@5 saturates quickly (MiniLM starts at 99.2 on nq_oracle), so ties are common: MRR@10 breaks them.
    # On SciFact Recall@5 fell while nDCG@10 rose after one epoch: graded, multi-relevant data selects on nDCG.
    return metrics[config.val_metric], metrics[TIE_BREAK]


if __name__ == "__main__":
    # `torchrun --nproc_per_node N -m retriever.train ...` takes the same options as `dpr train`.
    import sys

    from retriever.train_cli import main

    sys.exit(main())
