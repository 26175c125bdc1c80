"""`dpr bench`: benchmarks. `dpr bench recall` runs the recall benchmark (see eval/bench_recall.py)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    recall = sub.add_parser("recall", help="zero-shot, in-batch, hard-negative, BM25 and hybrid rows: "
                                           "Recall@k table with CIs, JSON and a PNG of Recall@k curves")
    from eval.bench_recall import add_arguments as add_recall_arguments

    add_recall_arguments(recall)


def run(args: argparse.Namespace) -> int:
    from eval.bench_recall import options_from_args, print_report, run_bench

    report = run_bench(options_from_args(args), command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    print_report(report)
    return 0
