"""`dpr`: the one front door. Each subcommand lives in its own module with ``add_parser`` and ``run``."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> module under driver/. Modules are imported only when their command runs, so
# `dpr --help` does not pay for torch.
COMMANDS = {
    "train": ("driver.train", "train a dual encoder (in-batch + hard negatives)"),
    "mine": ("driver.mine", "mine hard negatives for a training file"),
    "index": ("driver.index", "embed a knowledge base into a FAISS index with a passage store"),
    "serve": ("driver.serve", "serve an index over HTTP (FastAPI + uvicorn)"),
    "eval": ("driver.evaluate", "evaluate a model, an index or a running server (Recall@k, MRR, nDCG)"),
    "bench": ("driver.bench", "benchmarks: `dpr bench recall` reproduces the recall table"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpr", description="Dense passage retrieval: train, index, serve.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    sys.exit(main())
