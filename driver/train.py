"""`dpr train`: fine-tune a dual encoder with in-batch and hard negatives."""
from __future__ import annotations

import argparse

from retriever.train_config import HARD_NEGATIVE_SOURCES, TRAIN_LOG_FILE, TrainConfig

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
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    d = DEFAULTS
    data = parser.add_argument_group("data")
    data.add_argument("--train", required=True,
                      help="training questions: nq_oracle JSON/JSONL, DPR JSON or a BEIR folder")
    data.add_argument("--val", required=True, help="validation questions (same layouts)")
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
    model.add_argument("--out", required=True,
                       help="where the best checkpoint, train_config.json and train_log.json go")
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
    opt.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1 ... (default: %(default)s)")
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
    ev.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="default: %(default)s")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        train=args.train, val=args.val, out=args.out, model=args.model, kb=tuple(args.kb),
        train_split=args.train_split, val_split=args.val_split, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm, hard_negatives=args.hard_negatives,
        num_hard_negatives=args.num_hard_negatives, remine_every=args.remine_every,
        skip_answer_negatives=args.skip_answer_negatives, val_k=args.val_k, eval_batch_size=args.eval_batch_size,
        seed=args.seed, device=args.device, pooling=args.pooling, similarity=args.similarity,
        temperature=args.temperature, tie_encoders=args.tie_encoders, query_max_length=args.query_max_length,
        passage_max_length=args.passage_max_length,
    )


def run(args: argparse.Namespace) -> int:
    from retriever.train import train  # torch loads only when the command runs

    result = train(config_from_args(args), progress=not args.no_progress)
    keys = [k for k in result.best_metrics if k.startswith("recall@")]
    print(f"{'epoch':>5} {'loss':>7} " + " ".join(f"{k.replace('recall', 'R'):>6}" for k in keys))
    for row in result.log["epochs"]:
        loss = f"{row['loss']:7.4f}" if "loss" in row else f"{'-':>7}"
        mark = "  <- kept" if row["epoch"] == result.best_epoch else ""
        print(f"{row['epoch']:>5} {loss} " + " ".join(f"{100 * row['metrics'][k]:6.1f}" for k in keys) + mark)
    print(f"model: {result.out}  log: {result.out / TRAIN_LOG_FILE}  ({result.log['total_seconds']:.0f} s)")
    return 0
