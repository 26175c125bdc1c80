"""The recall benchmark behind ``dpr bench recall`` (also ``python -m bench.recall``).

One run, one machine. The dense rows are named recipes (:data:`RECIPES`, plus ``--recipe``): by
default the zero-shot encoder, in-batch negatives and in-batch + model-mined hard negatives (a row
with a ``chunk`` spec searches the knowledge base cut into pieces, by document, as an index built with
``dpr index --chunk`` does); then BM25; each zero-shot row fused with BM25 by the product's default
fusion (what ``dpr serve`` searches by default over an untrained model: a user with no labelled
question gets this, tuned on nothing);
and the hybrid of the best dense row with BM25, whose method and weight are chosen on the TRAINING
questions (ranked in the same knowledge base), never on the held-out ones. Every row is paired-tested
against the zero-shot and the in-batch rows (``--compare-to``) on the same held-out
queries, and records its cost: training and evaluation time and peak RSS (:mod:`bench.recall_report`).
Writes ``bench_recall.json`` (all figures with CIs, paired tests, costs, settings, data hashes,
versions), ``bench_recall.md`` (the table) and ``recall_curves.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.plot import plot_curves, recall_curve
from bench.recall_data import (
    DEFAULT_BASELINES,
    DEFAULT_ROWS,
    RECIPES,
    BenchData,
    parse_recipe,
    plan_rows,
    prepare,
)
from bench.recall_fusion import fusion_choice, fusion_label, tune_fusion
from bench.recall_report import (
    COST_NOTES,
    add_paired_tests,
    bench_table,
    measured,
    paired_metrics,
    print_report,
    table_notes,
    train_in_subprocess,
)
from bench.recall_search import encode_and_search
from bench.reuse import (
    VECTORS_DIR,
    finished_training,
    record_training,
    training_key,
)
from common.data import Passage
from common.files import atomic_write_text, write_json
from common.flags import add_dataclass_arguments, dataclass_from_args, opt
from common.fusion import FusionConfig
from eval.bootstrap import DEFAULT_RESAMPLES
from eval.evaluate import DEFAULT_KS, RANK_CUTOFF, evaluate_run
from eval.report import hash_paths, library_versions
from eval.retrieve import Retrieval, fuse, retrieve_with_bm25

logger = logging.getLogger(__name__)

DEFAULT_TRAIN = Path("data/nq_oracle/nq-oracle-train.json")
DEFAULT_VAL = Path("data/nq_oracle/nq-oracle-val.json")
CURVE_K = 100


@dataclass(frozen=True)
class BenchOptions:
    train: Path = opt(DEFAULT_TRAIN, "training questions: nq_oracle JSON or a BEIR folder", metavar="PATH")
    val: Path = opt(DEFAULT_VAL, "held-out questions: nq_oracle JSON or a BEIR folder; the same BEIR folder and "
                    "split as --train is split 70/10/20 train/dev/test by --seed", metavar="PATH")
    out: Path = opt(Path("runs/bench-recall"), "output directory", metavar="DIR")
    model: str = opt("minilm", "base encoder")
    # None: TrainConfig's own default, so the "default" row trains exactly as `dpr train` does.
    epochs: int | None = opt(None, "training epochs per trained row, unless its recipe says (none: dpr train's "
                             "default)")
    seed: int = opt(42, "training, split and bootstrap seed")
    train_split: str = opt("train", "BEIR qrels split to train on")
    val_split: str = opt("test", "BEIR qrels split to evaluate on")
    extra_passages: tuple[Path, ...] = opt((), "more knowledge-base passages (JSONL id/_id,title,text); repeatable",
                                           action="append", metavar="FILE", show_default=False)
    ks: tuple[int, ...] = opt(DEFAULT_KS, "Recall@k cut-offs", flag="--k", metavar="K,K,...")
    n_resamples: int = opt(DEFAULT_RESAMPLES, "bootstrap resamples", flag="--resamples")
    batch_size: int = opt(64, "texts per encoder batch")
    progress: bool = opt(True, "progress bars")
    # A row is hours of CPU on a real corpus: adding one row to a run must not retrain the others.
    retrain: bool = opt(False, "train every row again, even one whose OUT/models/ROW holds a finished training "
                        "of the same TrainConfig on the same data (default: reuse it and its recorded cost)")
    # Fewer rows, less CPU on a big corpus. None: the default rows and every new --recipe.
    rows: tuple[str, ...] | None = opt(None, f"dense rows to run, by recipe name ({', '.join(RECIPES)} or a "
                                       f"--recipe); default: {','.join(DEFAULT_ROWS)} and each new --recipe. "
                                       "BM25 and the hybrid always run", metavar="ROW,ROW", show_default=False)
    recipes: tuple[str, ...] = opt((), "add or replace a row: NAME:JSON, its TrainConfig overrides (checked when "
                                   "the row runs), e.g. 'window:{\"negative_ranks\":\"10:100\"}'; keys of the "
                                   "benchmark's own: zero_shot (no training), start_from (ROW: train from that "
                                   "row's model), unsupervised (passed on, with kb = the knowledge base); repeatable",
                                   flag="--recipe", action="append", metavar="NAME:JSON", show_default=False)
    baselines: tuple[str, ...] = opt(DEFAULT_BASELINES, "rows every row is paired-tested against, when they run",
                                     flag="--compare-to", metavar="ROW,ROW")
    # TrainConfig fields passed through unchanged (tests use a tiny model with short sequences).
    train_overrides: Mapping[str, Any] = opt(default_factory=dict, cli=False)

    def __post_init__(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"cut-offs must be positive, got {list(self.ks)}")
        object.__setattr__(self, "ks", tuple(sorted(set(self.ks))))
        registry = self.registry
        rows = self.rows if self.rows is not None else DEFAULT_ROWS + tuple(
            name for name in registry if name not in RECIPES)
        object.__setattr__(self, "rows", tuple(plan_rows(rows, registry)))
        unknown = sorted(set(self.baselines) - set(registry) - {"bm25"})
        if unknown:
            raise ValueError(f"--compare-to: unknown row(s) {', '.join(unknown)} (rows: {', '.join(registry)}, bm25)")

    @property
    def registry(self) -> dict[str, dict[str, Any]]:
        """:data:`RECIPES` with the ``--recipe`` entries added or replaced."""
        return {**RECIPES, **dict(parse_recipe(text) for text in self.recipes)}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(train=str(self.train), val=str(self.val), out=str(self.out),
                 extra_passages=[str(p) for p in self.extra_passages], train_overrides=dict(self.train_overrides))
        return d


def model_refs(options: BenchOptions, registry: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The model each row evaluates (and a ``start_from`` row trains from): the base, or its training output."""
    return {name: (str(recipe.get("model", options.model)) if recipe.get("zero_shot")
                   else str(options.out / "models" / name)) for name, recipe in registry.items()}


