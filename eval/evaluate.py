"""Headline metrics of a run with bootstrap confidence intervals, and the table that shows them."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from common import metrics
from common.answers import answer_hits_at_k, answer_matches
from eval.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_ci

DEFAULT_KS = (1, 5, 10, 20, 100)
RANK_CUTOFF = 10            # MRR@10 and nDCG@10, as in MS MARCO and BEIR


def per_query_metrics(qrels: metrics.Qrels, run: metrics.Run, ks: Sequence[int] = DEFAULT_KS,
                      answers: Mapping[str, Sequence[str]] | None = None,
                      texts: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict[str, float]]:
    """``{metric: {qid: value}}``; answer metrics only when ``answers`` and ``texts`` are given."""
    if not ks:
        raise ValueError("no cut-off k given")
    out = {f"recall@{k}": metrics.hits_at_k(qrels, run, k) for k in ks}
    out[f"mrr@{RANK_CUTOFF}"] = metrics.reciprocal_rank_per_query(qrels, run, RANK_CUTOFF)
    out[f"ndcg@{RANK_CUTOFF}"] = metrics.ndcg_per_query(qrels, run, RANK_CUTOFF)
    out[f"full_recall@{max(ks)}"] = metrics.full_recall_per_query(qrels, run, max(ks))
    if answers is not None and texts is not None:
        # Only queries that are also judged: the answer rows then describe the same question set.
        judged = {qid: a for qid, a in answers.items() if qid in qrels}
        matches = answer_matches(judged, texts)
        if matches:
            out.update({f"answer_recall@{k}": answer_hits_at_k(matches, k) for k in ks})
    return out


def evaluate_run(qrels: metrics.Qrels, run: metrics.Run, ks: Sequence[int] = DEFAULT_KS,
                 answers: Mapping[str, Sequence[str]] | None = None,
                 texts: Mapping[str, Sequence[str]] | None = None,
                 n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                 keep_per_query: bool = False) -> dict[str, Any]:
    """``{"n_queries", "metrics": {name: {"value", "ci_low", "ci_high", "n"}}}`` (fractions in [0, 1]).

    ``n_queries`` counts queries with a relevant passage; a query missing from ``run`` scores 0.
    ``keep_per_query`` adds ``"per_query": {name: {qid: value}}`` for the ranking metrics (not answer
    match), what a paired test between two reports needs (``dpr eval compare``).
    """
    per_query = per_query_metrics(qrels, run, ks, answers, texts)
    n_queries = len(per_query[f"recall@{ks[0]}"])
    if n_queries == 0:
        raise ValueError("no query has a relevant passage: nothing to evaluate")
    results = {}
    for name, values in per_query.items():
        mean, low, high = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
        results[name] = {"value": mean, "ci_low": low, "ci_high": high, "n": len(values)}
    out: dict[str, Any] = {"n_queries": n_queries, "metrics": results}
    if keep_per_query:
        out["per_query"] = {name: {q: round(float(v), 6) for q, v in values.items()}
                            for name, values in per_query.items() if not name.startswith("answer_")}
    return out


def _cell(result: Mapping[str, float] | None) -> str:
    if result is None:
        return "-"
    return f"{100 * result['value']:.1f} ({100 * result['ci_low']:.1f}-{100 * result['ci_high']:.1f})"


def format_table(rows: Sequence[tuple[str, Mapping[str, Any]]], names: Sequence[str] | None = None) -> str:
    """A Markdown table, metrics down and systems across: ``value (95% CI)`` in percent.

    ``rows`` are ``(system name, evaluate_run result)``. ``full_recall`` is shown only when some query
    has several relevant passages (otherwise it equals Recall@k); answer rows only when present.
    """
    if not rows:
        raise ValueError("nothing to tabulate")
    if names is None:
        seen: dict[str, None] = {}
        for _, result in rows:
            seen.update(dict.fromkeys(result["metrics"]))
        names = list(seen)
    header = ["metric", *(f"{name} (n={result['n_queries']})" for name, result in rows)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * len(rows)) + "|"]
    for metric in names:
        cells = [_cell(result["metrics"].get(metric)) for _, result in rows]
        lines.append(f"| {_label(metric)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _label(metric: str) -> str:
    name, _, k = metric.partition("@")
    pretty = {"recall": "Recall", "mrr": "MRR", "ndcg": "nDCG", "full_recall": "all-relevant Recall",
              "answer_recall": "answer-match Recall"}.get(name, name)
    return f"{pretty}@{k}" if k else pretty


def table_metrics(rows: Sequence[tuple[str, Mapping[str, Any]]], multi_relevant: bool) -> list[str]:
    """The metric keys worth a table row for these results (see :func:`format_table`)."""
    names: dict[str, None] = {}
    for _, result in rows:
        names.update(dict.fromkeys(result["metrics"]))
    return [n for n in names if multi_relevant or not n.startswith("full_recall@")]
