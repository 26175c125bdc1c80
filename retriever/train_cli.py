"""The training command line: `dpr train` and `torchrun -m retriever.train` (same flags, generated from
:class:`TrainConfig`). Imports torch only when a run starts, so `dpr train --help` stays light."""
from __future__ import annotations

import argparse
import logging
import os

from common.flags import add_dataclass_arguments, dataclass_from_args, given_fields
from retriever.train_config import RESUME_FREE_FIELDS, TRAIN_LOG_FILE, TrainConfig

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
  # no labelled questions: adapt to a knowledge base on pseudo queries made from its passages (their
  # titles, or ICT sentences if most have none), 1 epoch with in-batch negatives unless told otherwise;
  # the checkpoint is picked on held-out pseudo queries, or on --val questions if given
  dpr train --unsupervised --kb corpus.jsonl --out runs/adapted [--val val.json] [--pseudo-method ict]
  # then fine-tune the adapted model on labelled questions
  dpr train --train train.json --val val.json --model runs/adapted --out runs/adapted+sup
  # continue a run that was killed (its <out>/resume is written every --checkpoint-every steps)
  dpr train --resume runs/minilm
  # N processes (GPUs, or CPU with gloo): each takes 1/N of every global batch, same results as 1
  torchrun --nproc_per_node 4 -m retriever.train --train train.json --val val.json --out runs/ddp
"""


def add_arguments(parser: argparse.ArgumentParser, argv: object = ()) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_dataclass_arguments(parser, TrainConfig)
    parser.add_argument("--resume", metavar="OUT",
                        help="continue the interrupted run in OUT with its saved config (other options may be "
                             f"omitted; if given they must match, except {', '.join(_flags(RESUME_FREE_FIELDS))})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _flags(names: tuple[str, ...]) -> list[str]:
    return ["--" + n.replace("_", "-") for n in names]


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return dataclass_from_args(TrainConfig, args)


def run(args: argparse.Namespace) -> int:
    from retriever.train import resume_config, train  # torch loads only when the command runs

    if os.environ.get("RANK", "0") != "0":
        logging.getLogger().setLevel(logging.WARNING)   # under torchrun only rank 0 reports
    if args.resume:
        if args.out not in (None, args.resume):
            raise ValueError(f"--resume {args.resume} continues into its own directory; drop --out {args.out}")
        config = resume_config(args.resume, given_fields(args, TrainConfig))
    elif args.out is None or (not args.unsupervised and (args.train is None or args.val is None)):
        raise ValueError("--train, --val and --out are required (or --unsupervised --kb KB --out OUT to train on "
                         "pseudo queries from a knowledge base, or --resume OUT to continue a run)")
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


def main(argv: list[str] | None = None) -> int:
    """`python -m retriever.train` / `torchrun ... -m retriever.train`: `dpr train` without the `dpr`."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m retriever.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