def row_config(options: BenchOptions, data: BenchData, name: str, recipe: Mapping[str, Any],
               refs: Mapping[str, str], kb_file: Path | None) -> Any:
    """The TrainConfig of a trained row: the benchmark's data and settings, ``train_overrides``, then
    the recipe. Here a recipe's fields meet TrainConfig: one it lacks is refused, naming the row."""
    from retriever.train_config import ENCODER_FIELDS, TrainConfig

    values: dict[str, Any] = {"model": options.model, "seed": options.seed,
                              **({} if options.epochs is None else {"epochs": options.epochs}),
                              **options.train_overrides}
    overrides = {k: v for k, v in recipe.items() if k not in ("zero_shot", "start_from", "chunk")}
    parent = recipe.get("start_from")
    if parent is not None:
        values["model"] = refs[parent]
    if parent is not None and refs[parent] == str(options.out / "models" / parent):
        given = sorted(set(overrides) & set(ENCODER_FIELDS))
        if given:
            raise ValueError(f"row {name} starts from {parent}'s saved model, which keeps its own encoder "
                             f"options; drop {', '.join(given)}")
        values = {k: v for k, v in values.items() if k not in ENCODER_FIELDS}
    if recipe.get("unsupervised") and "kb" not in overrides:
        values["kb"] = (str(kb_file),)
    values.update(overrides)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    missing = sorted(set(values) - known)
    if missing:
        raise ValueError(f"row {name}: TrainConfig has no field {', '.join(missing)} (this trainer does not "
                         f"support it yet?); the recipe: {json.dumps(dict(recipe))}")
    # An unsupervised row sees no judged query at all: it trains on pseudo queries from the knowledge
    # base and picks its checkpoint on held-out pseudo queries, so no label reaches it, dev ones included.
    paths = ({"train": "", "val": ""} if values.get("unsupervised")
             else {"train": data.train_path, "val": data.val_path})
    try:
        return TrainConfig(**paths, out=str(options.out / "models" / name),
                           train_split=data.train_split, val_split=data.val_split, **values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"row {name}: {e}; the recipe: {json.dumps(dict(recipe))}") from None


