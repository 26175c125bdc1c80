"""`dpr bench NAME`: every benchmark and reliability check of the project, one subcommand each.

Each entry names the module that holds its ``add_arguments`` and ``run``; only the one being run is
imported (so ``dpr bench --help`` stays light).
"""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from driver.main import chosen

BENCHES = {
    "recall": ("bench.recall", "dense rows by recipe (zero-shot, in-batch, default, --recipe), BM25 and "
                               "hybrid: Recall@k, MRR, nDCG with CIs, paired tests against zero-shot and in-batch, "
                               "time and peak RSS per row; JSON, Markdown and a PNG of Recall@k curves"),
    "speed": ("bench.speed", "encoding throughput, int8 recall, HTTP latency (real KB and synthetic flat/HNSW/IVF), "
                             "throughput at concurrency 1/8/32 with and without micro-batching"),
    "reliability": ("reliability.checks", "fuzzing, load and hot swap, kill -9 of builds and training, corrupt, "
                                          "tampered and rebuilt-in-place indexes, stalled clients, metrics growth"),
    "ann": ("bench.ann", "ANN index types at scale: recall@10 vs exact, memory, build time, latency, q/s; writes "
                         "the index planner's table"),
    "merge": ("bench.merge_memory", "peak memory of `dpr index merge` over synthetic shards: streaming vs in-memory"),
    "live": ("bench.live", "documents written while serving: upsert throughput, search with a live segment (a tenth of "
                           "the KB) vs compacted, filtered vs unfiltered search, memory per live passage"),
    "latency": ("bench.latency", "sequential HTTP latency of `dpr serve` on an index, split by Server-Timing"),
    "train-step": ("bench.train_step", "one training step's time and peak RSS by attention dropout and gradient "
                                       "caching, settings interleaved"),
    "json": ("bench.json_encoding", "response serialisation of a k=100 answer: FastAPI's default vs orjson"),
}


def add_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] = ()) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    name = chosen(list(argv)[list(argv).index("bench") + 1:] if "bench" in argv else [], list(BENCHES))
    for bench, (module, help_text) in BENCHES.items():
        p = sub.add_parser(bench, help=help_text, description=help_text)
        p.set_defaults(_bench_module=module)
        if bench == name:
            importlib.import_module(module).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._bench_module).run(args) or 0)
