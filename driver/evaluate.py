"""`dpr eval`: evaluate a model, an index or a running server (and BM25, and their fusion)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from eval.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from eval.evaluate import DEFAULT_KS


def _ks(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(k) for k in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,5,10, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="questions: an nq_oracle/DPR JSON file, or a BEIR folder (with --split)")
    parser.add_argument("--split", default="test", help="BEIR qrels split: qrels/<split>.tsv (default: test)")
    what = parser.add_argument_group("what to evaluate (one dense source, and/or --bm25)")
    what.add_argument("--model", help="a saved dual-encoder directory or a base alias such as 'minilm' "
                                      "(with --index: use it instead of the model the index records)")
    what.add_argument("--index", type=Path, help="a built index directory (dpr index)")
    what.add_argument("--url", help="a running search server, e.g. http://127.0.0.1:8000")
    what.add_argument("--server-mode", choices=("dense", "bm25", "hybrid"), default="dense",
                      help="with --url: the search mode to ask the server for (default dense)")
    what.add_argument("--bm25", action="store_true", help="BM25 over the knowledge base")
    what.add_argument("--hybrid", choices=("rrf", "interp"),
                      help="also fuse the dense run with BM25: reciprocal rank fusion or score interpolation")
    what.add_argument("--alpha", type=float, default=0.5, help="dense weight for --hybrid interp (default 0.5)")
    parser.add_argument("--kb", action="append", type=Path, default=[], metavar="PATH",
                        help="knowledge base for --model/--bm25: JSONL (id/_id,title,text), a BEIR folder, or "
                             "nq_oracle JSON (its gold passages); repeat for several. Default: the --data "
                             "file's own gold passages (BEIR: its corpus)")
    parser.add_argument("--k", dest="ks", type=_ks, default=DEFAULT_KS, metavar="K,K,...",
                        help="Recall@k cut-offs (default: 1,5,10,20,100)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="bootstrap seed")
    parser.add_argument("--out", type=Path, help="write the JSON report here (atomically)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from eval.report import write_report
    from eval.runner import EvalOptions, run_evaluation

    options = EvalOptions(
        data=args.data, split=args.split, model=args.model, index=args.index, url=args.url,
        server_mode=args.server_mode, bm25=args.bm25,
        kb=tuple(args.kb), hybrid=args.hybrid, alpha=args.alpha, ks=tuple(args.ks), batch_size=args.batch_size,
        n_resamples=args.resamples, seed=args.seed, progress=not args.no_progress,
    )
    if args.out is not None and args.out.is_dir():
        raise ValueError(f"--out {args.out}: is a directory, expected a JSON file path")
    report = run_evaluation(options, command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    kb = report.get("knowledge_base")
    print(f"data: {report['data']['path']} ({report['data']['layout']}"
          f"{', split ' + report['data']['split'] if report['data']['split'] else ''}), "
          f"{report['data']['n_queries']} queries")
    if kb:
        print(f"knowledge base: {kb['count']} passages, {kb['source']}; "
              f"{100 * kb['gold_in_kb']:.1f}% of relevant passages present")
    for system in report["systems"]:
        print(f"{system['name']}: {system['source']}, {system['timing']['seconds']}s")
    print()
    print(report["table"])
    print(f"\nvalues in %, 95% bootstrap CI over queries ({report['n_resamples']} resamples, seed {report['seed']}); "
          f"wall time {report['wall_seconds']}s")
    if args.out is not None:
        print(f"wrote {write_report(args.out, report)}")
    return 0
