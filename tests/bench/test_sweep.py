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


def test_runs_that_train_on_different_data_compare_when_validated_alike(tmp_path: Path) -> None:
    from bench.docs import sweep_block

    a = _run(tmp_path, "ict", [0.6, 0.59], pseudo_method="ict")
    b = _run(tmp_path, "title", [0.6, 0.62], pseudo_method="title")
    log = json.loads((b / "train_log.json").read_text())
    log["data"].update(train=5000, pseudo_queries={"method": "title", "examples": 5000})
    (b / "train_log.json").write_text(json.dumps(log))
    report = sweep([a, b])
    assert report["runs"][1]["changes"] == {"pseudo_method": "title"}
    assert sweep_block(report).startswith("pseudo queries from the knowledge base (no claims) to train on, 4 dev "
                                          "questions, 50 passages ranked")
    assert sweep_block(sweep([a])).startswith("10 training questions, 4 dev questions")


def test_also_split_scores_each_kept_model_on_another_split(tiny_base: Path, beir_folder: Path,
                                                           tmp_path: Path) -> None:
    import shutil

    from common.data import load_corpus
    from common.metrics import ndcg_per_query
    from eval.evalset import load_eval_set
    from retriever.encoder import load_encoder

    run = _run(tmp_path, "u", [0.6, 0.62], val=str(beir_folder), kb=[])
    encoder = load_encoder(str(tiny_base))
    encoder.save(tmp_path / "model")
    shutil.copytree(tmp_path / "model", run, dirs_exist_ok=True)          # the kept model beside the run's logs
    report = sweep([run], also_splits=("test",))
    (also,) = report["runs"][0]["also"]
    # the same ranking by hand: every query against the folder's corpus, top 10 by dot product
    docs = ["d1", "d2", "d3", "d4"]
    kb = load_corpus([str(beir_folder)])
    q = encoder.encode_queries(["when is the apple harvest", "where does a river flow", "night sky"])
    scores = q @ encoder.encode_passages(kb).T
    ranked = {qid: [kb[j].pid for j in (-row).argsort()] for qid, row in zip(["q1", "q2", "q3"], scores)}
    expected = ndcg_per_query(load_eval_set(str(beir_folder), "test").qrels, ranked, 10)
    assert sorted(p.pid for p in kb) == docs
    assert also["split"] == "test" and also["queries"] == len(expected)
    assert also["ndcg@10"] == round(100 * sum(expected.values()) / len(expected), 2)
    assert "| u | - | 60.0 → 62.0 | epoch 1: 62.0 | 3.0 min |" in sweep_table(report)
    assert f"kept model, nDCG@10 on test ({len(expected)}) |" in sweep_table(report).splitlines()[0]


def test_command_line_writes_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _run(tmp_path, "a", [0.6, 0.62]), _run(tmp_path, "b", [0.6, 0.7], lr=1e-4)
    out = tmp_path / "sweep.json"
    assert main([str(a), str(b), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert [r["name"] for r in saved["runs"]] == ["a", "b"] and saved["machine"]["cores"] >= 1
    assert "| b | lr 0.0001 |" in capsys.readouterr().out
