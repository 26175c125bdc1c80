"""The recall benchmark behind ``dpr bench recall`` (also ``python -m bench.recall``).

One run, one machine, five rows: the zero-shot encoder, in-batch negatives, in-batch + model-mined hard
negatives, BM25, and the hybrid of the best dense row with BM25. The hybrid's method and weight are
chosen on the TRAINING questions (ranked in the same knowledge base), never on the held-out ones.
Writes ``bench_recall.json`` (all figures with CIs, settings, times, data hashes, versions),
``bench_recall.md`` (the table) and ``recall_curves.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.plot import markdown_table, plot_curves, recall_curve
from bench.recall_data import BenchData, prepare
from common.data import Passage
from common.files import write_json
from common.flags import add_dataclass_arguments, dataclass_from_args, opt
from common.fusion import RRF_K, FusionConfig
from eval.bootstrap import DEFAULT_RESAMPLES
from eval.evaluate import DEFAULT_KS, RANK_CUTOFF, evaluate_run
from eval.report import hash_paths, library_versions
from eval.retrieve import Retrieval, _from_rows, exact_search, fuse, retrieve_with_bm25

logger = logging.getLogger(__name__)

DEFAULT_TRAIN = Path("data/nq_oracle/nq-oracle-train.json")
DEFAULT_VAL = Path("data/nq_oracle/nq-oracle-val.json")
CURVE_K = 100
# interp weights tried on the training questions, dense-heavy first: ties keep the denser mix.
ALPHAS = tuple(round(0.95 - 0.05 * i, 2) for i in range(19))
DENSE_ROWS = (("zero-shot", None), ("in-batch", "none"), ("in-batch+hard", "model"))
DENSE_ROW_NAMES = tuple(name for name, _ in DENSE_ROWS)


@dataclass(frozen=True)
class BenchOptions:
    train: Path = opt(DEFAULT_TRAIN, "training questions: nq_oracle JSON or a BEIR folder", metavar="PATH")
    val: Path = opt(DEFAULT_VAL, "held-out questions: nq_oracle JSON or a BEIR folder; the same BEIR folder and "
                    "split as --train is split 70/10/20 train/dev/test by --seed", metavar="PATH")
    out: Path = opt(Path("runs/bench-recall"), "output directory", metavar="DIR")
    model: str = opt("minilm", "base encoder")
    epochs: int = opt(2, "training epochs per trained row")
    seed: int = opt(42, "training, split and bootstrap seed")
    train_split: str = opt("train", "BEIR qrels split to train on")
    val_split: str = opt("test", "BEIR qrels split to evaluate on")
    extra_passages: tuple[Path, ...] = opt((), "more knowledge-base passages (JSONL id/_id,title,text); repeatable",
                                           action="append", metavar="FILE", show_default=False)
    ks: tuple[int, ...] = opt(DEFAULT_KS, "Recall@k cut-offs", flag="--k", metavar="K,K,...")
    n_resamples: int = opt(DEFAULT_RESAMPLES, "bootstrap resamples", flag="--resamples")
    batch_size: int = opt(64, "texts per encoder batch")
    progress: bool = opt(True, "progress bars")
    # Fewer rows, less CPU on a big corpus.
    rows: tuple[str, ...] = opt(DENSE_ROW_NAMES, "dense rows to run; BM25 and the hybrid always run",
                                metavar="ROW,ROW")
    # TrainConfig fields passed through unchanged (tests use a tiny model with short sequences).
    train_overrides: Mapping[str, Any] = opt(default_factory=dict, cli=False)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"cut-offs must be positive, got {list(self.ks)}")
        object.__setattr__(self, "ks", tuple(sorted(set(self.ks))))
        unknown = sorted(set(self.rows) - set(DENSE_ROW_NAMES))
        if unknown or not self.rows:
            raise ValueError(f"--rows takes one or more of {', '.join(DENSE_ROW_NAMES)}; got {list(self.rows)}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(train=str(self.train), val=str(self.val), out=str(self.out),
                 extra_passages=[str(p) for p in self.extra_passages], train_overrides=dict(self.train_overrides))
        return d


def _encode_and_search(encoder: Any, kb: Sequence[Passage], query_sets: Sequence[Mapping[str, str]], k: int,
                       batch_size: int, progress: bool) -> list[Retrieval]:
    """Encode the knowledge base once and rank it for each query set."""
    start = time.perf_counter()
    p_emb = encoder.encode_passages(kb, batch_size=batch_size, progress=progress)
    encode_s = time.perf_counter() - start
    out = []
    for queries in query_sets:
        t0 = time.perf_counter()
        q_emb = encoder.encode_queries(list(queries.values()), batch_size=batch_size, progress=progress)
        retrieval = _from_rows(list(queries), *exact_search(q_emb, p_emb, k), kb)
        retrieval.seconds = encode_s + time.perf_counter() - t0
        retrieval.timings = {"encode_passages_s": round(encode_s, 3), "passages_per_s": round(len(kb) / encode_s, 1)}
        out.append(retrieval)
    return out


def _train(options: BenchOptions, data: BenchData, name: str, negatives: str) -> tuple[str, dict[str, Any]]:
    from retriever.train import train
    from retriever.train_config import TrainConfig

    config = TrainConfig(train=data.train_path, val=data.val_path, out=str(options.out / "models" / name),
                         model=options.model, train_split=data.train_split, val_split=data.val_split,
                         epochs=options.epochs, hard_negatives=negatives, seed=options.seed,
                         **dict(options.train_overrides))
    logger.info("training %s (%s hard negatives, %d epochs)", name, negatives, options.epochs)
    result = train(config, progress=options.progress)
    log = result.log
    return config.out, {"config": config.to_dict(), "best_epoch": result.best_epoch,
                        "total_seconds": log.get("total_seconds"),
                        "epochs": [{k: v for k, v in row.items() if k != "metrics"} | {"val_metrics": row["metrics"]}
                                   for row in log["epochs"]]}


def _score(data_qrels: Mapping[str, Any], retrieval: Retrieval, ks: Sequence[int], options: BenchOptions,
           answers: Mapping[str, Any] | None) -> dict[str, Any]:
    return evaluate_run(data_qrels, retrieval.run, ks, answers=answers, texts=retrieval.texts or None,
                        n_resamples=options.n_resamples, seed=options.seed)


def tune_fusion(dense: Retrieval, sparse: Retrieval, qrels: Mapping[str, Any], k: int) -> dict[str, Any]:
    """Pick the fusion (interp alpha, or RRF) with the best Recall@5, then MRR@10, on these queries.

    Called with the TRAINING questions only; the grid and every candidate's scores go into the report.
    """
    from common.metrics import mrr_at_k, recall_at_k

    candidates = [FusionConfig(method="interp", alpha=a) for a in ALPHAS] + [FusionConfig(method="rrf")]
    grid, best = [], None
    for fusion in candidates:
        run = fuse(dense, sparse, k, fusion).run
        entry = {"method": fusion.method, "alpha_dense": fusion.alpha if fusion.method == "interp" else None,
                 "recall@5": recall_at_k(qrels, run, 5), "mrr@10": mrr_at_k(qrels, run, RANK_CUTOFF)}
        grid.append(entry)
        if best is None or (entry["recall@5"], entry["mrr@10"]) > (best["recall@5"], best["mrr@10"]):
            best = entry
    return {"chosen": best, "grid": grid, "tuned_on": "training questions", "n_queries": len(qrels)}


def run_bench(options: BenchOptions, command: str | None = None) -> dict[str, Any]:
    """Run the whole benchmark; returns the report (also written to ``options.out``)."""
    from retriever.encoder import load_encoder, model_ref

    started = time.perf_counter()
    options.out.mkdir(parents=True, exist_ok=True)
    data = prepare(options.train, options.val, options.out, options.seed, options.train_split,
                   options.val_split, options.extra_passages)
    test, tune = data.test_set, data.train_set
    depth = max(max(options.ks), CURVE_K)
    answers = test.answers if test.has_answers else None
    rows: list[dict[str, Any]] = []
    runs: dict[str, Retrieval] = {}
    train_runs: dict[str, Retrieval] = {}
    training: dict[str, Any] = {}

    for name, negatives in DENSE_ROWS:
        if name not in options.rows:
            continue
        t0 = time.perf_counter()
        ref = options.model
        if negatives is not None:
            ref, training[name] = _train(options, data, name, negatives)
        encoder = load_encoder(ref, **({} if negatives else _encoder_overrides(options)))
        same_kb = data.tune_kb is data.kb
        found = _encode_and_search(encoder, data.kb, [test.queries] + ([tune.queries] if same_kb else []),
                                   depth, options.batch_size, options.progress)
        runs[name] = found[0]
        train_runs[name] = found[1] if same_kb else _encode_and_search(
            encoder, data.tune_kb, [tune.queries], depth, options.batch_size, options.progress)[0]
        rows.append({"name": name, "kind": "dense", "model": model_ref(ref),
                     "seconds": round(time.perf_counter() - t0, 1),
                     **_score(test.qrels, runs[name], options.ks, options, answers)})
        del encoder

    t0 = time.perf_counter()
    runs["bm25"] = retrieve_with_bm25(data.kb, test.queries, depth, options.progress)
    train_runs["bm25"] = retrieve_with_bm25(data.tune_kb, tune.queries, depth, False)
    rows.append({"name": "bm25", "kind": "bm25", "library": "bm25s", "k1": 0.9, "b": 0.4,
                 "seconds": round(time.perf_counter() - t0, 1),
                 **_score(test.qrels, runs["bm25"], options.ks, options, answers)})

    # The best dense row by held-out Recall@5 (MRR@10 breaks ties): every row is in the table, so the
    # choice hides nothing; the fusion weight itself never sees a held-out question.
    best_dense = max((r for r in rows if r["kind"] == "dense"),
                     key=lambda r: (r["metrics"]["recall@5"]["value"], r["metrics"][f"mrr@{RANK_CUTOFF}"]["value"]))
    tuning = tune_fusion(train_runs[best_dense["name"]], train_runs["bm25"], tune.qrels, depth)
    chosen = tuning["chosen"]
    label = (f"hybrid ({best_dense['name']} + bm25, "
             + (f"interp a={chosen['alpha_dense']:.2f})" if chosen["method"] == "interp" else f"rrf k={RRF_K})"))
    chosen_fusion = (FusionConfig(method="interp", alpha=chosen["alpha_dense"]) if chosen["method"] == "interp"
                     else FusionConfig(method="rrf"))
    runs[label] = fuse(runs[best_dense["name"]], runs["bm25"], depth, chosen_fusion)
    rows.append({"name": label, "kind": "hybrid", "dense": best_dense["name"], "fusion": tuning,
                 **_score(test.qrels, runs[label], options.ks, options, answers)})

    names = [f"recall@{k}" for k in options.ks] + [f"mrr@{RANK_CUTOFF}", f"ndcg@{RANK_CUTOFF}"]
    table = markdown_table(rows, names)
    curves = {row["name"]: recall_curve(test.qrels, runs[row["name"]].run, CURVE_K) for row in rows}
    title = f"Recall@k on {Path(str(test.path)).name} ({len(test)} held-out queries, {len(data.kb)} passages)"
    png = plot_curves(curves, options.out / "recall_curves.png", title)
    files = [Path(options.train), Path(options.val), *options.extra_passages]
    report = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
        "options": options.to_dict(), "seed": options.seed, "n_resamples": options.n_resamples,
        "data": {**data.notes, "sha256": hash_paths(files)},
        "rows": rows, "table": table, "curves": {"k": list(range(1, CURVE_K + 1)), "recall": curves},
        "training": training, "fusion": tuning, "plot": str(png),
        "environment": library_versions(), "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(options.out / "bench_recall.json", report)
    (options.out / "bench_recall.md").write_text(table + "\n", encoding="utf-8")
    return report


def _encoder_overrides(options: BenchOptions) -> dict[str, Any]:
    from retriever.train_config import ENCODER_FIELDS

    return {k: v for k, v in options.train_overrides.items() if k in ENCODER_FIELDS and v is not None}


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, BenchOptions)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    return dataclass_from_args(BenchOptions, args)


def print_report(report: Mapping[str, Any]) -> None:
    data = report["data"]
    print(f"held-out queries: {data['test_queries']}, knowledge base: {data['kb_passages']} passages, "
          f"training queries: {data['train_queries']}")
    print()
    print(report["table"])
    chosen = report["fusion"]["chosen"]
    print(f"\nvalues in %, 95% bootstrap CI over queries; hybrid fusion {chosen['method']}"
          f"{'' if chosen['alpha_dense'] is None else ' alpha_dense=' + format(chosen['alpha_dense'], '.2f')}"
          f" chosen on the {report['fusion']['n_queries']} training questions; "
          f"wall time {report['wall_seconds']}s\nwrote {report['options']['out']}/bench_recall.json, "
          f"bench_recall.md, recall_curves.png")


def run(args: argparse.Namespace) -> int:
    """``dpr bench recall``."""
    report = run_bench(options_from_args(args), command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    print_report(report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recall", description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
