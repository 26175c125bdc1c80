"""One evaluation from options to report: the library behind ``dpr eval``.

Systems: a dense retriever (a model over a knowledge base, a built index, or a running server), BM25
over the same knowledge base, and their fusion. Each becomes a column of the table and an entry of
the JSON report, which also records the data hashes, the model/index manifests, library versions,
the seed and the wall time. With ``--index`` (and no ``--kb``), BM25 and the hybrid are the index's
own (its ``bm25/``, :meth:`LiveIndex.hybrid_search` with the shared :class:`FusionConfig`), so
``dpr eval --index`` measures exactly what ``dpr serve`` of that index answers.

With two or more systems, each is paired-tested against the first (or ``--baseline``) on the same
queries and the table's metrics: ``systems[i]["vs"][baseline][metric] = {diff, low, high, p}``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.choices import FUSION_METHODS, SEARCH_MODES, FusionMethod, SearchMode, check_choice
from common.flags import opt
from common.fusion import FusionConfig
from eval.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from eval.evalset import EvalSet, gold_coverage, load_eval_set, load_kb
from eval.evaluate import DEFAULT_KS, evaluate_run, format_table, table_metrics
from eval.report import hash_paths, library_versions
from eval.retrieve import Retrieval, describe_retrieval, fuse, retrieve_with_bm25

logger = logging.getLogger(__name__)

_FUSION = FusionConfig()



@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate on which data. ``model`` with ``index`` overrides the index's recorded model."""

    data: Path = opt(help="questions: an nq_oracle/DPR JSON file, or a BEIR folder (with --split)", metavar="PATH")
    split: str = opt("test", "BEIR qrels split: qrels/<split>.tsv")
    model: str | None = opt(None, "a saved dual-encoder directory or a base alias such as 'minilm' (with --index: "
                            "use it instead of the model the index records)", group="what to evaluate")
    index: Path | None = opt(None, "a built index directory (dpr index); with --bm25 and no --kb, its own BM25 and "
                             "hybrid: what `dpr serve` of it answers", group="what to evaluate", metavar="DIR")
    url: str | None = opt(None, "a running search server, e.g. http://127.0.0.1:8000", group="what to evaluate")
    server_mode: SearchMode = opt("dense", "with --url: the search mode to ask the server for",
                                  group="what to evaluate")
    bm25: bool = opt(False, "BM25 over the knowledge base (with --index: the index's own)", group="what to evaluate")
    kb: tuple[Path, ...] = opt((), "knowledge base for --model/--bm25: JSONL (id/_id,title,text), a BEIR folder, or "
                               "nq_oracle JSON (its gold passages); repeat for several. Default: the --data file's "
                               "own gold passages (BEIR: its corpus)", action="append", metavar="PATH",
                               show_default=False)
    hybrid: FusionMethod | None = opt(None, "also fuse the dense run with BM25 (needs --bm25): score interpolation "
                                      "or reciprocal rank fusion", group="hybrid")
    alpha: float = opt(_FUSION.alpha, "dense weight of --hybrid interp", group="hybrid")
    rrf_k: int = opt(_FUSION.rrf_k, "k of --hybrid rrf", group="hybrid")
    depth: int = opt(_FUSION.depth, "candidates from each side before fusing", group="hybrid")
    filter: str | None = opt(None, "with --index or --url: only passages whose metadata match this JSON filter, "
                             "e.g. '{\"year\": {\"gte\": 2010}}' (as in POST /search)", metavar="JSON")
    ks: tuple[int, ...] = opt(DEFAULT_KS, "Recall@k cut-offs", flag="--k", metavar="K,K,...")
    batch_size: int = opt(64, "texts per encoder batch")
    n_resamples: int = opt(DEFAULT_RESAMPLES, "bootstrap resamples", flag="--resamples")
    seed: int = opt(DEFAULT_SEED, "bootstrap seed")
    progress: bool = opt(True, "progress bars")
    baseline: str | None = opt(None, "with several systems: the one each other is paired-tested against (mean "
                               "difference, 95% bootstrap interval, randomisation-test p); default: the first "
                               "(dense, server-MODE, bm25 or hybrid-METHOD)", metavar="SYSTEM")

    def __post_init__(self) -> None:
        if not (self.model or self.index or self.url or self.bm25):
            raise ValueError("nothing to evaluate: give --model, --index, --url and/or --bm25")
        if self.url and (self.model or self.index):
            raise ValueError("--url evaluates a running server: it cannot be combined with --model or --index")
        if self.kb and (self.index or self.url) and not self.bm25:
            raise ValueError("--kb is not used with --index or --url (they hold their own knowledge base) "
                             "unless --bm25 is given")
        if self.hybrid is not None:
            check_choice("--hybrid", self.hybrid, FUSION_METHODS)
            if not (self.bm25 and (self.model or self.index or self.url)):
                raise ValueError("--hybrid fuses a dense run with BM25: give --bm25 and --model/--index/--url")
        check_choice("--server-mode", self.server_mode, SEARCH_MODES)
        if self.filter is not None:
            if not (self.index or self.url):
                raise ValueError("--filter needs --index or --url (metadata lives in an index)")
            try:
                spec = json.loads(self.filter)
            except ValueError as e:
                raise ValueError(f"--filter is not JSON: {e}") from None
            if not isinstance(spec, dict):
                raise ValueError(f"--filter must be a JSON object, got {type(spec).__name__}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"--alpha must be in [0, 1], got {self.alpha}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"--k needs positive cut-offs, got {list(self.ks)}")
        object.__setattr__(self, "ks", tuple(sorted(set(self.ks))))
        if self.batch_size < 1 or self.n_resamples < 1:
            raise ValueError("--batch-size and --resamples must be >= 1")
        if self.baseline is not None and self.baseline not in self.system_names:
            raise ValueError(f"--baseline {self.baseline}: not a system of this run "
                             f"(it has {', '.join(self.system_names)})")

    @property
    def system_names(self) -> list[str]:
        """The systems this run evaluates, in table order (:func:`retrieve_systems` names them so)."""
        names = []
        if self.index or self.model or self.url:
            names.append("dense" if not self.url or self.server_mode == "dense" else f"server-{self.server_mode}")
        if self.bm25:
            names.append("bm25")
        if self.hybrid:
            names.append(f"hybrid-{self.hybrid}")
        return names

    @property
    def filter_spec(self) -> dict[str, Any] | None:
        return None if self.filter is None else json.loads(self.filter)

    @property
    def fusion(self) -> FusionConfig:
        """How ``--hybrid`` fuses (the server's defaults unless overridden)."""
        return FusionConfig(method=self.hybrid or _FUSION.method, alpha=self.alpha, rrf_k=self.rrf_k,
                            depth=self.depth)

    @property
    def index_bm25(self) -> bool:
        """BM25 (and the hybrid) come from the index itself: ``--index --bm25`` without ``--kb``."""
        return bool(self.index and self.bm25 and not self.kb)

    def to_dict(self) -> dict[str, Any]:
        return {key: (str(v) if isinstance(v, Path) else [str(p) for p in v] if key == "kb" else v)
                for key, v in dataclasses.asdict(self).items()}


