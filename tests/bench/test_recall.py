"""The recall benchmark end to end on the tiny random encoder (structure, not quality)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench.plot import recall_curve
from bench.recall import BenchOptions, run_bench
from bench.recall_data import RECIPES, parse_recipe, plan_rows, split_queries, write_split_folder
from bench.recall_fusion import ALPHAS
from bench.recall_report import bench_table
from common.fusion import FusionConfig
from eval.bootstrap import paired_bootstrap_diff, paired_randomization_test
from eval.evalset import load_eval_set
from retriever.train_config import TrainConfig

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
    fused_with: list[FusionConfig] = []
    real_fuse = bench.fuse

    def fuse_spy(dense, sparse, k, fusion):
        fused_with.append(fusion)
        return real_fuse(dense, sparse, k, fusion)

    monkeypatch.setattr(bench, "fuse", fuse_spy)
    train, val = small_nq
    out = tmp_path / "bench"
    report = run_bench(BenchOptions(train=train, val=val, out=out, model=str(tiny_base), epochs=1,
                                    n_resamples=50, progress=False, train_overrides=TINY_TRAINING))

    names = [row["name"] for row in report["rows"]]
    assert names[:4] == ["zero-shot", "in-batch", "default", "bm25"] and names[5].startswith("hybrid (")
    # The no-label row: the zero-shot run fused by the product's default fusion, which nothing tuned.
    shipped = FusionConfig()
    no_labels = report["rows"][4]
    assert no_labels["name"] == f"hybrid (zero-shot + bm25, default interp a={shipped.alpha:.2f})"
    assert no_labels["dense"] == "zero-shot" and no_labels["no_labels"] and no_labels["fusion"]["tuned_on"] is None
    # Recorded in the tuned row's shape, so one reader serves both hybrid rows.
    assert no_labels["fusion"]["chosen"] == {"method": shipped.method, "alpha_dense": shipped.alpha}
    assert report["fusion"]["chosen"].keys() >= no_labels["fusion"]["chosen"].keys()
    chosen = report["fusion"]["chosen"]
    assert fused_with == [shipped, FusionConfig(method="interp", alpha=chosen["alpha_dense"])
                          if chosen["method"] == "interp" else FusionConfig(method="rrf")]
    # The fusion weight was chosen on the training questions, none of the held-out ones.
    train_q, val_q = set(load_eval_set(train).queries), set(load_eval_set(val).queries)
    assert tuned_on == [train_q] and not tuned_on[0] & val_q
    assert report["fusion"]["n_queries"] == len(train_q) and len(report["fusion"]["grid"]) == len(ALPHAS) + 1
    gold = load_eval_set(train).relevant_ids() | load_eval_set(val).relevant_ids()
    assert report["data"]["kb_passages"] == len(gold)

    table = [line for line in (out / "bench_recall.md").read_text().splitlines() if line.startswith("|")]
    assert table[0] == ("| system | R@1 | R@5 | R@10 | R@20 | R@100 | MRR@10 | nDCG@10 | Δ nDCG@10 vs zero-shot (p) "
                        "| Δ nDCG@10 vs in-batch (p) | train (time, peak RSS) | eval (time, peak RSS) |")
    assert [line.split(" | ")[0][2:] for line in table[2:]] == names

    saved = json.loads((out / "bench_recall.json").read_text())
    assert {"rows", "table", "curves", "training", "fusion", "environment", "data", "seed", "wall_seconds",
            "options"} <= saved.keys()
    assert set(saved["training"]) == {"in-batch", "default"}
    assert saved["training"]["default"]["config"]["hard_negatives"] == "model"
    assert saved["training"]["default"]["config"]["num_hard_negatives"] == TrainConfig.__dataclass_fields__["num_hard_negatives"].default
    assert saved["data"]["sha256"] and saved["environment"]["torch"]
    for row in saved["rows"]:
        r5 = row["metrics"]["recall@5"]
        assert r5["ci_low"] <= r5["value"] <= r5["ci_high"] and r5["n"] == len(val_q)
        curve = saved["curves"]["recall"][row["name"]]
        assert len(curve) == 100 and all(a <= b for a, b in zip(curve, curve[1:]))
        assert curve[4] == pytest.approx(r5["value"])
    assert (out / "recall_curves.png").read_bytes()[:8] == PNG_MAGIC

    # Cost: every row timed and measured; trained rows trained in a process of their own.
    for row in saved["rows"]:
        cost = row["cost"]
        assert cost["eval_seconds"] > 0 and cost["eval_peak_rss_mb"] > 0
        assert cost["eval_rss_scope"] in ("row", "process")
        trained = row["name"] in ("in-batch", "default")
        assert (cost["train_seconds"] is not None and 0 < cost["train_seconds"] <= cost["train_process_seconds"]
                and cost["train_peak_rss_mb"] > 0) if trained else cost["train_peak_rss_mb"] is None
    assert "MB" in table[3].split(" | ")[-2] and table[2].split(" | ")[-2] == "-"      # in-batch trained, zero-shot not

    # Paired tests: every row against zero-shot and in-batch (not itself), recomputed by hand from the
    # per-query values of the same run; the mean difference is that of the two rows' own means.
    assert saved["paired"]["baselines"] == ["zero-shot", "in-batch"]
    metrics = ["ndcg@10", "recall@1", "recall@5", "recall@10", "recall@20", "recall@100", "mrr@10"]
    assert saved["paired"]["metrics"] == metrics
    by_name = {row["name"]: row for row in saved["rows"]}
    for row in saved["rows"]:
        assert set(row["vs"]) == {"zero-shot", "in-batch"} - {row["name"]}
        for base, stats in row["vs"].items():
            assert set(stats) == set(metrics)
            for m, got in stats.items():
                a, b = row["per_query"][m], by_name[base]["per_query"][m]
                assert set(a) == val_q
                diff, low, high = paired_bootstrap_diff(a, b, n_resamples=50, seed=42)
                p = paired_randomization_test(a, b, n_resamples=10_000, seed=42)
                assert got == pytest.approx({"diff": diff, "low": low, "high": high, "p": p})
                assert got["diff"] == pytest.approx(row["metrics"][m]["value"] - by_name[base]["metrics"][m]["value"],
                                                    abs=1e-5)


def test_table_marks_significant_differences() -> None:
    metric = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 9}
    rows = [{"name": "zero-shot", "metrics": {"ndcg@10": metric}, "vs": {},
             "cost": {"train_seconds": None, "eval_seconds": 1.25, "eval_peak_rss_mb": 512.4}},
            {"name": "trained", "metrics": {"ndcg@10": metric},
             "vs": {"zero-shot": {"ndcg@10": {"diff": 0.05, "low": 0.01, "high": 0.09, "p": 0.012}}},
             "cost": {"train_seconds": 30.0, "train_peak_rss_mb": 900.0, "eval_seconds": 2.0, "eval_peak_rss_mb": 600}},
            {"name": "other", "metrics": {"ndcg@10": metric},
             "vs": {"zero-shot": {"ndcg@10": {"diff": -0.01, "low": -0.05, "high": 0.03, "p": 0.5}}}, "cost": {}}]
    lines = bench_table(rows, ["ndcg@10"], ["zero-shot"]).splitlines()
    assert lines[0] == ("| system | nDCG@10 | Δ nDCG@10 vs zero-shot (p) | train (time, peak RSS) "
                        "| eval (time, peak RSS) |")
    assert lines[2] == "| zero-shot | 50.0 (40.0-60.0) | - | - | 1.2 s, 512 MB |"
    assert lines[3] == "| trained | 50.0 (40.0-60.0) | **+5.0** (p=0.012) | 30.0 s, 900 MB | 2.0 s, 600 MB |"
    assert lines[4] == "| other | 50.0 (40.0-60.0) | -1.0 (p=0.500) | - | - |"


def test_recipes_start_from_and_unsupervised_pass_through(tiny_base: Path, small_nq: tuple[Path, Path],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows run after the row they start from, with its model; an unsupervised row gets
    unsupervised=True and the benchmark's knowledge base (given a TrainConfig with that field; the
    trainer is faked, the rows are evaluated for real)."""
    import bench.recall as bench
    import retriever.train_config as train_config
    from retriever.encoder import load_encoder

    trained: list = []

    def fake_train(config, name, progress, retrain):
        trained.append((name, config))
        load_encoder(config.model, **config.encoder_overrides()).save(config.out)
        return {"best_epoch": 0, "log": {"epochs": [], "total_seconds": 0.0}, "seconds": 0.01, "peak_rss_mb": 1.0,
                "process_seconds": 0.02}

    monkeypatch.setattr(bench, "_train", fake_train)
    train, val = small_nq
    out = tmp_path / "bench"
    options = BenchOptions(train=train, val=val, out=out, model=str(tiny_base), epochs=1, n_resamples=20,
                           progress=False, train_overrides=TINY_TRAINING,
                           rows=("unsupervised+supervised", "zero-shot", "unsupervised"))
    assert options.rows == ("unsupervised", "unsupervised+supervised", "zero-shot")
    # A field TrainConfig lacks is refused by row name, before anything trains.
    future = dataclasses.replace(options, rows=("zero-shot", "future"),
                                 recipes=('future:{"hard_negatives": "none", "no_such_field_yet": 1}',))
    with pytest.raises(ValueError, match="row future: TrainConfig has no field no_such_field_yet"):
        run_bench(future)
    bad = dataclasses.replace(options, rows=("in-batch", "bad"),
                              recipes=('bad:{"start_from": "in-batch", "pooling": "cls"}',))
    with pytest.raises(ValueError, match="row bad starts from in-batch's saved model, which keeps its own encoder "
                                         "options; drop pooling"):
        run_bench(bad)
    assert trained == []

    if "unsupervised" not in {f.name for f in dataclasses.fields(train_config.TrainConfig)}:
        newer = dataclasses.make_dataclass("TrainConfig", [("unsupervised", bool, False)],
                                           bases=(train_config.TrainConfig,), frozen=True)
        monkeypatch.setattr(train_config, "TrainConfig", newer)
    report = run_bench(options)
    assert [name for name, _ in trained] == ["unsupervised", "unsupervised+supervised"]
    unsup, sup = (config for _, config in trained)
    kb_file = out / "data" / "kb.jsonl"
    assert unsup.unsupervised and unsup.kb == (str(kb_file),) and unsup.model == str(tiny_base)
    assert len(kb_file.read_text().splitlines()) == report["data"]["kb_passages"]
    assert sup.model == str(out / "models" / "unsupervised") and not sup.unsupervised
    assert sup.hard_negatives == "model" and sup.query_max_length is None      # the saved model keeps its own
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows)[:4] == ["unsupervised", "unsupervised+supervised", "zero-shot", "bm25"]
    assert rows["unsupervised+supervised"]["starts_from"] == "unsupervised" and rows["unsupervised"]["unsupervised"]
    assert report["paired"]["baselines"] == ["zero-shot"]                      # in-batch did not run
    assert set(rows["unsupervised"]["vs"]) == {"zero-shot"} and rows["zero-shot"]["vs"] == {}


