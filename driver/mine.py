"""`dpr mine`: add hard negatives to a training file (for `dpr train --hard-negatives file`)."""
from __future__ import annotations

import argparse

from common.choices import MINING_METHODS
from retriever.train_config import HYBRID_TEACHER, parse_rank_window

EPILOG = """\
The output holds the input records with a `hard_negatives` list (DPR records: `hard_negative_ctxs`),
best ranked first (with --ranks: in the order drawn); a BEIR folder is written as nq_oracle records.
Gold passages (same id or text) are never chosen. With --teacher every positive and hard-negative
context also gets a `teacher_score` (and the record a `teacher`), which `dpr train --hard-negatives
file --distill-weight W` uses instead of scoring again. Examples:
  dpr mine --model minilm --data data/nq_oracle/nq-oracle-train.json \\
      --kb data/nq_oracle/nq-oracle-train.json --out runs/train-mined.json --num 3
  # 4 negatives drawn from ranks 10..99, none scored within 5% of the positive, hybrid teacher scores
  dpr mine --model minilm --data train.json --kb kb.jsonl --out mined.jsonl --num 4 --ranks 10:100 \\
      --margin 0.05 --teacher hybrid
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
    parser.add_argument("--ranks", metavar="START:END", default=None,
                        help="draw the negatives at random from ranks START..END-1 (0-based) of the ranking after "
                             "gold, repeated and skipped answer passages are removed (default: the top ranks)")
    parser.add_argument("--margin", type=float, default=0.0, metavar="M",
                        help="drop a candidate scoring above (1 - M) x the best positive's score under the same "
                             "ranker (default: %(default)s, off)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the --ranks sample (default: %(default)s)")
    parser.add_argument("--teacher", metavar=f"{HYBRID_TEACHER}|DIR", default=None,
                        help=f"also write teacher scores: {HYBRID_TEACHER} (BM25 over --kb fused with --model) or "
                             "a saved dual-encoder DIR")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from common.data import load_corpus
    from retriever.encoder import load_encoder
    from retriever.mining import mine_hard_negatives, read_mining_input, with_hard_negatives, write_records
    from retriever.teacher import build_teacher, score_candidates, with_teacher_scores

    window = parse_rank_window(args.ranks) if args.ranks is not None else None
    if not 0 <= args.margin < 1:
        raise ValueError(f"--margin must be in [0, 1), got {args.margin}")
    records, examples = read_mining_input(args.data, args.split)
    kb = load_corpus(args.kb)
    needs_model = args.method == "model" or args.teacher == HYBRID_TEACHER
    encoder = load_encoder(args.model) if needs_model else None
    mined = mine_hard_negatives(examples, kb, args.num, method=args.method, encoder=encoder,
                                skip_answer_passages=args.skip_answer_negatives, depth=args.depth,
                                batch_size=args.batch_size, progress=not args.no_progress, window=window,
                                margin=args.margin, rng=np.random.default_rng(args.seed) if window else None)
    out = [with_hard_negatives(r, m) for r, m in zip(records, mined)]
    if args.teacher is not None:
        teacher = build_teacher(args.teacher, encoder, kb, args.batch_size)
        scores = score_candidates(teacher, examples, mined)
        out = [with_teacher_scores(r, s, teacher.name) for r, s in zip(out, scores)]
    write_records(args.out, out)
    scored = " and teacher scores" if args.teacher is not None else ""
    print(f"wrote {len(records)} records with {sum(map(len, mined))} hard negatives{scored} to {args.out}")
    return 0