def _load_encoder(ref: str) -> Any:
    from retriever.encoder import load_encoder

    try:
        return load_encoder(ref)
    except OSError as e:
        # transformers reports a missing local dir / unreachable hub name as an OSError.
        raise FileNotFoundError(f"--model {ref}: not a saved model directory, checkpoint or known alias ({e})") \
            from None


def _index_systems(options: EvalOptions, evalset: EvalSet, fetch: int) -> list[tuple[str, Retrieval, dict[str, Any]]]:
    """Dense, and with ``--bm25`` the index's own BM25 and hybrid, from one opened index."""
    from eval.retrieve import retrieve_with_index
    from indexer import ManifestMismatch, SearchIndex, check_encoder
    from indexer.live_index import LiveIndex

    k = max(options.ks)
    index = SearchIndex.open(options.index)
    try:
        ref = options.model or index.model_dir
        if not ref:
            raise ValueError(f"{options.index}: the index records no model_dir; pass --model")
        encoder = _load_encoder(ref)
        try:
            check_encoder(index.manifest, encoder)
        except ManifestMismatch as e:
            raise ManifestMismatch(f"{options.index}: {e}", e.differences) from None
        live = LiveIndex(index)
        flt = live.parse_filter(options.filter_spec)
        # Documents cut into passages: qrels name documents, and any passage of one is a hit on it.
        by_doc = live.chunk is not None
        present = {pid for pid in evalset.relevant_ids()
                   if (live.has_document(pid) if by_doc else live.passage(pid) is not None)}
        info = {"source": "index", "index_dir": str(Path(options.index).resolve()), "model_ref": ref,
                "index": {**index.summary(), **live.summary()}, "manifest": index.manifest,
                "gold_in_kb": gold_coverage(evalset, present), "units": "documents" if by_doc else "passages",
                "filter": options.filter_spec}
        out = [("dense", retrieve_with_index(live, encoder, evalset.queries, fetch, options.batch_size,
                                             options.progress, flt=flt, by_document=by_doc).cut(k), info)]
        if options.index_bm25:
            if index.bm25 is None:
                raise ValueError(f"{options.index}: the index has no BM25 index (built with --no-bm25 or before "
                                 "BM25 existed); rebuild it, or pass --kb to build BM25 over a knowledge base")
            out.append(("bm25", retrieve_with_index(live, None, evalset.queries, k, mode="bm25", flt=flt,
                                                    by_document=by_doc),
                        {"source": "index bm25", "index_dir": info["index_dir"], **(index.manifest.get("bm25") or {})}))
            if options.hybrid:
                fusion = options.fusion
                out.append((f"hybrid-{options.hybrid}",
                            retrieve_with_index(live, encoder, evalset.queries, k, options.batch_size,
                                                options.progress, mode="hybrid", fusion=fusion, flt=flt,
                                                by_document=by_doc),
                            {"source": "index hybrid", **fusion.describe()}))
    finally:
        index.close()
    return out


