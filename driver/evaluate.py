"""`dpr eval`: evaluate a model, an index or a running server (and BM25, and their fusion)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from common.flags import add_dataclass_arguments, dataclass_from_args


def add_arguments(parser: argparse.ArgumentParser, argv: object = ()) -> None:
    from eval.runner import EvalOptions

    add_dataclass_arguments(parser, EvalOptions)
    parser.add_argument("--out", type=Path, help="write the JSON report here (atomically)")


def run(args: argparse.Namespace) -> int:
    from eval.report import write_report
    from eval.runner import EvalOptions, run_evaluation

    if args.data is None:
        raise ValueError("--data is required")
    options = dataclass_from_args(EvalOptions, args)
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
