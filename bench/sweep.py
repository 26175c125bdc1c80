"""``python -m bench.sweep``: finished ``dpr train`` runs side by side, by their validation curves.

For choosing a recipe on a dev split before a benchmark run reports held-out figures. Each run
directory's ``train_config.json`` says what the run changed (shown against ``--baseline``, one of the
runs), its ``train_log.json`` the validation metric after every epoch (epoch 0: the starting model),
the epoch kept and the whole run's time. The runs must share their validation questions, passages
and metric; what they train on may differ (unsupervised runs make their own pseudo queries).
Writes ``--json``, which ``python -m bench.docs`` renders (docs/training.md).

``--also-split SPLIT`` scores each run's kept model on another qrels split of the validation folder
too (nDCG@10, encoded at the run's own precision). An unsupervised run trains on no question at all,
so its recipe can be chosen on every non-test question, training ones included: a few dozen dev
questions alone rank recipes a point or two apart by noise.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.files import read_json, write_json

logger = logging.getLogger(__name__)

# Fields that name where a run read and wrote, not how it trained.
PLACE_FIELDS = ("out", "train", "val", "kb", "train_split", "val_split")


def read_run(run_dir: Path) -> dict[str, Any]:
    """One finished run: its config, validation curve, kept epoch and time."""
    from retriever.train_config import TRAIN_CONFIG_FILE, TRAIN_LOG_FILE

    config, log = read_json(run_dir / TRAIN_CONFIG_FILE), read_json(run_dir / TRAIN_LOG_FILE)
    if not log.get("finished"):
        raise ValueError(f"{run_dir}: the training did not finish (no finished train_log.json)")
    metric = log["best_metric"]
    return {"name": run_dir.name, "dir": str(run_dir), "config": config, "metric": metric,
            "by_epoch": [round(100 * row["metrics"][metric], 2) for row in log["epochs"]],
            "best_epoch": log["best_epoch"], "best": round(100 * log["best_value"], 2),
            "minutes": round(log["total_seconds"] / 60, 1), "precision": log.get("precision"),
            "data": log["data"], "started_at": log["started_at"]}


def differences(config: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """The training fields in which ``config`` differs from ``baseline`` (places left out)."""
    return {k: v for k, v in config.items() if k not in PLACE_FIELDS and baseline.get(k) != v}


def split_ndcg(run: dict[str, Any], split: str, k: int = 10) -> dict[str, Any]:
    """nDCG@k of ``run``'s kept model on ``split`` of its validation folder, ranked against the same
    knowledge base its validation used (its --kb, else the folder's corpus); per-query values kept."""
    from common.data import load_corpus
    from common.metrics import ndcg_per_query
    from eval.evalset import load_eval_set
    from eval.retrieve import exact_search
    from retriever.encoder import DualEncoder

    config = run["config"]
    kb = load_corpus(list(config.get("kb") or [config["val"]]))
    evalset = load_eval_set(config["val"], split)
    encoder = DualEncoder.load(run["dir"])
    encoder.set_precision(run.get("precision") or "fp32")
    p_emb = encoder.encode_passages(kb)                                            # [P, D]
    q_emb = encoder.encode_queries(list(evalset.queries.values()))                 # [Q, D]
    _, top = exact_search(q_emb, p_emb, k)                                         # [Q, k]
    ranked = {qid: [kb[int(j)].pid for j in row] for qid, row in zip(evalset.queries, top)}
    per_query = ndcg_per_query(evalset.qrels, ranked, k)
    return {"split": split, "queries": len(per_query),
            "ndcg@10": round(100 * sum(per_query.values()) / max(len(per_query), 1), 2),
            "per_query": {q: round(v, 5) for q, v in per_query.items()}}


def sweep(run_dirs: Sequence[Path], baseline: str | None = None, command: str | None = None,
          also_splits: Sequence[str] = ()) -> dict[str, Any]:
    from bench.speed import machine_info

    runs = [read_run(Path(d)) for d in run_dirs]
    if not runs:
        raise ValueError("no run directories given")
    names = [r["name"] for r in runs]
    base = runs[0] if baseline is None else next((r for r in runs if r["name"] == baseline), None)
    if base is None:
        raise ValueError(f"--baseline {baseline!r} is none of the runs ({', '.join(names)})")
    # The training data may differ (pseudo queries are part of what an unsupervised sweep varies); the
    # validation questions and passages may not, or the curves do not compare.
    if len({r["metric"] for r in runs}) > 1 or len({(r["data"]["val"], r["data"]["val_kb"]) for r in runs}) > 1:
        raise ValueError("the runs differ in their validation metric or data: their curves do not compare")
    for run in runs:
        run["changes"] = differences(run["config"], base["config"])
        run["also"] = [split_ndcg(run, split) for split in also_splits]
    return {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
            "baseline": base["name"], "metric": base["metric"], "data": base["data"], "runs": runs,
            "machine": machine_info()}


def sweep_table(report: dict[str, Any]) -> str:
    metric = report["metric"].replace("ndcg@", "nDCG@").replace("recall@", "R@")
    also = [(a["split"], a["queries"]) for a in report["runs"][0].get("also", [])]
    extra = "".join(f" kept model, nDCG@10 on {split} ({n}) |" for split, n in also)
    lines = [f"| run | changes from {report['baseline']} | dev {metric} by epoch (0: start) | kept | time |{extra}",
             "|---|---|---|---|---|" + "---|" * len(also)]
    for run in report["runs"]:
        changes = ", ".join(f"{k} {v}" for k, v in run["changes"].items()) or "-"
        curve = " → ".join(f"{v:.1f}" for v in run["by_epoch"])
        cells = "".join(f" {a['ndcg@10']:.1f} |" for a in run.get("also", []))
        lines.append(f"| {run['name']} | {changes} | {curve} | epoch {run['best_epoch']}: {run['best']:.1f} | "
                     f"{run['minutes']:.1f} min |{cells}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished `dpr train --out` directories")
    parser.add_argument("--baseline", help="the run the others are described against (default: the first)")
    parser.add_argument("--json", type=Path, required=True, help="where the sweep's JSON goes")
    parser.add_argument("--also-split", action="append", default=[], metavar="SPLIT",
                        help="also score each kept model on this qrels split of the validation folder (repeatable)")
    args = parser.parse_args(argv)
    report = sweep(args.runs, args.baseline, "python -m bench.sweep " + shlex.join(argv or sys.argv[1:]),
                   args.also_split)
    write_json(args.json, report)
    print(sweep_table(report))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