def _dense(options: EvalOptions, evalset: EvalSet, passages: list | None, fetch: int) -> tuple[Retrieval, dict[str, Any]]:
    if options.url:
        from eval.client import retrieve_with_server, server_info

        info = {"source": "server", "server": server_info(options.url), "mode": options.server_mode}
        return retrieve_with_server(options.url, evalset.queries, fetch, progress=options.progress,
                                    mode=options.server_mode, flt=options.filter_spec), info
    from eval.retrieve import retrieve_with_model
    from retriever.encoder import model_ref

    encoder = _load_encoder(options.model)
    info = {"source": "model", "model_ref": model_ref(options.model), "model": encoder.describe()}
    return retrieve_with_model(encoder, passages, evalset.queries, fetch, options.batch_size, options.progress), info


def retrieve_systems(options: EvalOptions, evalset: EvalSet,
                     passages: list | None) -> list[tuple[str, Retrieval, dict[str, Any]]]:
    """``(name, retrieval, info)`` of every system ``options`` asks for, in table order."""
    k = max(options.ks)
    # The hybrid fuses the top fusion.depth of each side, as the server does, then keeps k.
    fetch = max(k, options.depth) if options.hybrid else k
    if options.index:
        runs = _index_systems(options, evalset, fetch)
        if options.index_bm25:
            return runs
        dense = runs[0][1]
    else:
        runs = []
        dense = None
        if options.model or options.url:
            dense, info = _dense(options, evalset, passages, fetch)
            name = "dense" if not options.url or options.server_mode == "dense" else f"server-{options.server_mode}"
            runs.append((name, dense.cut(k), info))
    if options.bm25:
        sparse = retrieve_with_bm25(passages, evalset.queries, fetch, options.progress)
        runs.append(("bm25", sparse.cut(k), {"source": "bm25", "library": "bm25s", "k1": 0.9, "b": 0.4}))
        if options.hybrid and dense is not None:
            fusion = options.fusion
            runs.append((f"hybrid-{options.hybrid}", fuse(dense, sparse, k, fusion),
                         {"source": "fusion", **fusion.describe()}))
    return runs


