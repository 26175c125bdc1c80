"""The benchmark's outputs besides JSON: the classic Markdown table and the Recall@k curves (PNG)."""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common import metrics

logger = logging.getLogger(__name__)


def recall_curve(qrels: metrics.Qrels, run: metrics.Run, max_k: int) -> list[float]:
    """Recall@k for k = 1..max_k (share of queries with a relevant passage in the top k)."""
    per_query = metrics._per_query(qrels)
    if not per_query:
        raise ValueError("no query has a relevant passage: no recall curve")
    first_hit = []
    for qid, rel in per_query.items():
        ranked = run.get(qid, [])[:max_k]
        first_hit.append(next((rank for rank, pid in enumerate(ranked, start=1) if pid in rel), max_k + 1))
    return [sum(r <= k for r in first_hit) / len(first_hit) for k in range(1, max_k + 1)]


def _cell(result: Mapping[str, float]) -> str:
    return f"{100 * result['value']:.1f} ({100 * result['ci_low']:.1f}-{100 * result['ci_high']:.1f})"


def markdown_table(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> str:
    """Systems down, metrics across (the classic layout); cells are ``value (95% CI)`` in percent."""
    labels = [n.replace("recall@", "R@").replace("ndcg@", "nDCG@").replace("mrr@", "MRR@") for n in names]
    lines = ["| system | " + " | ".join(labels) + " |", "|---|" + "|".join([":---:"] * len(names)) + "|"]
    for row in rows:
        cells = [_cell(row["metrics"][n]) if n in row["metrics"] else "-" for n in names]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(curves: Mapping[str, Sequence[float]], path: str | Path, title: str) -> Path:
    """Draw Recall@k against k (log scale) for every system into a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")                       # headless: no display on servers or in CI
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        for name, curve in curves.items():
            ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], label=name, linewidth=1.6)
        ax.set_xscale("log")
        ax.set_xlabel("k (passages retrieved)")
        ax.set_ylabel("Recall@k (%)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, format="png", bbox_inches="tight")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        plt.close(fig)
    logger.info("wrote %s", path)
    return path