def _zero_shot_overrides(options: BenchOptions, name: str, recipe: Mapping[str, Any]) -> dict[str, Any]:
    from retriever.train_config import ENCODER_FIELDS

    extra = sorted(set(recipe) - {"zero_shot", "model", "chunk", *ENCODER_FIELDS})
    if extra:
        raise ValueError(f"row {name} is zero_shot (no training): only model, chunk and encoder fields "
                         f"({', '.join(ENCODER_FIELDS)}) apply, not {', '.join(extra)}")
    # The benchmark-wide encoder options are for --model; a recipe naming its own model gets only its own.
    base = {} if "model" in recipe else {k: v for k, v in options.train_overrides.items()
                                         if k in ENCODER_FIELDS and v is not None}
    return base | {k: v for k, v in recipe.items() if k in ENCODER_FIELDS}


def _write_kb(kb: Sequence[Passage], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps({"_id": p.pid, "title": p.title, "text": p.text}) + "\n"
                                    for p in kb))
    return path


def _train(config: Any, name: str, progress: bool, retrain: bool) -> dict[str, Any]:
    """Train one row in its own process, or reuse its finished training; ``{"best_epoch", "log",
    "seconds", "peak_rss_mb", "process_seconds"}`` (+ ``"reused": True``)."""
    key = training_key(config)   # hashes the data files once, before training and for its record
    earlier = None if retrain else finished_training(config, key)
    if earlier is not None:
        logger.info("row %s: reusing the finished training in %s (same config and data; --retrain to train "
                    "again)", name, config.out)
        return {**earlier, "reused": True}
    logger.info("training %s (%s hard negatives, %d epochs, from %s)", name, config.hard_negatives, config.epochs,
                config.model)
    t0 = time.perf_counter()
    trained = {**train_in_subprocess(config, progress), "process_seconds": round(time.perf_counter() - t0, 3)}
    record_training(config, key, trained)
    return trained


def _score(data_qrels: Mapping[str, Any], retrieval: Retrieval, ks: Sequence[int], options: BenchOptions,
           answers: Mapping[str, Any] | None) -> dict[str, Any]:
    # Per-query values kept: the paired tests between rows need them (on the same query ids).
    return evaluate_run(data_qrels, retrieval.run, ks, answers=answers, texts=retrieval.texts or None,
                        n_resamples=options.n_resamples, seed=options.seed, keep_per_query=True)


def _cost(m: Any, trained: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"train_seconds": trained["seconds"] if trained else None,
            "train_process_seconds": trained["process_seconds"] if trained else None,
            "train_peak_rss_mb": trained["peak_rss_mb"] if trained else None,
            "eval_seconds": m.seconds, "eval_peak_rss_mb": m.peak_rss_mb, "eval_rss_scope": m.scope}


