"""`dpr eval`: evaluate a model, an index or a running server (and BM25, and their fusion)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from common.flags import add_dataclass_arguments, dataclass_from_args


def add_arguments(parser: argparse.ArgumentParser, argv: object = ()) -> None:
    argv = list(argv) if isinstance(argv, (list, tuple)) else []
    if "eval" in argv and argv[argv.index("eval") + 1:argv.index("eval") + 2] == ["compare"]:
        parser.add_argument("action", choices=("compare",))
        parser.add_argument("reports", nargs=2, type=Path, metavar="REPORT.json",
                            help="two `dpr eval --out` reports over the same queries (A, then B)")
        parser.add_argument("--system-a", help="system of report A to compare (default: its first)")
        parser.add_argument("--system-b", help="system of report B to compare (default: its first)")
        parser.add_argument("--metric", action="append", help="metrics to compare (repeatable; default: all)")
        parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
        parser.add_argument("--seed", type=int, default=0, help="default %(default)s")
        return
    from eval.runner import EvalOptions

    parser.epilog = "dpr eval compare A.json B.json: paired differences with intervals and p-values"
    add_dataclass_arguments(parser, EvalOptions)
    parser.add_argument("--out", type=Path, help="write the JSON report here (atomically)")
    parser.add_argument("--run-out", type=Path, metavar="RUN.trec",
                        help="write the run in TREC format (several systems: RUN.trec for the first, RUN-<name>.trec "
                             "for the others), for trec_eval, ranx or ir_measures")
    parser.add_argument("--qrels-out", type=Path, metavar="QRELS", help="write the qrels in TREC format")


def compare(args: argparse.Namespace) -> int:
    import json

    from eval.compare import _system, compare_systems, format_comparison

    a_report, b_report = (json.loads(p.read_text(encoding="utf-8")) for p in args.reports)
    a, b = _system(a_report, args.system_a, "A"), _system(b_report, args.system_b, "B")
    rows = compare_systems(a, b, args.metric, n_resamples=args.resamples, seed=args.seed)
    print(f"A: {args.reports[0]} ({a['name']}); B: {args.reports[1]} ({b['name']}); {rows[0]['n']} queries\n")
    print(format_comparison(rows, a["name"], b["name"]))
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "compare":
        return compare(args)
    from eval.report import write_report
    from eval.runner import EvalOptions, run_evaluation

    if args.data is None:
        raise ValueError("--data is required")
    options = dataclass_from_args(EvalOptions, args)
    if args.out is not None and args.out.is_dir():
        raise ValueError(f"--out {args.out}: is a directory, expected a JSON file path")
    report = run_evaluation(options, command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                            run_out=args.run_out, qrels_out=args.qrels_out)
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
    if report.get("comparison_table"):
        paired = report["paired"]
        print(f"\npaired tests against {report['baseline']} on the same {report['systems'][0]['n_queries']} queries "
              f"(--baseline): difference in points, 95% paired-bootstrap CI; p: randomisation test "
              f"({paired['randomization_resamples']} sign flips), two-sided; * p < 0.05\n")
        print(report["comparison_table"])
    for name, path in (report.get("trec_runs") or {}).items():
        print(f"wrote the {name} run: {path}")
    if report.get("trec_qrels"):
        print(f"wrote the qrels: {report['trec_qrels']}")
    if args.out is not None:
        print(f"wrote {write_report(args.out, report)}")
    return 0
