"""`dpr mine`: add hard negatives to a training file (for `dpr train --hard-negatives file`)."""
from __future__ import annotations

import argparse

from common.choices import MINING_METHODS

EPILOG = """\
The output holds the input records with a `hard_negatives` list (DPR records: `hard_negative_ctxs`),
best ranked first; a BEIR folder is written as nq_oracle records. Gold passages (same id or text) are
never chosen. Example:
  dpr mine --model minilm --data data/nq_oracle/nq-oracle-train.json \\
      --kb data/nq_oracle/nq-oracle-train.json --out runs/train-mined.json --num 3
"""


def add_arguments(parser: argparse.ArgumentParser, argv: object = ()) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--model", default="minilm",
                        help="dual-encoder dir or base checkpoint (for --method model; default: %(default)s)")
    parser.add_argument("--data", required=True, help="questions: nq_oracle JSON/JSONL, DPR JSON or a BEIR folder")
    parser.add_argument("--split", default="train", help="BEIR qrels split of --data (default: %(default)s)")
    parser.add_argument("--kb", action="append", required=True, metavar="PATH",
                        help="knowledge base to mine from (repeatable): JSONL, BEIR folder or question files")
    parser.add_argument("--out", required=True, help="output file (.json array or .jsonl)")
    parser.add_argument("--method", choices=MINING_METHODS, default=MINING_METHODS[0], help="default: %(default)s")
    parser.add_argument("--num", type=int, default=1, help="hard negatives per question (default: %(default)s)")
    parser.add_argument("--depth", type=int, default=100, help="ranks searched per question (default: %(default)s)")
    parser.add_argument("--skip-answer-negatives", action=argparse.BooleanOptionalAction, default=False,
                        help="skip passages that contain an answer string (likely false negatives)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from common.data import load_corpus
    from retriever.encoder import load_encoder
    from retriever.mining import mine_hard_negatives, read_mining_input, with_hard_negatives, write_records

    records, examples = read_mining_input(args.data, args.split)
    kb = load_corpus(args.kb)
    encoder = load_encoder(args.model) if args.method == "model" else None
    mined = mine_hard_negatives(examples, kb, args.num, method=args.method, encoder=encoder,
                                skip_answer_passages=args.skip_answer_negatives, depth=args.depth,
                                batch_size=args.batch_size, progress=not args.no_progress)
    write_records(args.out, [with_hard_negatives(r, m) for r, m in zip(records, mined)])
    print(f"wrote {len(records)} records with {sum(map(len, mined))} hard negatives to {args.out}")
    return 0
