"""The training loop: artifacts, reproducibility, best-checkpoint keeping, schedule and optimiser."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.data import DataError, load_examples
from retriever.encoder import DualEncoder, load_encoder
from retriever.train import train
from retriever.train_config import TRAIN_CONFIG_FILE, TRAIN_LOG_FILE, TrainConfig
from retriever.train_setup import build_optimizer, linear_schedule, load_data, pick_val_split


def _config(tiny_base: Path, small_nq: tuple[Path, Path], out: Path, **kw) -> TrainConfig:
    train_file, val_file = small_nq
    base = dict(train=str(train_file), val=str(val_file), out=str(out), model=str(tiny_base), epochs=1,
                batch_size=8, lr=1e-3, query_max_length=32, passage_max_length=64, eval_batch_size=32)
    return TrainConfig(**{**base, **kw})


def test_one_epoch_writes_checkpoint_log_and_config_and_is_reproducible(
        tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path) -> None:
    config = _config(tiny_base, small_nq, tmp_path / "a", hard_negatives="model", seed=3)
    first = train(config, progress=False)
    out = tmp_path / "a"
    assert {"encoder_config.json", TRAIN_CONFIG_FILE, TRAIN_LOG_FILE, "query_encoder"} <= {p.name for p in out.iterdir()}
    assert TrainConfig.load(out) == config
    log = json.loads((out / TRAIN_LOG_FILE).read_text())
    assert log["finished"] and [row["epoch"] for row in log["epochs"]] == [0, 1]
    assert {"recall@1", "recall@5", "recall@20"} <= log["epochs"][1]["metrics"].keys()
    assert log["epochs"][1]["negatives"]["source"] == "model" and len(log["steps"]) == log["epochs"][1]["steps"] >= 3
    assert isinstance(load_encoder(out), DualEncoder)

    again = train(config.__class__(**{**config.to_dict(), "out": str(tmp_path / "b")}), progress=False)
    assert [s["loss"] for s in again.log["steps"]] == [s["loss"] for s in first.log["steps"]]
    assert again.log["epochs"][1]["metrics"] == first.log["epochs"][1]["metrics"]


def test_training_makes_loss_fall_and_in_batch_accuracy_rise(
        tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path) -> None:
    """Integration: a few steps on a handful of nq_oracle records move the tiny model the right way."""
    train_file, val_file = small_nq
    handful = tmp_path / "handful.json"
    handful.write_text(json.dumps(json.loads(train_file.read_text())[:16]))
    config = _config(tiny_base, (handful, val_file), tmp_path / "m", epochs=5, lr=3e-3, warmup_ratio=0.0,
                     hard_negatives="none")
    epochs = train(config, progress=False).log["epochs"][1:]
    losses, accuracy = [e["loss"] for e in epochs], [e["accuracy"] for e in epochs]
    assert losses[-1] < 0.5 * losses[0] and all(b < a for a, b in zip(losses, losses[1:]))
    assert accuracy[-1] > accuracy[0] + 0.3


def test_a_worse_epoch_never_replaces_the_starting_model(
        tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = iter([0.5, 0.25, 0.5])            # epoch 0, then worse, then only as good: keep epoch 0

    def fake_evaluate(*args, **kwargs) -> dict[str, float]:
        value = next(scripted)
        return {"recall@1": value, "recall@5": value, "recall@10": value, "recall@20": value,
                "recall@100": value, "mrr@10": value, "ndcg@10": value}

    monkeypatch.setattr("retriever.train.evaluate", fake_evaluate)
    start = load_encoder(str(tiny_base), query_max_length=32, passage_max_length=64).fingerprint()
    result = train(_config(tiny_base, small_nq, tmp_path / "m", epochs=2, hard_negatives="none"), progress=False)
    assert result.best_epoch == 0 and [row.get("best") for row in result.log["epochs"]] == [None, False, False]
    assert load_encoder(tmp_path / "m").fingerprint() == start


def test_kbs_validation_is_oracle_and_mining_excludes_validation_golds(
        tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path) -> None:
    data = load_data(_config(tiny_base, small_nq, tmp_path / "m"))
    val_gold = {p.pid for ex in data.val for p in ex.positives}
    train_gold = {p.pid for ex in data.train for p in ex.positives}
    assert {p.pid for p in data.val_kb} == val_gold | train_gold
    assert {p.pid for p in data.mining_kb} == train_gold


def test_file_negatives_need_a_file_that_has_them(tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no record has hard negatives"):
        train(_config(tiny_base, small_nq, tmp_path / "m", hard_negatives="file"), progress=False)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_continue_from_saved_model_and_refuse_overrides(tiny_encoder: DualEncoder, small_nq: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    tiny_encoder.save(tmp_path / "start")
    config = TrainConfig(train=str(small_nq[0]), val=str(small_nq[1]), out=str(tmp_path / "m"),
                         model=str(tmp_path / "start"), epochs=1, batch_size=8, hard_negatives="none")
    result = train(config, progress=False)
    assert result.log["encoder"] == tiny_encoder.config.to_dict()
    with pytest.raises(ValueError, match="keeps its own config"):
        train(TrainConfig(**{**config.to_dict(), "pooling": "cls"}), progress=False)


def test_schedule_warms_up_then_decays_to_zero() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_schedule(opt, warmup_steps=2, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[1] < lrs[2] == 1.0 and all(a > b for a, b in zip(lrs[2:], lrs[3:]))
    assert sched.get_last_lr()[0] == 0.0


def test_no_weight_decay_on_biases_and_layer_norms(tiny_encoder: DualEncoder) -> None:
    opt = build_optimizer(tiny_encoder, 1e-3, 0.01)
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in tiny_encoder.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all("bias" in names[id(p)] or "norm" in names[id(p)].lower() for p in no_decay["params"])
    assert any("layer_norm" in names[id(p)] for p in no_decay["params"])
    assert all(p.ndim == 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(tiny_encoder.parameters()))


def test_config_validation_and_beir_split_choice(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hard_negatives must be one of"):
        TrainConfig(train="t", val="v", out="o", hard_negatives="random")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(train="t", val="v", out="o", batch_size=1)
    assert TrainConfig(train="t", val="v", out="o", val_k=7).eval_ks == (1, 5, 7, 10, 20, 100)
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "train.tsv").write_text("")
    with pytest.raises(DataError, match="no validation split"):
        pick_val_split(tmp_path, None)
    (tmp_path / "qrels" / "dev.tsv").write_text("")
    assert pick_val_split(tmp_path, None) == "dev" and pick_val_split(tmp_path, "train") == "train"


def test_selection_metric_follows_the_data_unless_named(tmp_path: Path) -> None:
    assert TrainConfig(train="t", val="v.json", out="o", val_k=3).val_metric == "recall@3"
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text("")
    (tmp_path / "queries.jsonl").write_text("")
    assert TrainConfig(train="t", val=str(tmp_path), out="o").val_metric == "ndcg@10"
    named = TrainConfig(train="t", val=str(tmp_path), out="o", select_metric="recall@50")
    assert named.val_metric == "recall@50" and 50 in named.eval_ks
    with pytest.raises(ValueError, match="select_metric"):
        TrainConfig(train="t", val="v", out="o", select_metric="ndcg@3")


def test_small_nq_fixture_is_what_the_tests_assume(small_nq: tuple[Path, Path]) -> None:
    assert (len(load_examples(small_nq[0])), len(load_examples(small_nq[1]))) == (24, 16)


def test_beir_folder_trains_on_its_splits_and_validates_on_its_corpus(
        tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path) -> None:
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    corpus, queries = [], []
    for split, path in zip(("train", "val"), small_nq):
        lines = ["query-id\tcorpus-id\tscore"]
        for i, r in enumerate(json.loads(path.read_text())):
            qid, pid = f"{split}-q{i}", f"{split}-p{i}"
            queries.append({"_id": qid, "text": r["question"], "answers": r["answers"]})
            corpus.append({"_id": pid, **r["gold_context"]})
            lines.append(f"{qid}\t{pid}\t1")
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    corpus.append({"_id": "extra", "title": "Luge", "text": "Luge is a small sled."})
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in corpus))
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(r) for r in queries))
    data = load_data(_config(tiny_base, (folder, folder), tmp_path / "m"))
    assert (len(data.train), len(data.val)) == (24, 16)
    assert {p.pid for p in data.val_kb} == {r["_id"] for r in corpus}
    assert {p.pid for p in data.mining_kb} == {r["_id"] for r in corpus if not r["_id"].startswith("val-")}
