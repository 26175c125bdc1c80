"""`dpr`: the one front door. Each subcommand lives in its own module with ``add_arguments`` and ``run``.

Only the command being run is imported (and only its flags are built), so ``dpr --help`` and
``dpr serve --help`` load no torch, FAISS or transformers.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# subcommand -> (module under driver/, one-line help)
COMMANDS = {
    "train": ("driver.train", "train a dual encoder (in-batch + hard negatives)"),
    "mine": ("driver.mine", "mine hard negatives for a training file"),
    "index": ("driver.index", "embed a knowledge base into a FAISS index (a new versioned build), merge, plan, "
                              "roll back, compact"),
    "kb": ("driver.kb", "add, replace or delete documents of an index without a rebuild (live segment)"),
    "serve": ("driver.serve", "serve an index over HTTP (FastAPI + uvicorn)"),
    "eval": ("driver.evaluate", "evaluate a model, an index or a running server (Recall@k, MRR, nDCG)"),
    "bench": ("driver.bench", "benchmarks: recall, speed, reliability, ann, merge, latency, json"),
}


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("dpr-service")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def chosen(argv: Sequence[str], names: Sequence[str]) -> str | None:
    """The first of ``names`` in ``argv``: the subcommand whose flags must be built."""
    return next((a for a in argv if a in names), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="dpr", description="Dense passage retrieval: train, index, serve.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    command = chosen(argv, list(COMMANDS))
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(p, argv)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # DataError and manifest mismatches are ValueErrors: the message is for the user, no traceback.
        if args.verbose:
            raise
        print(f"dpr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m driver.main ...` is `dpr ...`: reports that record their command line say so.
    sys.argv[0] = "dpr"
    sys.exit(main())
