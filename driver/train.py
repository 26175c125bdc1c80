"""`dpr train`: fine-tune a dual encoder with in-batch and hard negatives."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from retriever.train_config import HARD_NEGATIVE_SOURCES, TRAIN_CONFIG_FILE, TRAIN_LOG_FILE, TrainConfig

DEFAULTS = TrainConfig(train="", val="", out="")

EPILOG = """\
examples:
  # offline: start from the packaged all-MiniLM-L6-v2 (mean pooling, cosine, temperature 0.05)
  dpr train --train data/nq_oracle/nq-oracle-train.json --val data/nq_oracle/nq-oracle-val.json \\
      --out runs/minilm --hard-negatives model
  # the classic DPR setup from the hub (needs network): DistilBERT, CLS pooling, dot product
  dpr train --train train.json --val val.json --model distilbert-base-uncased --pooling cls \\
      --similarity dot --out runs/distilbert
  # a BEIR folder: --train-split picks qrels/<split>.tsv (validation: val, dev or test, whichever exists)
  dpr train --train beir/ --val beir/ --train-split train --val-split val --out runs/beir
  # a batch of 128 with the activation memory of 16 texts: gradient caching (same gradient, one extra forward pass)
  dpr train --train train.json --val val.json --out runs/big --batch-size 128 --grad-cache-chunk 16
  # continue a run that was killed (its <out>/resume is written every --checkpoint-every steps)
  dpr train --resume runs/minilm
  # N processes (GPUs, or CPU with gloo): each takes 1/N of every global batch, same results as 1
  torchrun --nproc_per_node 4 -m retriever.train --train train.json --val val.json --out runs/ddp
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    d = DEFAULTS
    data = parser.add_argument_group("data")
    data.add_argument("--train",
                      help="training questions: nq_oracle JSON/JSONL, DPR JSON or a BEIR folder")
    data.add_argument("--val", help="validation questions (same layouts)")
    data.add_argument("--kb", action="append", default=[], metavar="PATH",
                      help="validation knowledge base (repeatable; JSONL, BEIR folder or question files); "
                           "default: the gold passages of --train and --val")
    data.add_argument("--train-split", default=d.train_split,
                      help="BEIR qrels split for --train (default: %(default)s)")
    data.add_argument("--val-split", default=None, help="BEIR qrels split for --val (default: val, dev or test)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=d.model,
                       help="base checkpoint (hub name, local dir, or 'minilm', the packaged offline default) "
                            "or a saved dual-encoder dir to continue from (default: %(default)s)")
    model.add_argument("--out",
                       help="where the best checkpoint, train_config.json and train_log.json go "
                            "(--train, --val and --out are required unless --resume)")
    model.add_argument("--pooling", choices=("cls", "mean"), help="new models only (default: mean)")
    model.add_argument("--similarity", choices=("dot", "cos"), help="new models only (default: cos)")
    model.add_argument("--temperature", type=float, help="softmax temperature (default: 0.05 for cos, 1 for dot)")
    model.add_argument("--tie-encoders", action=argparse.BooleanOptionalAction, default=None,
                       help="one shared encoder for queries and passages (default: tied)")
    model.add_argument("--query-max-length", type=int, help="default: 64 tokens")
    model.add_argument("--passage-max-length", type=int, help="default: 256 tokens")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=d.epochs, help="default: %(default)s")
    opt.add_argument("--batch-size", type=int, default=d.batch_size, help="questions per batch (default: %(default)s)")
    opt.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default: %(default)s)")
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default: %(default)s")
    opt.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio, help="default: %(default)s")
    opt.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="default: %(default)s")
    opt.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    opt.add_argument("--device", default=d.device,
                     help="auto (cuda:LOCAL_RANK under torchrun if CUDA is there, else cpu), cpu, cuda, cuda:1 ... "
                          "(default: %(default)s)")
    opt.add_argument("--grad-cache-chunk", type=int, default=d.grad_cache_chunk, metavar="N",
                     help="gradient caching: embed N texts per forward pass, so activation memory is that of "
                          "N, not of the whole batch; same gradient, one extra forward pass (0 = off, default)")
    ckpt = parser.add_argument_group("checkpoints and resuming")
    ckpt.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="STEPS",
                     help="write the resume state to OUT/resume every STEPS optimiser steps and at each epoch "
                          "end; a finished run deletes it (default: %(default)s)")
    ckpt.add_argument("--dist-timeout-minutes", type=float, default=d.dist_timeout_minutes, metavar="MIN",
                      help="under torchrun: how long ranks wait for each other in a collective, e.g. while "
                           "rank 0 validates and mines alone (default: %(default)s)")
    ckpt.add_argument("--resume", metavar="OUT",
                     help="continue the interrupted run in OUT with its saved config (other options may be "
                          "omitted; if given they must match, except --device, --checkpoint-every, "
                          "--grad-cache-chunk, --eval-batch-size, --dist-timeout-minutes)")
    neg = parser.add_argument_group("hard negatives")
    neg.add_argument("--hard-negatives", choices=HARD_NEGATIVE_SOURCES, default=d.hard_negatives,
                     help="none (in-batch only), model (mined by the current model), bm25, or file "
                          "(hard_negative(s) / hard_negative_ctxs in --train) (default: %(default)s)")
    neg.add_argument("--num-hard-negatives", type=int, default=d.num_hard_negatives,
                     help="per question (default: %(default)s)")
    neg.add_argument("--remine-every", type=int, default=d.remine_every,
                     help="re-mine every N epochs with the current model; 0 = mine once (default: %(default)s)")
    neg.add_argument("--skip-answer-negatives", action=argparse.BooleanOptionalAction, default=d.skip_answer_negatives,
                     help="never use a passage containing an answer string as a negative (default: on)")
    ev = parser.add_argument_group("validation")
    ev.add_argument("--val-k", type=int, default=d.val_k,
                    help="keep the checkpoint with the best Recall@k, ties broken by MRR@10 (default: %(default)s)")
    ev.add_argument("--select-metric", default=d.select_metric, metavar="METRIC",
                    help="validation metric that picks the checkpoint kept: auto (nDCG@10 for a BEIR --val, "
                         "else Recall@val-k), recall@K, mrr@10 or ndcg@10 (default: %(default)s)")
    ev.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="default: %(default)s")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        train=args.train, val=args.val, out=args.out, model=args.model, kb=tuple(args.kb),
        train_split=args.train_split, val_split=args.val_split, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm, hard_negatives=args.hard_negatives,
        num_hard_negatives=args.num_hard_negatives, remine_every=args.remine_every,
        skip_answer_negatives=args.skip_answer_negatives, val_k=args.val_k,
        select_metric=args.select_metric, eval_batch_size=args.eval_batch_size,
        seed=args.seed, device=args.device, pooling=args.pooling, similarity=args.similarity,
        temperature=args.temperature, tie_encoders=args.tie_encoders, query_max_length=args.query_max_length,
        passage_max_length=args.passage_max_length, grad_cache_chunk=args.grad_cache_chunk,
        checkpoint_every=args.checkpoint_every, dist_timeout_minutes=args.dist_timeout_minutes,
    )


