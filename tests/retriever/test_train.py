"""The training loop: artifacts, reproducibility, best-checkpoint keeping, schedule and optimiser."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from common.data import DataError, load_examples
from retriever.distributed import DistContext
from retriever.encoder import DualEncoder, load_encoder
from retriever.train import Trainer, train
from retriever.train_config import TRAIN_CONFIG_FILE, TRAIN_LOG_FILE, TrainConfig
from retriever.train_setup import (
    RoundNegatives,
    build_optimizer,
    hard_negatives_for,
    linear_schedule,
    load_data,
    pick_val_split,
)


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
    # The default --eval-runtime auto validates a knowledge base this small on torch.
    assert config.eval_runtime == "auto" and {row["eval_runtime"] for row in log["epochs"]} == {"torch"}
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


def test_remining_each_epoch_gives_epoch_2_other_negatives(tiny_base: Path, small_nq: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    config = _config(tiny_base, small_nq, tmp_path / "m", epochs=2, hard_negatives="model", remine_every=1,
                     num_hard_negatives=2, lr=3e-3)
    trainer = Trainer(config, DistContext(), progress=False)
    mined: list[list[list[str]]] = []
    fresh: list[list[list[str]]] = []
    mine = trainer._train_epoch

    def spy() -> None:
        # The old way, encoding the whole mining KB with the same weights: reuse must not change a thing.
        fresh.append(RoundNegatives(hard_negatives_for(config, trainer.model, trainer.data, False,
                                                       trainer.epoch)).ids())
        mine()
        mined.append(trainer.negatives.ids())

    trainer._train_epoch = spy
    log = trainer.run().log
    rows = [r["negatives"] for r in log["epochs"][1:]]
    assert [r["mined_before_epoch"] for r in rows] == [1, 2]
    assert mined[0] != mined[1] and rows[0]["digest"] != rows[1]["digest"]
    assert all(len(row) == 2 + 3 for row in mined[0])                     # H plus spares for batch conflicts
    # Mining after a validation (epoch 0's, then epoch 1's) reuses its vectors: the mining KB is inside val_kb.
    assert {p.pid for p in trainer.data.mining_kb} <= {p.pid for p in trainer.data.val_kb}
    assert [r["mine_reused_vectors"] for r in log["epochs"][1:]] == [len(trainer.data.mining_kb)] * 2
    assert mined == fresh


def test_distillation_trains_keeps_the_teacher_frozen_and_resumes_exactly(
        tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path) -> None:
    """Hybrid teacher, symmetric loss, negatives sampled from a rank window with a margin and re-mined
    each epoch; a crash mid-epoch 2 (after re-mining) resumed ends like the uninterrupted run."""
    def config(out: str) -> TrainConfig:
        return _config(tiny_base, small_nq, tmp_path / out, epochs=2, hard_negatives="model", remine_every=1,
                       negative_ranks="1:12", negative_margin=0.02, distill_weight=0.5, symmetric=True,
                       checkpoint_every=2, seed=4)

    whole = Trainer(config("whole"), DistContext(), progress=False)
    start = whole.teacher.dense.encoder.fingerprint()
    log = whole.run().log
    assert all(math.isfinite(s["loss"]) and math.isfinite(s["distill"]) and s["distill"] >= 0 for s in log["steps"])
    assert all(s["loss"] == pytest.approx(s["contrastive"] + 0.5 * s["distill"], abs=2e-5) for s in log["steps"])
    assert math.isfinite(log["epochs"][1]["distill_loss"]) and log["epochs"][1]["distill_loss"] > 0
    # The teacher is the starting model, frozen: no gradient, same weights, while the student moved.
    teacher = whole.teacher.dense.encoder
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert teacher.fingerprint() == start == load_encoder(str(tiny_base), query_max_length=32,
                                                          passage_max_length=64).fingerprint()
    assert whole.model.fingerprint() != start

    crash_at = [s["step"] for s in log["steps"] if s["epoch"] == 2][1]
    crashed = Trainer(config("crash"), DistContext(), progress=False, on_step=_crash_at(crash_at))
    with pytest.raises(RuntimeError, match="crash"):
        crashed.run()
    resumed = Trainer(config("crash"), DistContext(), progress=False)
    resumed.restore()
    assert (resumed.epoch, resumed.batch_index) == (2, 1)           # after epoch 2's mining, before its 2nd step
    assert resumed.negatives.teacher_scores == crashed.negatives.teacher_scores
    result = resumed.run()
    assert [s["loss"] for s in result.log["steps"]] == [s["loss"] for s in log["steps"]]
    assert [s["distill"] for s in result.log["steps"]] == [s["distill"] for s in log["steps"]]


def _crash_at(step: int):
    def hook(global_step: int) -> None:
        if global_step == step:
            raise RuntimeError(f"simulated crash after step {step}")
    return hook


def test_new_loss_and_negative_settings_are_validated(tmp_path: Path) -> None:
    base = dict(train="t", val="v", out="o")
    assert TrainConfig(**base, negative_ranks="10:100").negative_window == (10, 100)
    assert TrainConfig(**base).negative_window is None
    for ranks in ("10", "5:5", "9:3", "-1:4", "a:b"):
        with pytest.raises(ValueError, match="START:END"):
            TrainConfig(**base, negative_ranks=ranks)
    with pytest.raises(ValueError, match="negative_margin"):
        TrainConfig(**base, negative_margin=1.0)
    with pytest.raises(ValueError, match="apply to mined negatives"):
        TrainConfig(**base, hard_negatives="file", negative_margin=0.1)
    with pytest.raises(ValueError, match="needs --hard-negatives"):
        TrainConfig(**base, hard_negatives="none", distill_weight=1.0)
    with pytest.raises(ValueError, match="teacher must be"):
        TrainConfig(**base, distill_weight=1.0, teacher=str(tmp_path))
    with pytest.raises(ValueError, match="teacher_temperature"):
        TrainConfig(**base, teacher_temperature=0.0)
    with pytest.raises(ValueError, match="student_temperature"):
        TrainConfig(**base, student_temperature=-1.0)
    # The defaults change nothing: no window, no margin, no symmetric term, no distillation.
    defaults = TrainConfig(**base)
    assert (defaults.negative_ranks, defaults.negative_margin, defaults.symmetric, defaults.distill_weight) == (
        None, 0.0, False, 0.0)


def test_attention_dropout_reaches_every_layer_only_while_training(tiny_base: Path, small_nq: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    from transformers import AutoConfig

    from retriever.train_setup import attention_dropouts, build_model, set_attention_dropout

    def rates(model: DualEncoder) -> list[float]:
        return [d.p for d in attention_dropouts(model)]

    assert TrainConfig.__dataclass_fields__["attention_dropout"].default == 0.0             # the default: none
    assert rates(build_model(_config(tiny_base, small_nq, tmp_path / "a"))) == [0.0, 0.0]
    assert rates(build_model(_config(tiny_base, small_nq, tmp_path / "c", attention_dropout=None))) == [0.1, 0.1]
    model = build_model(_config(tiny_base, small_nq, tmp_path / "b", attention_dropout=0.0))
    assert rates(model) == [0.0, 0.0]
    # Hidden-state dropout is left alone.
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.0, 0.1}
    # The rate set is the one the forward pass uses: with hidden dropout off, two training forwards
    # differ at the checkpoint's attention dropout and agree at 0.
    tokens = model.tokenize_queries(["who wrote hamlet", "where does the river flow"])
    for attention, same in ((None, False), (0.0, True)):
        model = build_model(_config(tiny_base, small_nq, tmp_path / "d", attention_dropout=attention))
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Dropout) and not name.endswith("attention.dropout"):
                m.p = 0.0
        model.train()
        assert torch.equal(model.embed_queries(tokens), model.embed_queries(tokens)) is same
    # Training with it records it, and the saved model keeps the checkpoint's own rate for later runs.
    train(_config(tiny_base, small_nq, tmp_path / "c", attention_dropout=0.0, hard_negatives="none"), progress=False)
    assert json.loads((tmp_path / "c" / TRAIN_CONFIG_FILE).read_text())["attention_dropout"] == 0.0
    assert AutoConfig.from_pretrained(tmp_path / "c").attention_dropout == 0.1
    with pytest.raises(ValueError, match="attention_dropout"):
        TrainConfig(train="t", val="v", out="o", attention_dropout=1.0)
    with pytest.raises(ValueError, match="no self-attention dropout"):
        set_attention_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)), 0.0)