def compare_with_baseline(systems: list[dict[str, Any]], baseline: str, n_resamples: int, seed: int,
                          metrics: list[str] | None = None) -> dict[str, Any]:
    """Pair every system but ``baseline`` with it, on each of ``metrics`` (default: all) that every
    system has per query (answer match has none); each gets
    ``vs = {baseline: {metric: {"diff", "low", "high", "p"}}}``. Returns the report's ``baseline``,
    ``paired`` (how) and ``comparison_table`` entries."""
    from eval.compare import RANDOMIZATION_RESAMPLES, format_vs, paired_stats

    base = next((s for s in systems if s["name"] == baseline), None)
    if base is None:
        raise ValueError(f"--baseline {baseline}: no such system (systems: {[s['name'] for s in systems]})")
    metrics = [m for m in (metrics or base["per_query"]) if all(m in s["per_query"] for s in systems)]
    for system in systems:
        if system is not base:
            system["vs"] = {baseline: paired_stats(system["per_query"], base["per_query"], metrics,
                                                   n_resamples=n_resamples, seed=seed)}
    return {"baseline": baseline, "comparison_table": format_vs(systems, baseline, metrics),
            "paired": {"baseline": baseline, "metrics": metrics, "bootstrap_resamples": n_resamples,
                       "randomization_resamples": max(n_resamples, RANDOMIZATION_RESAMPLES), "seed": seed,
                       "confidence": 0.95, "diff": "system - baseline, per query, then averaged"}}


def run_evaluation(options: EvalOptions, command: str | None = None, run_out: Path | None = None,
                   qrels_out: Path | None = None) -> dict[str, Any]:
    """Evaluate every requested system; the returned report is JSON-able and holds the table.

    ``run_out``: also write each system's run as a TREC run file (:func:`eval.trec.run_paths`);
    ``qrels_out``: the qrels as a TREC qrels file.
    """
    started = time.perf_counter()
    evalset = load_eval_set(options.data, options.split)
    report: dict[str, Any] = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command, "options": options.to_dict(), "seed": options.seed,
        "n_resamples": options.n_resamples, "ks": list(options.ks),
        "data": {"path": str(options.data), "layout": evalset.layout, "split": evalset.split,
                 "n_queries": len(evalset), "has_answers": evalset.has_answers,
                 "sha256": hash_paths(evalset.files)},
    }
    passages = None
    if (options.bm25 and not options.index_bm25) or (options.model and not options.index):
        passages, note = load_kb(evalset, options.kb)
        report["knowledge_base"] = {
            "source": note, "count": len(passages),
            "sha256": hash_paths(options.kb) if options.kb else report["data"]["sha256"],
            "gold_in_kb": gold_coverage(evalset, {p.pid for p in passages}),
        }
        logger.info("knowledge base: %d passages, %s", len(passages), note)

    runs = retrieve_systems(options, evalset, passages)

    systems, rows = [], []
    for name, retrieval, info in runs:
        result = evaluate_run(evalset.qrels, retrieval.run, options.ks,
                              answers=evalset.answers if evalset.has_answers else None,
                              texts=retrieval.texts or None, n_resamples=options.n_resamples, seed=options.seed,
                              keep_per_query=True)
        systems.append({"name": name, **info, "timing": describe_retrieval(retrieval), **result})
        rows.append((name, result))
    multi = any(sum(g > 0 for g in judged.values()) > 1 for judged in evalset.qrels.values())
    report["systems"] = systems
    shown = table_metrics(rows, multi_relevant=multi)
    if len(systems) > 1:
        report.update(compare_with_baseline(systems, options.baseline or systems[0]["name"],
                                            options.n_resamples, options.seed, shown))
    if run_out is not None:
        from eval.trec import run_paths, write_run

        paths = run_paths(run_out, [name for name, _, _ in runs])
        for name, retrieval, _ in runs:
            write_run(paths[name], retrieval.run, retrieval.scores, tag=name)
        report["trec_runs"] = {name: str(path) for name, path in paths.items()}
    if qrels_out is not None:
        from eval.trec import write_qrels

        report["trec_qrels"] = str(write_qrels(qrels_out, evalset.qrels))
    report["table"] = format_table(rows, shown)
    report["environment"] = library_versions()
    report["wall_seconds"] = round(time.perf_counter() - started, 3)
    return report
