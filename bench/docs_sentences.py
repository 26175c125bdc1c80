"""The sentence-index figures in docs/documents.md and the README, from two ``dpr eval --out`` reports
over the same held-out queries: an index built with ``--chunk sentences:1`` (dense, BM25, hybrid) and
the same model over whole passages. Every row is paired-tested against whole passages, dense."""
from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eval.compare import _system, compare_systems, p_clause

METRICS = ("ndcg@10", "recall@5")
# (report, system, label): the baseline first.
ROWS = (("whole", "dense", "whole passages, dense"),
        ("whole", "hybrid-interp", "whole passages, hybrid"),
        ("sentences", "dense", "`sentences:1`, dense"),
        ("sentences", "hybrid-interp", "`sentences:1`, hybrid"))


def sentence_index_block(sentences: Mapping[str, Any] | None, whole: Mapping[str, Any] | None,
                         short: bool = False) -> str:
    """The table (``short``: nDCG@10 only, for the README) and the two commands."""
    if sentences is None or whole is None:
        return "No sentence-index run published yet.\n"
    reports = {"sentences": sentences, "whole": whole}
    base = _system(whole, "dense", "whole")
    metrics = METRICS[:1] if short else METRICS
    names = {"ndcg@10": "nDCG@10", "recall@5": "R@5"}
    head = " | ".join(f"{names[m]} (95% CI) | vs whole, dense (paired)" for m in metrics)
    lines = [f"| MiniLM, untrained | {head} |", "|---" * (1 + 2 * len(metrics)) + "|"]
    for which, name, label in ROWS:
        system = _system(reports[which], name, which)
        vs = {row["metric"]: row for row in compare_systems(system, base, list(metrics))} if system is not base else {}
        cells = []
        for m in metrics:
            value = system["metrics"][m]
            cells.append(f"{100 * value['value']:.1f} ({100 * value['ci_low']:.1f}-{100 * value['ci_high']:.1f})")
            cells.append("-" if m not in vs else f"{100 * vs[m]['diff']:+.1f} ({p_clause(vs[m]['p'])})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    n = base["n_queries"]
    index = _system(sentences, "dense", "sentences")
    # The index as the eval command named it (index_dir is absolute, so it names this checkout's path).
    words = shlex.split(sentences["command"])
    out = words[words.index("--index") + 1] if "--index" in words else Path(index["index_dir"]).name
    build = (f"dpr index --model {index['index']['model']} --kb {sentences['data']['path']}/corpus.jsonl "
             f"--chunk {index['index']['chunk']} --out {out}")
    when = str(sentences.get("created_at", ""))[:10]
    return ("\n".join(lines) + f"\n\n{n} held-out claims; a document ranks by its best passage. Commands (run {when}): "
            f"`{build}`, then `{sentences['command']}`; `{whole['command']}`. JSON: `docs/results/eval-scifact-*.json`.\n")


def sentence_index_line(sentences: Mapping[str, Any] | None, whole: Mapping[str, Any] | None) -> str:
    """The README's advice to users without labelled questions, with the figures behind it."""
    if sentences is None or whole is None:
        return "No sentence-index run published yet.\n"
    base, best = _system(whole, "dense", "whole"), _system(sentences, "hybrid-interp", "sentences")
    [vs] = compare_systems(best, base, ["ndcg@10"])
    return (f"No labelled questions? Index by sentences, search hybrid (`--chunk sentences:1`, `\"group_by\": \"doc\"`): "
            f"MiniLM goes from {100 * vs['b']:.1f} to {100 * vs['a']:.1f} nDCG@10 here ({100 * vs['diff']:+.1f}, "
            f"{p_clause(vs['p'])}; [more](docs/documents.md#sentence-windows)); "
            "`dpr train --unsupervised` has not beaten MiniLM.\n")
