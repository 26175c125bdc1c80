"""The recall benchmark end to end on the tiny random encoder (structure, not quality)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.plot import recall_curve
from bench.recall import ALPHAS, BenchOptions, run_bench
from bench.recall_data import split_queries, write_split_folder
from eval.evalset import load_eval_set

TINY_TRAINING = dict(batch_size=8, lr=1e-3, query_max_length=32, passage_max_length=64, eval_batch_size=32)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_on_nq_files_writes_table_json_and_png(tiny_base: Path, small_nq: tuple[Path, Path],
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.recall as bench

    tuned_on: list[set[str]] = []
    real_tune = bench.tune_fusion

    def spy(dense, sparse, qrels, k):
        tuned_on.append(set(qrels))
        return real_tune(dense, sparse, qrels, k)

    monkeypatch.setattr(bench, "tune_fusion", spy)
    train, val = small_nq
    out = tmp_path / "bench"
    report = run_bench(BenchOptions(train=train, val=val, out=out, model=str(tiny_base), epochs=1,
                                    n_resamples=50, progress=False, train_overrides=TINY_TRAINING))

    names = [row["name"] for row in report["rows"]]
    assert names[:4] == ["zero-shot", "in-batch", "in-batch+hard", "bm25"] and names[4].startswith("hybrid (")
    # The fusion weight was chosen on the training questions, none of the held-out ones.
    train_q, val_q = set(load_eval_set(train).queries), set(load_eval_set(val).queries)
    assert tuned_on == [train_q] and not tuned_on[0] & val_q
    assert report["fusion"]["n_queries"] == len(train_q) and len(report["fusion"]["grid"]) == len(ALPHAS) + 1
    gold = load_eval_set(train).relevant_ids() | load_eval_set(val).relevant_ids()
    assert report["data"]["kb_passages"] == len(gold)

    table = (out / "bench_recall.md").read_text().splitlines()
    assert table[0].startswith("| system | R@1 | R@5 | R@10 | R@20 | R@100 | MRR@10 | nDCG@10 |")
    assert [line.split(" | ")[0][2:] for line in table[2:]] == names

    saved = json.loads((out / "bench_recall.json").read_text())
    assert {"rows", "table", "curves", "training", "fusion", "environment", "data", "seed", "wall_seconds",
            "options"} <= saved.keys()
    assert set(saved["training"]) == {"in-batch", "in-batch+hard"}
    assert saved["training"]["in-batch+hard"]["config"]["hard_negatives"] == "model"
    assert saved["data"]["sha256"] and saved["environment"]["torch"]
    for row in saved["rows"]:
        r5 = row["metrics"]["recall@5"]
        assert r5["ci_low"] <= r5["value"] <= r5["ci_high"] and r5["n"] == len(val_q)
        curve = saved["curves"]["recall"][row["name"]]
        assert len(curve) == 100 and all(a <= b for a, b in zip(curve, curve[1:]))
        assert curve[4] == pytest.approx(r5["value"])
    assert (out / "recall_curves.png").read_bytes()[:8] == PNG_MAGIC


def test_beir_single_split_is_cut_by_seed_without_overlap(beir_folder: Path, tmp_path: Path) -> None:
    qids = [f"q{i}" for i in range(20)]
    a, b = split_queries(qids, seed=1), split_queries(qids, seed=1)
    assert a == b and [len(a[n]) for n in ("train", "dev", "test")] == [14, 2, 4]
    assert set(a["train"]) | set(a["dev"]) | set(a["test"]) == set(qids)
    assert not set(a["train"]) & set(a["test"]) and split_queries(qids, seed=2) != a

    many = tmp_path / "src"
    (many / "qrels").mkdir(parents=True)
    (many / "corpus.jsonl").write_text((beir_folder / "corpus.jsonl").read_text())
    (many / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"question {i}"}) + "\n"
                                                for i in range(10)))
    (many / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                              + "".join(f"q{i}\td{1 + i % 4}\t1\n" for i in range(10)))
    sizes = write_split_folder(many, "train", tmp_path / "split", seed=0)
    assert sizes == {"test": 2, "dev": 1, "train": 7}
    assert (tmp_path / "split" / "corpus.jsonl").is_symlink()
    parts = {n: set(load_eval_set(tmp_path / "split", n).queries) for n in sizes}
    assert not parts["train"] & parts["test"] and sum(map(len, parts.values())) == 10


def test_recall_curve_counts_first_hits() -> None:
    qrels = {"a": {"p1": 1}, "b": {"p2": 1}, "c": {"p9": 1}}
    run = {"a": ["p1", "x"], "b": ["x", "y", "p2"], "c": ["x"]}
    assert recall_curve(qrels, run, 3) == pytest.approx([1 / 3, 1 / 3, 2 / 3])


def test_dpr_bench_recall_command(tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from driver.main import main

    train, val = small_nq
    out = tmp_path / "cli"
    assert main(["bench", "recall", "--train", str(train), "--val", str(val), "--model", str(tiny_base),
                 "--epochs", "1", "--resamples", "20", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| system | R@1 | R@5 |" in printed and "| bm25 |" in printed and "training questions" in printed
    assert json.loads((out / "bench_recall.json").read_text())["options"]["epochs"] == 1
    assert main(["bench", "recall", "--train", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    assert "missing.json: no such" in capsys.readouterr().err


def test_bench_options_refuse_unknown_rows_and_epochs() -> None:
    with pytest.raises(ValueError, match="--rows takes one or more of zero-shot"):
        BenchOptions(rows=("zero-shot", "colbert"))
    with pytest.raises(ValueError, match="--rows"):
        BenchOptions(rows=())
    with pytest.raises(ValueError, match="--epochs must be >= 1"):
        BenchOptions(epochs=0)
    assert BenchOptions(rows=("in-batch",)).rows == ("in-batch",)