def test_finished_rows_are_reused_unless_recipe_data_or_retrain_say_otherwise(
        tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second run of the benchmark trains only the rows whose TrainConfig or data changed (the
    training process is faked; the reused model is evaluated for real, with the recorded cost)."""
    import shutil

    import bench.recall as bench
    from retriever.encoder import load_encoder

    trained: list[str] = []

    def fake_training_process(config, progress):
        trained.append(config.lr)
        load_encoder(config.model, **config.encoder_overrides()).save(config.out)
        (Path(config.out) / "train_log.json").write_text(json.dumps({"epochs": [], "total_seconds": 12.5}))
        return {"best_epoch": 1, "log": {"epochs": [], "total_seconds": 12.5}, "seconds": 12.5, "peak_rss_mb": 3.0}

    monkeypatch.setattr(bench, "train_in_subprocess", fake_training_process)
    (tmp_path / "data").mkdir()
    train, val = (tmp_path / "data" / "train.json", tmp_path / "data" / "val.json")
    shutil.copy(small_nq[0], train)
    shutil.copy(small_nq[1], val)
    options = BenchOptions(train=train, val=val, out=tmp_path / "bench", model=str(tiny_base), epochs=1,
                           n_resamples=20, progress=False, train_overrides=TINY_TRAINING, rows=("in-batch",))

    def in_batch_row(report: dict) -> dict:
        return next(row for row in report["rows"] if row["name"] == "in-batch")

    first = in_batch_row(run_bench(options))
    assert trained == [TINY_TRAINING["lr"]] and not first["training_reused"]
    again = run_bench(options)
    row = in_batch_row(again)
    assert trained == [TINY_TRAINING["lr"]] and row["training_reused"] and again["training"]["in-batch"]["reused"]
    assert row["cost"]["train_seconds"] == 12.5 and row["metrics"] == first["metrics"]
    md = (options.out / "bench_recall.md").read_text()
    assert " †" in md.split("| in-batch |")[1].split("\n")[0] and "†: training reused" in md
    # A field a supervised run never reads (a pseudo-query option) does not make it train again.
    crop = dataclasses.replace(options, recipes=('in-batch:{"hard_negatives": "none", "pseudo_method": "crop"}',))
    assert in_batch_row(run_bench(crop))["training_reused"] and len(trained) == 1
    # The same recipe on other data bytes trains again; so does another learning rate, and --retrain.
    train.write_text(train.read_text() + "\n")
    run_bench(options)
    assert len(trained) == 2
    run_bench(dataclasses.replace(options, recipes=('in-batch:{"hard_negatives": "none", "lr": 0.002}',)))
    assert trained[2:] == [0.002]
    assert not in_batch_row(run_bench(dataclasses.replace(options, retrain=True)))["training_reused"]
    assert len(trained) == 4


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
    """A --recipe row identical to zero-shot: difference 0 and p = 1 on every metric."""
    from driver.main import main

    train, val = small_nq
    out = tmp_path / "cli"
    assert main(["bench", "recall", "--train", str(train), "--val", str(val), "--model", str(tiny_base),
                 "--epochs", "1", "--resamples", "20", "--out", str(out), "--no-progress",
                 "--rows", "zero-shot,again", "--recipe", 'again:{"zero_shot": true}']) == 0
    printed = capsys.readouterr().out
    assert "| system | R@1 | R@5 |" in printed and "| bm25 |" in printed and "training questions" in printed
    assert "Δ nDCG@10 vs zero-shot (p) | train" in printed and "vs in-batch" not in printed
    assert "| again | " in printed and "| +0.0 (p=1.000) | - |" in printed
    saved = json.loads((out / "bench_recall.json").read_text())
    assert saved["options"]["epochs"] == 1 and saved["options"]["rows"] == ["zero-shot", "again"]
    assert saved["recipes"] == {"zero-shot": {"zero_shot": True}, "again": {"zero_shot": True}}
    again = next(row for row in saved["rows"] if row["name"] == "again")
    assert again["vs"]["zero-shot"] == {m: {"diff": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}
                                        for m in saved["paired"]["metrics"]}
    assert main(["bench", "recall", "--train", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    assert "missing.json: no such" in capsys.readouterr().err
    assert main(["bench", "recall", "--recipe", "window:{negative_ranks: 10}", "--out", str(out)]) == 2
    assert "--recipe window: not valid JSON" in capsys.readouterr().err


def test_chunked_rows_rank_documents_by_their_best_piece(tiny_base: Path, small_nq: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    """A row whose pieces are its passages whole ranks exactly as the zero-shot row (the by-document
    path changes nothing else); a sentence row cuts them finer and still ranks the same documents."""
    train, val = small_nq
    recipes = ('whole:{"zero_shot": true, "chunk": "words:100000"}',
               f'named:{{"zero_shot": true, "model": "{tiny_base}"}}')
    report = run_bench(BenchOptions(train=train, val=val, out=tmp_path / "b", model=str(tiny_base), n_resamples=20,
                                    progress=False, rows=("zero-shot", "zero-shot-sentences", "whole", "named"),
                                    recipes=recipes, train_overrides=TINY_TRAINING))
    rows = {row["name"]: row for row in report["rows"]}
    kb = report["data"]["kb_passages"]
    assert rows["whole"]["vs"]["zero-shot"]["ndcg@10"] == {"diff": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}
    assert rows["whole"]["per_query"] == rows["zero-shot"]["per_query"] and rows["whole"]["cost"]["eval_pieces"] == kb
    assert rows["zero-shot-sentences"]["cost"]["eval_pieces"] > kb and "eval_pieces" not in rows["zero-shot"]["cost"]
    assert rows["zero-shot-sentences"]["metrics"]["recall@100"]["value"] > 0
    # A label-free hybrid per unchunked zero-shot row of --model; "named" could be a trained model.
    assert [row["dense"] for row in report["rows"] if row.get("no_labels")] == ["zero-shot"]


def test_bench_options_refuse_unknown_rows_and_epochs() -> None:
    with pytest.raises(ValueError, match="unknown row.s. colbert; known rows: zero-shot, zero-shot-sentences, in-batch, in-batch.hard, "
                                         "previous-default, default, distill, unsupervised, unsupervised-ict, unsupervised.supervised"):
        BenchOptions(rows=("zero-shot", "colbert"))
    with pytest.raises(ValueError, match="--rows: no row given"):
        BenchOptions(rows=())
    with pytest.raises(ValueError, match="--epochs must be >= 1"):
        BenchOptions(epochs=0)
    with pytest.raises(ValueError, match="--compare-to: unknown row.s. colbert"):
        BenchOptions(baselines=("colbert",))
    assert BenchOptions(rows=("in-batch",)).rows == ("in-batch",)
    assert BenchOptions().rows == ("zero-shot", "in-batch", "default")


def test_recipe_flag_parsing() -> None:
    window = 'window:{"negative_ranks": "10:100", "num_hard_negatives": 4}'
    assert parse_recipe(window) == ("window", {"negative_ranks": "10:100", "num_hard_negatives": 4})
    # A new recipe joins the default rows; one naming a field TrainConfig lacks is fine until it runs.
    options = BenchOptions(recipes=(window, 'in-batch:{"hard_negatives": "none", "lr": 1e-4}'))
    assert options.rows == ("zero-shot", "in-batch", "default", "window")
    assert options.registry["in-batch"] == {"hard_negatives": "none", "lr": 1e-4} and "window" not in RECIPES
    assert BenchOptions(recipes=(window,), rows=("zero-shot",)).rows == ("zero-shot",)


@pytest.mark.parametrize(("text", "message"), [
    ("window", "expected NAME:JSON"),
    (":{}", "expected NAME:JSON"),
    ("window:", "expected NAME:JSON"),
    ("window:{negative_ranks: 1}", r"--recipe window: not valid JSON \(Expecting property name"),
    ('window:{"lr": 1e-4', "--recipe window: not valid JSON"),
    ("window:[1, 2]", "must be a JSON object of TrainConfig overrides, got list"),
    ('a/b:{"lr": 1}', "recipe name 'a/b'"),
    ('bm25:{"lr": 1}', "recipe name 'bm25'"),
    ('w:{"zero_shot": "yes"}', "zero_shot must be true or false"),
    ('w:{"start_from": 3}', "start_from must name a row"),
    ('w:{"zero_shot": true, "start_from": "in-batch"}', "a zero_shot row trains nothing"),
    ('w:{"start_from": "in-batch", "model": "m"}', "start_from sets the model"),
    ('w:{"out": "elsewhere"}', "the benchmark sets out itself"),
    ('w:{"zero_shot": true, "chunk": 1}', "chunk must be a spec string"),
    ('w:{"zero_shot": true, "chunk": "lines:3"}', "recipe w: chunk spec 'lines:3': unknown unit 'lines'"),
])
def test_malformed_recipes_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_recipe(text)


def test_start_from_orders_rows_and_must_be_selected() -> None:
    registry = {**RECIPES, "c": {"start_from": "unsupervised+supervised"}, "self": {"start_from": "self"},
                "ghost": {"start_from": "nowhere"}}
    assert plan_rows(["c", "zero-shot", "unsupervised+supervised", "unsupervised"], registry) == \
        ["unsupervised", "unsupervised+supervised", "c", "zero-shot"]
    with pytest.raises(ValueError, match="row unsupervised.supervised starts from row unsupervised, which is not "
                                         "selected: add it to --rows"):
        plan_rows(["zero-shot", "unsupervised+supervised"], registry)
    with pytest.raises(ValueError, match="goes round in a circle: self -> self"):
        plan_rows(["self"], registry)
    with pytest.raises(ValueError, match="starts from 'nowhere', which is no row"):
        plan_rows(["ghost"], registry)
    with pytest.raises(ValueError, match="not selected"):
        BenchOptions(rows=("unsupervised+supervised",))


def test_passage_vectors_are_reused_for_the_same_model_and_passages_only(
        tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun takes a row's knowledge-base vectors from OUT/vectors when the model's weights and the
    passages are the same, with the same results; other weights, other passages or a damaged file
    encode again."""
    import numpy as np

    import bench.recall as bench
    from bench.reuse import VECTORS_FILE, VECTORS_KEY
    from retriever.encoder import DualEncoder

    encoded: list[int] = []
    real = DualEncoder.encode_passages

    def counting(self, passages, *args, **kwargs):
        encoded.append(len(passages))
        return real(self, passages, *args, **kwargs)

    monkeypatch.setattr(DualEncoder, "encode_passages", counting)
    options = BenchOptions(train=small_nq[0], val=small_nq[1], out=tmp_path / "bench", model=str(tiny_base),
                           n_resamples=20, progress=False, rows=("zero-shot",))

    def row(report: dict) -> dict:
        return next(r for r in report["rows"] if r["name"] == "zero-shot")

    first = row(run_bench(options))
    n_first = len(encoded)
    assert n_first >= 1 and not first["cost"]["eval_vectors_reused"]
    again = row(run_bench(options))
    assert len(encoded) == n_first and again["cost"]["eval_vectors_reused"]
    assert again["metrics"] == first["metrics"] and again["per_query"] == first["per_query"]
    assert again["cost"]["eval_encode_passages_s"] == first["cost"]["eval_encode_passages_s"]
    md = (options.out / "bench_recall.md").read_text()
    assert " ‡" in md.split("| zero-shot |")[1].split("\n")[0] and "‡: passage vectors reused" in md
    # Another model (one weight changed) encodes again.
    folder = options.out / bench.VECTORS_DIR / "zero-shot" / "kb"
    key = json.loads((folder / VECTORS_KEY).read_text())
    key["key"]["model"]["weights_sha256"] = "0" * 64
    (folder / VECTORS_KEY).write_text(json.dumps(key))
    assert not row(run_bench(options))["cost"]["eval_vectors_reused"] and len(encoded) > n_first
    # Vectors of the wrong shape are never used.
    n = len(encoded)
    np.save(folder / VECTORS_FILE, np.zeros((3, 4), dtype=np.float32))
    assert not row(run_bench(options))["cost"]["eval_vectors_reused"] and len(encoded) > n
    # Other passages (one more distractor) encode again too.
    n = len(encoded)
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"id": "x1", "title": "Extra", "text": "an extra distractor passage"}) + "\n")
    report = run_bench(dataclasses.replace(options, extra_passages=(extra,)))
    assert not row(report)["cost"]["eval_vectors_reused"] and len(encoded) > n