def _hybrid_row(label: str, dense: str, fusion: FusionConfig, runs: dict[str, Retrieval], qrels: Mapping[str, Any],
                depth: int, options: BenchOptions, answers: Mapping[str, Any] | None,
                extra: Mapping[str, Any], tuning_seconds: float = 0.0) -> dict[str, Any]:
    """The row of ``runs[dense]`` fused with ``runs["bm25"]`` by ``fusion`` (its run is added to ``runs``);
    ``tuning_seconds``, the time spent choosing ``fusion``, counts in its eval time."""
    with measured() as m:
        runs[label] = fuse(runs[dense], runs["bm25"], depth, fusion)
        scores = _score(qrels, runs[label], options.ks, options, answers)
    cost = {**_cost(m), "eval_seconds": m.seconds + tuning_seconds}
    return {"name": label, "kind": "hybrid", "dense": dense, **extra, "seconds": round(cost["eval_seconds"], 1),
            "cost": cost, **scores}


def run_bench(options: BenchOptions, command: str | None = None) -> dict[str, Any]:
    """Run the whole benchmark; returns the report (also written to ``options.out``)."""
    from bench.speed import machine_info
    from retriever.encoder import load_encoder, model_ref

    started = time.perf_counter()
    machine = machine_info()          # load average before this run's own work
    options.out.mkdir(parents=True, exist_ok=True)
    data = prepare(options.train, options.val, options.out, options.seed, options.train_split,
                   options.val_split, options.extra_passages)
    test, tune = data.test_set, data.train_set
    depth = max(max(options.ks), CURVE_K)
    answers = test.answers if test.has_answers else None
    registry = options.registry
    recipes = {name: registry[name] for name in options.rows}
    refs = model_refs(options, registry)
    kb_file = (_write_kb(data.kb, options.out / "data" / "kb.jsonl")
               if any(r.get("unsupervised") and "kb" not in r for r in recipes.values()) else None)
    # Every row's recipe meets TrainConfig (or the encoder) here, before the first row trains.
    configs = {name: row_config(options, data, name, recipe, refs, kb_file)
               for name, recipe in recipes.items() if not recipe.get("zero_shot")}
    encoder_options = {name: _zero_shot_overrides(options, name, recipe)
                       for name, recipe in recipes.items() if recipe.get("zero_shot")}
    rows: list[dict[str, Any]] = []
    runs: dict[str, Retrieval] = {}
    train_runs: dict[str, Retrieval] = {}
    training: dict[str, Any] = {}

    for name, recipe in recipes.items():
        trained = None
        if name in configs:
            trained = _train(configs[name], name, options.progress, options.retrain)
            log = trained["log"]
            training[name] = {"config": configs[name].to_dict(), "best_epoch": trained["best_epoch"],
                              "reused": bool(trained.get("reused")),
                              "total_seconds": log.get("total_seconds"),
                              "epochs": [{k: v for k, v in row.items() if k != "metrics"}
                                         | {"val_metrics": row["metrics"]} for row in log["epochs"]]}
        with measured() as m:
            encoder = load_encoder(refs[name], **encoder_options.get(name, {}))
            same_kb = data.tune_kb is data.kb
            vectors = options.out / VECTORS_DIR / name
            chunk = recipe.get("chunk")
            found = encode_and_search(encoder, data.kb, [test.queries] + ([tune.queries] if same_kb else []),
                                       depth, options.batch_size, options.progress, vectors / "kb", chunk)
            runs[name] = found[0]
            train_runs[name] = found[1] if same_kb else encode_and_search(
                encoder, data.tune_kb, [tune.queries], depth, options.batch_size, options.progress,
                vectors / "tune-kb", chunk)[0]
            del encoder
            scores = _score(test.qrels, runs[name], options.ks, options, answers)
        cost = {**_cost(m, trained), "eval_vectors_reused": bool(runs[name].timings.get("vectors_reused")),
                "eval_encode_passages_s": runs[name].timings.get("encode_passages_s"),
                **({"eval_pieces": runs[name].timings.get("pieces")} if "chunk" in recipe else {})}
        rows.append({"name": name, "kind": "dense", "model": model_ref(refs[name]), "recipe": recipe,
                     "starts_from": recipe.get("start_from"), "unsupervised": bool(recipe.get("unsupervised")),
                     "seconds": round((cost["train_seconds"] or 0) + cost["eval_seconds"], 1), "cost": cost,
                     "training_reused": bool(trained and trained.get("reused")),
                     **scores})

    with measured() as m:
        runs["bm25"] = retrieve_with_bm25(data.kb, test.queries, depth, options.progress)
        train_runs["bm25"] = retrieve_with_bm25(data.tune_kb, tune.queries, depth, False)
        scores = _score(test.qrels, runs["bm25"], options.ks, options, answers)
    rows.append({"name": "bm25", "kind": "bm25", "library": "bm25s", "k1": 0.9, "b": 0.4,
                 "seconds": round(m.seconds, 1), "cost": _cost(m), **scores})

    # What a user with no labelled question gets from `dpr serve`'s default (hybrid) search over the
    # untrained encoder: the shipped fusion, no weight tuned on any question of this data. One per
    # zero-shot row of --model (one naming its own model may be a trained one), except chunked rows:
    # the server fuses passages before it groups them by document, which a by-document run cannot
    # reproduce (`dpr eval --index DIR --bm25 --hybrid interp` measures an index built with --chunk).
    label_free = [r["name"] for r in rows if r["kind"] == "dense" and r["recipe"].get("zero_shot")
                  and "model" not in r["recipe"] and "chunk" not in r["recipe"]]
    for zero_shot in label_free:
        fusion = FusionConfig()
        rows.append(_hybrid_row(f"hybrid ({zero_shot} + bm25, default {fusion_label(fusion)})", zero_shot, fusion,
                                runs, test.qrels, depth, options, answers,
                                {"fusion": {"chosen": fusion_choice(fusion), "tuned_on": None}, "no_labels": True}))

    # The best dense row by held-out Recall@5 (MRR@10 breaks ties): every row is in the table, so the
    # choice hides nothing; the fusion weight itself never sees a held-out question.
    best_dense = max((r for r in rows if r["kind"] == "dense"),
                     key=lambda r: (r["metrics"]["recall@5"]["value"], r["metrics"][f"mrr@{RANK_CUTOFF}"]["value"]))
    with measured() as tuned:
        tuning = tune_fusion(train_runs[best_dense["name"]], train_runs["bm25"], tune.qrels, depth)
    chosen = tuning["chosen"]
    chosen_fusion = (FusionConfig(method="interp", alpha=chosen["alpha_dense"]) if chosen["method"] == "interp"
                     else FusionConfig(method="rrf"))
    rows.append(_hybrid_row(f"hybrid ({best_dense['name']} + bm25, {fusion_label(chosen_fusion)})", best_dense["name"],
                            chosen_fusion, runs, test.qrels, depth, options, answers, {"fusion": tuning}, tuned.seconds))

    paired = add_paired_tests(rows, options.baselines, paired_metrics(options.ks), options.n_resamples,
                              options.seed)
    names = [f"recall@{k}" for k in options.ks] + [f"mrr@{RANK_CUTOFF}", f"ndcg@{RANK_CUTOFF}"]
    table = bench_table(rows, names, paired["baselines"])
    curves = {row["name"]: recall_curve(test.qrels, runs[row["name"]].run, CURVE_K) for row in rows}
    title = f"Recall@k on {Path(str(test.path)).name} ({len(test)} held-out queries, {len(data.kb)} passages)"
    png = plot_curves(curves, options.out / "recall_curves.png", title)
    files = [Path(options.train), Path(options.val), *options.extra_passages]
    report = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
        "options": options.to_dict(), "seed": options.seed, "n_resamples": options.n_resamples,
        "data": {**data.notes, "sha256": hash_paths(files)}, "recipes": recipes, "paired": paired,
        "cost_notes": COST_NOTES,
        "rows": rows, "table": table, "curves": {"k": list(range(1, CURVE_K + 1)), "recall": curves},
        "training": training, "fusion": tuning, "plot": str(png),
        "environment": library_versions(), "machine": machine, "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(options.out / "bench_recall.json", report)
    notes = table_notes(paired["baselines"], rows)
    (options.out / "bench_recall.md").write_text(f"{table}\n\n{notes}\n", encoding="utf-8")
    return report


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, BenchOptions)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    return dataclass_from_args(BenchOptions, args)


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
