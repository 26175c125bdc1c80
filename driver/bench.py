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
    from bench.recall import add_arguments as add_recall_arguments

    add_recall_arguments(recall)
    reliability = sub.add_parser("reliability", help="fuzzing, 60 s load with a hot swap, kill -9 of index and "
                                                     "train builds, corrupt indexes: one figure per check")
    from reliability.checks import add_arguments as add_reliability_arguments

    add_reliability_arguments(reliability)
    speed = sub.add_parser("speed", help="encoding throughput (vs naive, sentence-transformers, int8), HTTP query "
                                         "latency (real KB and 1M synthetic flat/HNSW/IVF-PQ), throughput at "
                                         "concurrency 1/8/32 with and without micro-batching")
    from bench.speed import add_arguments as add_speed_arguments

    add_speed_arguments(speed)


def run(args: argparse.Namespace) -> int:
    if args.bench == "speed":
        from bench.speed import run as run_speed

        return run_speed(args)
    if args.bench == "reliability":
        from reliability.checks import options_from_args as reliability_options
        from reliability.checks import print_report as print_reliability
        from reliability.checks import run_reliability

        report = run_reliability(reliability_options(args))
        print_reliability(report)
        return 0 if report.ok else 1
    from bench.recall import options_from_args, print_report, run_bench

    report = run_bench(options_from_args(args), command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    print_report(report)
    return 0