def test_a_row_starting_from_a_saved_model_is_reused_only_with_the_same_weights(
        tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path) -> None:
    """A start_from row's parent may train again (a changed recipe): its child must then train again."""
    import shutil

    from bench.reuse import finished_training, record_training, training_key
    from retriever.train_config import TrainConfig

    parent = tmp_path / "parent"
    shutil.copytree(tiny_base, parent)
    config = TrainConfig(train=str(small_nq[0]), val=str(small_nq[1]), out=str(tmp_path / "child"),
                         model=str(parent))
    (tmp_path / "child").mkdir()
    (tmp_path / "child" / "train_log.json").write_text("{}")
    record_training(config, training_key(config), {"best_epoch": 1})
    assert finished_training(config, training_key(config)) == {"best_epoch": 1}
    weights = next(parent.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")                       # the parent was trained again
    assert finished_training(config, training_key(config)) is None


def test_a_row_trains_for_dpr_trains_epochs_unless_the_run_or_its_recipe_says(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from bench.recall import row_config
    from retriever.train_config import TrainConfig

    data = SimpleNamespace(train_path="t.json", val_path="v.json", train_split="train", val_split=None)
    default = TrainConfig(train="t", val="v", out="o").epochs

    def epochs(recipe: dict, **options) -> int:
        bench = BenchOptions(out=tmp_path, progress=False, **options)
        return row_config(bench, data, "row", recipe, {}, None).epochs

    assert epochs({}) == default                       # the "default" row is what `dpr train` does
    assert epochs({}, epochs=default + 2) == default + 2
    assert epochs({"epochs": default + 1}, epochs=default + 2) == default + 1


def test_a_rows_training_process_stops_when_the_benchmark_is_gone() -> None:
    """The training child watches the benchmark's pid: alive, nothing happens; killed (a zombie not
    yet reaped counts as gone) or reaped, the watcher fires."""
    import subprocess
    import sys
    import threading

    from bench.recall_report import process_alive, watch_parent

    bench = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = threading.Event()
    watch_parent(bench.pid, gone.set, every_s=0.05)
    assert process_alive(bench.pid) and not gone.wait(0.5)
    bench.kill()
    assert gone.wait(10)
    bench.wait()
    assert not process_alive(bench.pid)


def test_peak_rss_is_per_block_after_a_bigger_one() -> None:
    """Each measured block reports its own peak, not the process's so far (ru_maxrss would keep the
    first block's 400 MB in the second)."""
    import numpy as np

    from bench.recall_report import measured

    with measured() as big:
        block = np.ones((50, 1000, 1000))                  # 400 MB, freed (unmapped) on del
        del block
    with measured() as small:
        block = np.ones((5, 1000, 1000))
        del block
    if big.scope != "row":
        pytest.skip("this kernel refuses /proc/self/clear_refs: peaks are per process here")
    assert big.peak_rss_mb - small.peak_rss_mb > 250
