"""``python -m bench.sweep``: finished runs side by side, described by what they changed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.sweep import main, sweep, sweep_table


def _run(root: Path, name: str, curve: list[float], finished: bool = True, **config) -> Path:
    out = root / name
    out.mkdir()
    base = {"train": "t", "val": "v", "out": str(out), "lr": 2e-5, "epochs": len(curve) - 1, "seed": 42}
    (out / "train_config.json").write_text(json.dumps({**base, **config}))
    best = max(range(len(curve)), key=curve.__getitem__)
    log = {"finished": finished, "best_metric": "ndcg@10", "best_epoch": best, "best_value": curve[best],
           "total_seconds": 90.0 * len(curve), "precision": "bf16", "started_at": "2026-12-07T00:00:00+00:00",
           "data": {"train": 10, "val": 4, "val_kb": 50, "mining_kb": 46},
           "epochs": [{"epoch": i, "metrics": {"ndcg@10": v}} for i, v in enumerate(curve)]}
    (out / "train_log.json").write_text(json.dumps(log))
    return out


def test_runs_are_described_by_their_changes_and_curves(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", [0.60, 0.62])
    b = _run(tmp_path, "b", [0.60, 0.70, 0.74, 0.73], lr=1e-4)
    report = sweep([a, b])
    assert report["baseline"] == "a"
    runs = {r["name"]: r for r in report["runs"]}
    # The output directory and data paths are not a change; the learning rate and epochs are.
    assert runs["a"]["changes"] == {} and runs["b"]["changes"] == {"lr": 1e-4, "epochs": 3}
    assert runs["b"]["by_epoch"] == [60.0, 70.0, 74.0, 73.0] and (runs["b"]["best_epoch"], runs["b"]["best"]) == (2, 74.0)
    table = sweep_table(report)
    assert "| b | lr 0.0001, epochs 3 | 60.0 → 70.0 → 74.0 → 73.0 | epoch 2: 74.0 | 6.0 min |" in table
    assert sweep([a, b], baseline="b")["runs"][0]["changes"] == {"lr": 2e-5, "epochs": 1}


def test_unfinished_or_incomparable_runs_are_refused(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", [0.6, 0.62])
    with pytest.raises(ValueError, match="did not finish"):
        sweep([a, _run(tmp_path, "killed", [0.6, 0.61], finished=False)])
    other = _run(tmp_path, "other", [0.6, 0.65])
    log = json.loads((other / "train_log.json").read_text())
    log["data"]["val"] = 99
    (other / "train_log.json").write_text(json.dumps(log))
    with pytest.raises(ValueError, match="do not compare"):
        sweep([a, other])
    with pytest.raises(ValueError, match="none of the runs"):
        sweep([a], baseline="z")


def test_command_line_writes_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _run(tmp_path, "a", [0.6, 0.62]), _run(tmp_path, "b", [0.6, 0.7], lr=1e-4)
    out = tmp_path / "sweep.json"
    assert main([str(a), str(b), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert [r["name"] for r in saved["runs"]] == ["a", "b"] and saved["machine"]["cores"] >= 1
    assert "| b | lr 0.0001 |" in capsys.readouterr().out
