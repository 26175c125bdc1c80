"""One evaluation from options to report: the library behind ``dpr eval``.

Systems: a dense retriever (a model over a knowledge base, a built index, or a running server), BM25
over the same knowledge base, and their fusion. Each becomes a column of the table and an entry of
the JSON report, which also records the data hashes, the model/index manifests, library versions,
the seed and the wall time.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from eval.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from eval.evalset import EvalSet, gold_coverage, load_eval_set, load_kb
from eval.evaluate import DEFAULT_KS, evaluate_run, format_table, table_metrics
from eval.fusion import RRF_K
from eval.report import hash_paths, library_versions
from eval.retrieve import Retrieval, describe_retrieval, fuse, retrieve_with_bm25
from retriever.config import check_choice

logger = logging.getLogger(__name__)

FUSIONS = ("rrf", "interp")


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate on which data. ``model`` with ``index`` overrides the index's recorded model."""

    data: Path
    split: str = "test"
    model: str | None = None
    index: Path | None = None
    url: str | None = None
    server_mode: str = "dense"             # the search mode asked of --url (its dense row by default)
    bm25: bool = False
    kb: tuple[Path, ...] = ()
    hybrid: str | None = None
    alpha: float = 0.5
    rrf_k: int = RRF_K
    ks: tuple[int, ...] = DEFAULT_KS
    batch_size: int = 64
    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    progress: bool = True

    def __post_init__(self) -> None:
        if not (self.model or self.index or self.url or self.bm25):
            raise ValueError("nothing to evaluate: give --model, --index, --url and/or --bm25")
        if self.url and (self.model or self.index):
            raise ValueError("--url evaluates a running server: it cannot be combined with --model or --index")
        if self.kb and (self.index or self.url) and not self.bm25:
            raise ValueError("--kb is not used with --index or --url (they hold their own knowledge base) "
                             "unless --bm25 is given")
        if self.hybrid is not None:
            check_choice("--hybrid", self.hybrid, FUSIONS)
            if not (self.bm25 and (self.model or self.index or self.url)):
                raise ValueError("--hybrid fuses a dense run with BM25: give --bm25 and --model/--index/--url")
        if self.server_mode not in ("dense", "bm25", "hybrid"):
            raise ValueError(f"--server-mode must be dense, bm25 or hybrid, got {self.server_mode!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"--alpha must be in [0, 1], got {self.alpha}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"--k needs positive cut-offs, got {list(self.ks)}")
        object.__setattr__(self, "ks", tuple(sorted(set(self.ks))))
        if self.batch_size < 1 or self.n_resamples < 1:
            raise ValueError("--batch-size and --resamples must be >= 1")

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


def _dense(options: EvalOptions, evalset: EvalSet, passages: list | None) -> tuple[Retrieval, dict[str, Any]]:
    k = max(options.ks)
    if options.url:
        from eval.client import retrieve_with_server, server_info

        info = {"source": "server", "server": server_info(options.url), "mode": options.server_mode}
        return retrieve_with_server(options.url, evalset.queries, k, progress=options.progress,
                                    mode=options.server_mode), info
    if options.index:
        from indexer import ManifestMismatch, SearchIndex, check_encoder
        from eval.retrieve import retrieve_with_index

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
            present = {pid for pid in evalset.relevant_ids() if index.passage(pid) is not None}
            info = {"source": "index", "index_dir": str(Path(options.index).resolve()), "model_ref": ref,
                    "index": index.summary(), "manifest": index.manifest,
                    "gold_in_kb": gold_coverage(evalset, present)}
            retrieval = retrieve_with_index(index, encoder, evalset.queries, k, options.batch_size,
                                            options.progress)
        finally:
            index.close()
        return retrieval, info
    from eval.retrieve import retrieve_with_model
    from retriever.encoder import model_ref

    encoder = _load_encoder(options.model)
    info = {"source": "model", "model_ref": model_ref(options.model), "model": encoder.describe()}
    return retrieve_with_model(encoder, passages, evalset.queries, k, options.batch_size, options.progress), info


def run_evaluation(options: EvalOptions, command: str | None = None) -> dict[str, Any]:
    """Evaluate every requested system; the returned report is JSON-able and holds the table."""
    started = time.perf_counter()
    evalset = load_eval_set(options.data, options.split)
    k = max(options.ks)
    report: dict[str, Any] = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command, "options": options.to_dict(), "seed": options.seed,
        "n_resamples": options.n_resamples, "ks": list(options.ks),
        "data": {"path": str(options.data), "layout": evalset.layout, "split": evalset.split,
                 "n_queries": len(evalset), "has_answers": evalset.has_answers,
                 "sha256": hash_paths(evalset.files)},
    }
    passages = None
    if options.bm25 or (options.model and not options.index):
        passages, note = load_kb(evalset, options.kb)
        report["knowledge_base"] = {
            "source": note, "count": len(passages),
            "sha256": hash_paths(options.kb) if options.kb else report["data"]["sha256"],
            "gold_in_kb": gold_coverage(evalset, {p.pid for p in passages}),
        }
        logger.info("knowledge base: %d passages, %s", len(passages), note)

    runs: list[tuple[str, Retrieval, dict[str, Any]]] = []
    if options.model or options.index or options.url:
        name = "dense" if not options.url or options.server_mode == "dense" else f"server-{options.server_mode}"
        runs.append((name, *_dense(options, evalset, passages)))
    if options.bm25:
        runs.append(("bm25", retrieve_with_bm25(passages, evalset.queries, k, options.progress),
                     {"source": "bm25", "library": "bm25s", "k1": 0.9, "b": 0.4}))
    if options.hybrid:
        hybrid = fuse(runs[0][1], runs[1][1], options.hybrid, k, alpha=options.alpha, rrf_k=options.rrf_k)
        params = {"rrf_k": options.rrf_k} if options.hybrid == "rrf" else {"alpha_dense": options.alpha}
        runs.append((f"hybrid-{options.hybrid}", hybrid, {"source": "fusion", "method": options.hybrid, **params}))

    systems, rows = [], []
    for name, retrieval, info in runs:
        result = evaluate_run(evalset.qrels, retrieval.run, options.ks,
                              answers=evalset.answers if evalset.has_answers else None,
                              texts=retrieval.texts or None, n_resamples=options.n_resamples, seed=options.seed)
        systems.append({"name": name, **info, "timing": describe_retrieval(retrieval), **result})
        rows.append((name, result))
    multi = any(sum(g > 0 for g in judged.values()) > 1 for judged in evalset.qrels.values())
    report["systems"] = systems
    report["table"] = format_table(rows, table_metrics(rows, multi_relevant=multi))
    report["environment"] = library_versions()
    report["wall_seconds"] = round(time.perf_counter() - started, 3)
    return report
