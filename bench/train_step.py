"""``dpr bench train-step`` (= ``python -m bench.train_step``): what one training step costs, by setting.

Times :func:`retriever.train_step.train_step` on real texts: ``--batch-size`` training questions of
``--data``, each with its positive and ``--hard-negatives`` other passages of its knowledge base (which
passages they are does not change the cost; their lengths do, and these are the data's own), for every
combination of ``--precision``, ``--attention-dropout`` and ``--grad-cache`` (``TrainConfig.precision``,
``attention_dropout`` and ``grad_cache_chunk``). Settings take turns within each round after one untimed warm-up step, since the
machine is shared: a ratio within a run is the figure to quote. Each setting reports its median step
time, its ratio to the first setting and the peak RSS of its steps.

Writes ``train_step.json`` and ``train_step.md`` into ``--out``.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import shlex
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.recall_report import measured
from common.files import atomic_write_text, write_json
from common.flags import add_dataclass_arguments, dataclass_from_args, opt

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path("data/nq_oracle/nq-oracle-train.json")
CHECKPOINT = "none"          # --attention-dropout value meaning "the checkpoint's own rate"


@dataclass(frozen=True)
class StepBenchOptions:
    data: Path = opt(DEFAULT_DATA, "training questions: nq_oracle JSON/JSONL, DPR JSON or a BEIR folder",
                     metavar="PATH")
    split: str = opt("train", "BEIR qrels split")
    model: str = opt("minilm", "base encoder or saved dual encoder")
    batch_size: int = opt(32, "questions per step")
    hard_negatives: int = opt(3, "passages per question besides its positive")
    attention_dropout: tuple[str, ...] = opt((CHECKPOINT, "0"), "attention dropout rates to time (none: the "
                                             "checkpoint's own)", metavar="P,P")
    grad_cache: tuple[int, ...] = opt((16, 0), "gradient-cache chunks to time (0: off)", metavar="N,N")
    precision: tuple[str, ...] = opt(("fp32", "bf16"), "matrix-multiply precisions to time (bf16: autocast, fast "
                                     "on a CPU with AMX tiles)", metavar="P,P")
    rounds: int = opt(2, "timed steps per setting, settings taking turns")
    out: Path = opt(Path("runs/bench-train-step"), "output directory", metavar="DIR")

    def __post_init__(self) -> None:
        for text in self.attention_dropout:
            if text != CHECKPOINT and not 0 <= float(text) < 1:
                raise ValueError(f"--attention-dropout: {text!r} is not {CHECKPOINT} or a rate in [0, 1)")
        checks = [(self.batch_size >= 2, f"--batch-size must be >= 2, got {self.batch_size}"),
                  (self.hard_negatives >= 0, f"--hard-negatives must be >= 0, got {self.hard_negatives}"),
                  (self.rounds >= 1, f"--rounds must be >= 1, got {self.rounds}"),
                  (min(self.grad_cache, default=0) >= 0, f"--grad-cache chunks must be >= 0, got {self.grad_cache}"),
                  (all(p in ("fp32", "bf16") for p in self.precision),
                   f"--precision: each must be fp32 or bf16, got {self.precision}"),
                  (bool(self.attention_dropout) and bool(self.grad_cache) and bool(self.precision),
                   "give at least one setting of each")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def step_batches(options: StepBenchOptions, count: int) -> list[Any]:
    """``count`` distinct batches: questions in file order, the knowledge base's passages (not their
    own positives) in order as hard negatives."""
    from common.data import corpus_from_examples, is_beir_dir, load_corpus, load_examples
    from retriever.batching import Batch

    examples = load_examples(options.data, options.split)
    kb = load_corpus(options.data) if is_beir_dir(options.data) else corpus_from_examples(examples)
    need = count * options.batch_size
    if len(examples) < need:
        raise ValueError(f"{options.data}: {len(examples)} questions, {need} needed for {count} steps of "
                         f"{options.batch_size}; lower --batch-size or --rounds")
    fillers = itertools.cycle(kb)
    batches = []
    for b in range(count):
        chunk = examples[b * options.batch_size:(b + 1) * options.batch_size]
        passages = []
        for ex in chunk:
            own = {p.pid for p in ex.positives}
            negatives = []
            while len(negatives) < options.hard_negatives:
                p = next(fillers)
                if p.pid not in own:
                    negatives.append(p)
            passages += [ex.positives[0], *negatives]
        batches.append(Batch(tuple(ex.qid for ex in chunk), tuple(ex.question for ex in chunk), tuple(passages)))
    return batches


def run_bench(options: StepBenchOptions, command: str | None = None) -> dict[str, Any]:
    import torch

    from bench.speed import machine_info
    from eval.report import library_versions
    from retriever.encoder import load_encoder
    from retriever.onnx_runtime import release_freed_memory
    from retriever.train_setup import attention_dropouts, build_optimizer, linear_schedule, set_attention_dropout
    from retriever.train_step import train_step

    settings = [(p, a, c) for p in options.precision for a in options.attention_dropout for c in options.grad_cache]
    batches = step_batches(options, 1 + options.rounds * len(settings))
    model = load_encoder(options.model)
    model.train()
    own = [d.p for d in attention_dropouts(model)]
    optimizer = build_optimizer(model, 1e-5, 0.01)
    scheduler = linear_schedule(optimizer, 0, 1 << 30)
    device = torch.device("cpu")

    def step(batch: Any, precision: str, dropout: str, chunk: int) -> None:
        set_attention_dropout(model, own[0] if dropout == CHECKPOINT else float(dropout))
        model.set_precision(precision)
        train_step(model, batch, optimizer, scheduler, 1.0, device, grad_cache_chunk=chunk)

    step(batches[0], *settings[0])                       # warm-up: allocator, thread pools, first-call paths
    seconds: dict[tuple[str, str, int], list[float]] = {s: [] for s in settings}
    peaks: dict[tuple[str, str, int], float] = {s: 0.0 for s in settings}
    scope = "row"
    for r in range(options.rounds):
        for i, setting in enumerate(settings):
            # Hand the last setting's freed heap back first: glibc keeps it, and the peak of a setting
            # measured on top of it would be the larger of the two (every setting read ~12.8 GB so).
            release_freed_memory()
            with measured() as m:
                step(batches[1 + r * len(settings) + i], *setting)
            seconds[setting].append(m.seconds)
            peaks[setting] = max(peaks[setting], m.peak_rss_mb)
            scope = m.scope
            logger.info("round %d, %s, attention dropout %s, grad cache %d: %.1f s", r + 1, *setting, m.seconds)
    first = statistics.median(seconds[settings[0]])
    rows = [{"precision": p, "attention_dropout": own[0] if a == CHECKPOINT else float(a),
             "checkpoint_rate": a == CHECKPOINT, "grad_cache_chunk": c, "step_seconds": seconds[(p, a, c)],
             "median_s": statistics.median(seconds[(p, a, c)]),
             "ratio_to_first": round(statistics.median(seconds[(p, a, c)]) / first, 3),
             "peak_rss_mb": round(peaks[(p, a, c)], 1)} for p, a, c in settings]
    report = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
              "texts_per_step": options.batch_size * (2 + options.hard_negatives), "rss_scope": scope,
              "torch_threads": torch.get_num_threads(), "rows": rows, "environment": library_versions(),
              "machine": machine_info()}
    options.out.mkdir(parents=True, exist_ok=True)
    write_json(options.out / "train_step.json", report)
    atomic_write_text(options.out / "train_step.md", step_table(report) + "\n")
    return report


def step_table(report: dict[str, Any]) -> str:
    lines = ["| precision | attention dropout | gradient cache | step (median of rounds) | vs first | peak RSS |",
             "|---|---|---|---|---|---|"]
    for row in report["rows"]:
        rate = f"{row['attention_dropout']:g}" + (" (checkpoint's)" if row["checkpoint_rate"] else "")
        cache = f"chunks of {row['grad_cache_chunk']}" if row["grad_cache_chunk"] else "off"
        rss = "-" if row.get("peak_rss_mb") is None else f"{row['peak_rss_mb'] / 1024:.1f} GB"
        # Runs before --precision timed fp32 only.
        lines.append(f"| {row.get('precision', 'fp32')} | {rate} | {cache} | {row['median_s']:.1f} s | "
                     f"{row['ratio_to_first']:.2f}x | {rss} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, StepBenchOptions)


def run(args: argparse.Namespace) -> int:
    options = dataclass_from_args(StepBenchOptions, args)
    report = run_bench(options, shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    print(f"{report['texts_per_step']} texts a step ({options.batch_size} questions, {options.hard_negatives} "
          f"hard negatives each), {report['torch_threads']} torch threads\n")
    print(step_table(report))
    print(f"\nwrote {options.out}/train_step.json")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
