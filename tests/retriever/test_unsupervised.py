"""`dpr train --unsupervised`: pseudo queries from a knowledge base, validated on --val or on held-out
pseudo queries judged by their source passage, never mined against their own source."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from common.data import Passage, corpus_from_examples, load_examples
from driver.main import main
from retriever.batching import make_batches
from retriever.checkpoint import resume_progress
from retriever.mining import mine_hard_negatives, rank_with_bm25
from retriever.train import train
from retriever.train_cli import add_arguments, config_from_args
from retriever.train_config import RECIPE_DEFAULTS, TRAIN_LOG_FILE, TrainConfig
from retriever.train_setup import load_data
from retriever.unsupervised import pseudo_method
from retriever.validation import relevance

TINY = ["--query-max-length", "32", "--passage-max-length", "64", "--no-progress", "--epochs", "1",
        "--batch-size", "8", "--lr", "1e-3", "--eval-batch-size", "32"]


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


@pytest.fixture()
def kb_file(small_nq: tuple[Path, Path], tmp_path: Path) -> Path:
    """The 39 gold passages of small_nq (under their own ids) plus an exact copy of the first under a new id."""
    passages = corpus_from_examples(load_examples(small_nq[0]) + load_examples(small_nq[1]))
    passages.append(Passage("copy-of-first", passages[0].title, passages[0].text))
    path = tmp_path / "kb.jsonl"
    path.write_text("".join(json.dumps({"_id": p.pid, "title": p.title, "text": p.text}) + "\n" for p in passages))
    return path


def _config(tiny_base: Path, kb_file: Path, out: Path, **kw) -> TrainConfig:
    base = dict(unsupervised=True, kb=(str(kb_file),), out=str(out), model=str(tiny_base), epochs=1, batch_size=8,
                lr=1e-3, pseudo_method="ict", hard_negatives="model", query_max_length=32, passage_max_length=64, eval_batch_size=32, pseudo_val=6)
    return TrainConfig(**{**base, **kw})


def test_dpr_train_unsupervised_without_val_picks_on_held_out_pseudo_queries_and_resumes(
        tiny_base: Path, kb_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    config = _config(tiny_base, kb_file, out, checkpoint_every=1)

    def crash(step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False, on_step=crash)
    assert resume_progress(out)["global_step"] == 2
    # Resuming recomputes the same pseudo examples and mining KB from the saved config.
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "<- kept" in capsys.readouterr().out
    assert TrainConfig.load(out) == config and config.train == "" and config.val == ""
    log = json.loads((out / TRAIN_LOG_FILE).read_text())
    pseudo = log["data"]["pseudo_queries"]
    assert log["finished"] and log["resumed"] and log["best_metric"] == "recall@5"
    assert pseudo["method"] == "ict" and pseudo["validation"] == "held-out pseudo queries"
    assert pseudo["kb_passages"] == 40 and pseudo["unique_texts"] == 39        # the copy makes no example
    assert pseudo["examples"] + sum(pseudo["skipped"].values()) == pseudo["examined"] == 39
    assert pseudo["held_out"] == log["data"]["val"] == 6 and pseudo["train"] == log["data"]["train"] == 33
    assert log["data"]["val_kb"] == 40 and log["data"]["mining_kb"] == 33


def test_dpr_train_unsupervised_with_val_validates_on_the_questions(
        tiny_base: Path, small_nq: tuple[Path, Path], kb_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert main(["train", "--unsupervised", "--kb", str(kb_file), "--val", str(small_nq[1]), "--out", str(out),
                 "--model", str(tiny_base), "--pseudo-method", "crop", "--hard-negatives", "none", *TINY]) == 0
    log = json.loads((out / TRAIN_LOG_FILE).read_text())
    pseudo = log["data"]["pseudo_queries"]
    assert pseudo["method"] == "crop" and pseudo["validation"] == "--val questions" and pseudo["held_out"] == 0
    assert log["data"]["train"] == pseudo["examples"] == 39 and log["data"]["val"] == 16
    assert log["data"]["mining_kb"] == 39 - 16                  # the validation gold passages are never mined
    assert log["epochs"][1]["steps"] == 5


def test_held_out_pseudo_validation_is_deterministic_disjoint_and_judged_by_source_pid(
        tiny_base: Path, kb_file: Path, tmp_path: Path) -> None:
    config = _config(tiny_base, kb_file, tmp_path / "m", pseudo_val=8, seed=3)     # 8 > a fifth of 39: 7
    data = load_data(config)
    assert [ex.qid for ex in load_data(config).val] == [ex.qid for ex in data.val]
    assert [ex.qid for ex in load_data(_config(tiny_base, kb_file, tmp_path / "m", pseudo_val=8, seed=4)).val] != \
        [ex.qid for ex in data.val]
    kb = {p.pid: p for p in data.val_kb}
    val_sources = {ex.positives[0].pid for ex in data.val}
    train_sources = {ex.positives[0].pid for ex in data.train}
    assert len(data.val) == 7 and len(data.train) == 32 and not val_sources & train_sources
    assert "copy-of-first" not in val_sources | train_sources
    # A held-out query's gold is its full source passage, which holds the query; training positives are shortened.
    assert all(ex.positives[0] == kb[ex.positives[0].pid] and _norm(ex.question) in _norm(ex.positives[0].text)
               for ex in data.val)
    assert all(_norm(ex.question) not in _norm(ex.positives[0].text) for ex in data.train)
    # Relevance is the source pid (and the KB's copy of the same text), not the shortened text.
    first = next(iter(kb))
    qrels = relevance(data.val, data.val_kb)
    assert qrels == {ex.qid: {ex.positives[0].pid: 1, **({"copy-of-first": 1} if ex.positives[0].pid == first
                                                          else {})} for ex in data.val}
    # Mining: full KB passages (one per text), none a held-out source.
    assert {p.pid for p in data.mining_kb} == set(kb) - val_sources - {"copy-of-first"}
    assert all(p == kb[p.pid] for p in data.mining_kb)
    cap = load_data(_config(tiny_base, kb_file, tmp_path / "m", pseudo_val=8, pseudo_max_examples=10))
    assert (len(cap.train), len(cap.val)) == (10, 3)             # 18 made, at most a fifth held out


def test_mining_and_batching_never_use_a_pseudo_querys_own_source_as_its_negative(
        tiny_base: Path, kb_file: Path, tmp_path: Path) -> None:
    data = load_data(_config(tiny_base, kb_file, tmp_path / "m"))
    # BM25 ranks the untouched source first (it holds the query verbatim): the one mining must skip.
    top = rank_with_bm25(data.train, data.mining_kb, 1).rows[:, 0]
    assert all(data.mining_kb[j].pid == ex.positives[0].pid for ex, j in zip(data.train, top))
    mined = mine_hard_negatives(data.train, data.mining_kb, 5, method="bm25")
    assert sum(map(len, mined)) > 3 * len(data.train)
    for ex, negatives in zip(data.train, mined):
        own = ex.positives[0].pid
        assert all(n.pid != own and n.pid != "copy-of-first" for n in negatives)
        assert all(_norm(ex.question) not in _norm(n.text) for n in negatives)
    batches = make_batches(data.train, 8, np.random.default_rng(0), num_hard_negatives=2, negatives=mined,
                           filler=data.mining_kb)
    by_qid = {ex.qid: ex.positives[0].pid for ex in data.train}
    for batch in batches:
        groups = [batch.passages[i * 3:(i + 1) * 3] for i in range(len(batch))]
        golds = {by_qid[q] for q in batch.qids}
        for qid, group in zip(batch.qids, groups):
            assert group[0].pid == by_qid[qid] and all(p.pid not in golds for p in group[1:])


def test_refusals_name_the_flag(tiny_base: Path, small_nq: tuple[Path, Path], kb_file: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="unsupervised training makes its examples from --kb.*drop --train"):
        _config(tiny_base, kb_file, tmp_path / "m", train=str(small_nq[0]))
    with pytest.raises(ValueError, match="give --kb PATH"):
        _config(tiny_base, kb_file, tmp_path / "m", kb=())
    with pytest.raises(ValueError, match="--hard-negatives file reads negatives from --train"):
        _config(tiny_base, kb_file, tmp_path / "m", hard_negatives="file")
    with pytest.raises(ValueError, match="--pseudo-val must be >= 1"):
        _config(tiny_base, kb_file, tmp_path / "m", pseudo_val=0)
    with pytest.raises(ValueError, match="pseudo_method must be auto or one of"):
        _config(tiny_base, kb_file, tmp_path / "m", pseudo_method="cloze")
    with pytest.raises(ValueError, match="train is required"):
        TrainConfig(val=str(small_nq[1]), out=str(tmp_path / "m"))
    assert main(["train", "--unsupervised", "--kb", str(kb_file), "--train", str(small_nq[0]),
                 "--out", str(tmp_path / "m")]) == 2
    assert "drop --train" in capsys.readouterr().err
    assert main(["train", "--unsupervised", "--out", str(tmp_path / "m")]) == 2
    assert "give --kb PATH" in capsys.readouterr().err
    assert main(["train", "--unsupervised", "--kb", str(kb_file)]) == 2
    assert "--unsupervised --kb KB --out OUT" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_unsupervised_runs_get_their_own_recipe_unless_told(small_nq: tuple[Path, Path], kb_file: Path,
                                                             tmp_path: Path) -> None:
    out = str(tmp_path / "m")
    supervised = TrainConfig(train=str(small_nq[0]), val=str(small_nq[1]), out=out)
    unsupervised = TrainConfig(unsupervised=True, kb=(str(kb_file),), out=out)
    recipe = ("epochs", "lr", "hard_negatives")
    assert {k: getattr(supervised, k) for k in recipe} == RECIPE_DEFAULTS[False] == \
        {"epochs": 6, "lr": 1e-4, "hard_negatives": "model"}
    assert {k: getattr(unsupervised, k) for k in recipe} == RECIPE_DEFAULTS[True] == \
        {"epochs": 1, "lr": 5e-5, "hard_negatives": "none"}
    told = TrainConfig(unsupervised=True, kb=(str(kb_file),), out=out, epochs=3, lr=2e-5, hard_negatives="bm25")
    assert (told.epochs, told.lr, told.hard_negatives) == (3, 2e-5, "bm25")
    # saved resolved: a reloaded config is the same run
    assert TrainConfig.from_dict(unsupervised.to_dict()) == unsupervised and unsupervised.to_dict()["epochs"] == 1
    # flags left out take the recipe; `--hard-negatives none` means in-batch negatives only
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = ["--train", str(small_nq[0]), "--val", str(small_nq[1]), "--out", out]
    parsed = config_from_args(parser.parse_args([*flags, "--hard-negatives", "none"]))
    assert (parsed.epochs, parsed.lr, parsed.hard_negatives) == (6, 1e-4, "none")


def test_pseudo_method_auto_takes_titles_when_most_passages_have_one() -> None:
    titled = [Passage(f"t{i}", f"Aspirin lowers the risk {i}", "some text") for i in range(3)]
    untitled = [Passage(f"u{i}", "" if i % 2 else "Short", "some text") for i in range(3)]
    assert pseudo_method("auto", titled + untitled) == "title"                 # 3 of 6: half is enough
    assert pseudo_method("auto", titled[:2] + untitled) == "ict"
    assert pseudo_method("auto", []) == "ict"
    assert pseudo_method("crop", titled) == "crop"                             # a method given is kept


def test_dpr_train_unsupervised_auto_trains_on_titles(tiny_base: Path, small_nq: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    passages = corpus_from_examples(load_examples(small_nq[0]) + load_examples(small_nq[1]))
    kb = tmp_path / "titled.jsonl"
    kb.write_text("".join(json.dumps({"_id": p.pid, "title": f"what the passage {p.pid} says about it",
                                      "text": p.text}) + "\n" for p in passages))
    out = tmp_path / "m"
    assert main(["train", "--unsupervised", "--kb", str(kb), "--val", str(small_nq[1]), "--out", str(out),
                 "--model", str(tiny_base), *TINY]) == 0
    log = json.loads((out / TRAIN_LOG_FILE).read_text())
    config = TrainConfig.load(out)
    assert config.pseudo_method == "auto" and log["data"]["pseudo_queries"]["method"] == "title"
    assert config.hard_negatives == "none" and config.epochs == 1         # the unsupervised recipe
    assert log["data"]["train"] == len(passages)