def resume_config(args: argparse.Namespace) -> TrainConfig:
    """The config to continue ``--resume OUT`` with: the saved one, or the given one if it matches.

    Options that only change where or how fast training runs are taken from the command line.
    """
    from retriever.checkpoint import load_resume, resume_dir
    from retriever.train import RESUME_FREE_FIELDS, config_differences

    if args.out not in (None, args.resume):
        raise ValueError(f"--resume {args.resume} continues into its own directory; drop --out {args.out}")
    saved_file = resume_dir(args.resume) / TRAIN_CONFIG_FILE
    if not saved_file.exists():
        load_resume(args.resume)   # raises the "nothing to resume" error
    saved = TrainConfig.load(saved_file)
    if args.train is not None or args.val is not None:
        args.out = args.resume
        differences = config_differences(saved.to_dict(), config_from_args(args))
        if differences:
            raise ValueError(f"--resume {args.resume}: options differ from the interrupted run ("
                             + "; ".join(differences) + "); pass only --resume to continue it as it was")
    free = {k: getattr(args, k) for k in RESUME_FREE_FIELDS if getattr(args, k) != getattr(DEFAULTS, k)}
    return dataclasses.replace(saved, **free)


def run(args: argparse.Namespace) -> int:
    from retriever.train import train  # torch loads only when the command runs

    if os.environ.get("RANK", "0") != "0":
        logging.getLogger().setLevel(logging.WARNING)   # under torchrun only rank 0 reports
    if args.resume:
        config = resume_config(args)
    elif args.train is None or args.val is None or args.out is None:
        raise ValueError("--train, --val and --out are required (or --resume OUT to continue a run)")
    else:
        config = config_from_args(args)
    result = train(config, progress=not args.no_progress, resume=bool(args.resume))
    if os.environ.get("RANK", "0") != "0":
        return 0
    keys = [k for k in result.best_metrics if k.startswith("recall@")]
    print(f"{'epoch':>5} {'loss':>7} " + " ".join(f"{k.replace('recall', 'R'):>6}" for k in keys))
    for row in result.log["epochs"]:
        loss = f"{row['loss']:7.4f}" if "loss" in row else f"{'-':>7}"
        mark = "  <- kept" if row["epoch"] == result.best_epoch else ""
        print(f"{row['epoch']:>5} {loss} " + " ".join(f"{100 * row['metrics'][k]:6.1f}" for k in keys) + mark)
    print(f"model: {result.out}  log: {result.out / TRAIN_LOG_FILE}  ({result.log['total_seconds']:.0f} s)")
    return 0
