"""``python -m bench.sweep``: finished ``dpr train`` runs side by side, by their validation curves.

For choosing a recipe on a dev split before a benchmark run reports held-out figures. Each run
directory's ``train_config.json`` says what the run changed (shown against ``--baseline``, one of the
runs), its ``train_log.json`` the validation metric after every epoch (epoch 0: the starting model),
the epoch kept and the whole run's time. The runs must share their data and validation metric.
Writes ``--json``, which ``python -m bench.docs`` renders (docs/training.md).
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


def sweep(run_dirs: Sequence[Path], baseline: str | None = None, command: str | None = None) -> dict[str, Any]:
    from bench.speed import machine_info

    runs = [read_run(Path(d)) for d in run_dirs]
    if not runs:
        raise ValueError("no run directories given")
    names = [r["name"] for r in runs]
    base = runs[0] if baseline is None else next((r for r in runs if r["name"] == baseline), None)
    if base is None:
        raise ValueError(f"--baseline {baseline!r} is none of the runs ({', '.join(names)})")
    if len({r["metric"] for r in runs}) > 1 or len({str(r["data"]) for r in runs}) > 1:
        raise ValueError("the runs differ in their validation metric or data: their curves do not compare")
    for run in runs:
        run["changes"] = differences(run["config"], base["config"])
    return {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
            "baseline": base["name"], "metric": base["metric"], "data": base["data"], "runs": runs,
            "machine": machine_info()}


def sweep_table(report: dict[str, Any]) -> str:
    metric = report["metric"].replace("ndcg@", "nDCG@").replace("recall@", "R@")
    lines = [f"| run | changes from {report['baseline']} | dev {metric} by epoch (0: start) | kept | time |",
             "|---|---|---|---|---|"]
    for run in report["runs"]:
        changes = ", ".join(f"{k} {v}" for k, v in run["changes"].items()) or "-"
        curve = " → ".join(f"{v:.1f}" for v in run["by_epoch"])
        lines.append(f"| {run['name']} | {changes} | {curve} | epoch {run['best_epoch']}: {run['best']:.1f} | "
                     f"{run['minutes']:.1f} min |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished `dpr train --out` directories")
    parser.add_argument("--baseline", help="the run the others are described against (default: the first)")
    parser.add_argument("--json", type=Path, required=True, help="where the sweep's JSON goes")
    args = parser.parse_args(argv)
    report = sweep(args.runs, args.baseline, "python -m bench.sweep " + shlex.join(argv or sys.argv[1:]))
    write_json(args.json, report)
    print(sweep_table(report))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
