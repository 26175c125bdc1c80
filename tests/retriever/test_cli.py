"""`dpr train` and `dpr mine` through driver.main.main, as a user runs them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.data import load_examples
from driver.main import main
from retriever.train_config import TRAIN_LOG_FILE, TrainConfig

TINY = ["--query-max-length", "32", "--passage-max-length", "64", "--no-progress"]


def test_dpr_mine_then_train_on_the_mined_file(tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    train_file, val_file = small_nq
    mined = tmp_path / "mined.json"
    assert main(["mine", "--model", str(tiny_base), "--data", str(train_file), "--kb", str(train_file),
                 "--kb", str(val_file), "--out", str(mined), "--num", "2", "--skip-answer-negatives",
                 "--no-progress"]) == 0
    examples = load_examples(mined)
    assert len(examples) == 24 and all(len(ex.hard_negatives) == 2 for ex in examples)
    assert all(n.text != ex.positives[0].text for ex in examples for n in ex.hard_negatives)
    assert "wrote 24 records with 48 hard negatives" in capsys.readouterr().out

    out = tmp_path / "model"
    assert main(["train", "--train", str(mined), "--val", str(val_file), "--model", str(tiny_base), "--out",
                 str(out), "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--hard-negatives", "file",
                 "--pooling", "cls", "--similarity", "dot", "--no-tie-encoders", "--seed", "5", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "R@1" in printed and "R@20" in printed and "<- kept" in printed
    config = TrainConfig.load(out)
    assert (config.hard_negatives, config.pooling, config.similarity, config.tie_encoders, config.seed) == (
        "file", "cls", "dot", False, 5)
    log = json.loads((out / TRAIN_LOG_FILE).read_text())
    assert log["epochs"][1]["negatives"]["source"] == "file" and (out / "passage_encoder").is_dir()


def test_dpr_mine_with_bm25_needs_no_model(small_nq: tuple[Path, Path], tmp_path: Path) -> None:
    train_file, val_file = small_nq
    out = tmp_path / "mined.jsonl"
    assert main(["mine", "--method", "bm25", "--model", str(tmp_path / "nowhere"), "--data", str(train_file),
                 "--kb", str(train_file), "--kb", str(val_file), "--out", str(out), "--no-progress"]) == 0
    examples = load_examples(out)
    # A question sharing no word with any other passage gets none: BM25 has nothing "hard" for it.
    assert sum(len(ex.hard_negatives) for ex in examples) >= 20 and all(len(ex.hard_negatives) <= 1 for ex in examples)
    assert all(n.text != ex.positives[0].text for ex in examples for n in ex.hard_negatives)


def test_dpr_train_with_bm25_negatives(tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path) -> None:
    train_file, val_file = small_nq
    out = tmp_path / "model"
    assert main(["train", "--train", str(train_file), "--val", str(val_file), "--kb", str(train_file), "--kb",
                 str(val_file), "--model", str(tiny_base), "--out", str(out), "--epochs", "1", "--batch-size", "8",
                 "--hard-negatives", "bm25", "--num-hard-negatives", "1", "--remine-every", "1", *TINY]) == 0
    log = json.loads((out / TRAIN_LOG_FILE).read_text())
    negatives = log["epochs"][1]["negatives"]
    assert negatives.pop("digest") and negatives == {"source": "bm25", "per_question": 1, "mined_before_epoch": 1}


def test_dpr_mine_writes_teacher_scores_that_dpr_train_distils_from(
        tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    train_file, val_file = small_nq
    mined = tmp_path / "mined.jsonl"
    assert main(["mine", "--method", "model", "--model", str(tiny_base), "--data", str(train_file), "--kb",
                 str(train_file), "--kb", str(val_file), "--out", str(mined), "--num", "2", "--ranks", "1:10",
                 "--seed", "7", "--teacher", "hybrid", "--no-progress"]) == 0
    assert "hard negatives and teacher scores" in capsys.readouterr().out
    records = [json.loads(line) for line in mined.read_text().splitlines()]
    assert all(r["teacher"] == "hybrid" and 0 <= r["gold_context"]["teacher_score"] <= 1 for r in records)
    assert all(len(r["hard_negatives"]) == 2 and all(0 <= n["teacher_score"] <= 1 for n in r["hard_negatives"])
               for r in records)

    def no_scoring(*args, **kwargs):
        raise AssertionError("the file's teacher scores should have been used")

    monkeypatch.setattr("retriever.train_setup.score_candidates", no_scoring)
    out = tmp_path / "model"
    assert main(["train", "--train", str(mined), "--val", str(val_file), "--model", str(tiny_base), "--out",
                 str(out), "--epochs", "1", "--batch-size", "8", "--hard-negatives", "file", "--num-hard-negatives",
                 "2", "--distill-weight", "1", "--teacher-temperature", "0.2", *TINY]) == 0
    log = json.loads((out / TRAIN_LOG_FILE).read_text())
    assert log["epochs"][1]["distill_loss"] > 0 and all("distill" in s for s in log["steps"])


def test_dpr_train_help_lists_the_loss_and_negative_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--negative-ranks START:END", "--negative-margin M", "--symmetric", "--distill-weight W",
                 "--teacher hybrid|DIR", "--teacher-temperature", "--student-temperature", "--unsupervised",
                 "--pseudo-method auto|ict|crop|title", "--pseudo-max-examples N", "--pseudo-val N",
                 "dpr train --unsupervised --kb"):
        assert flag in text, flag


def test_errors_name_the_file_and_exit_2(tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"question": "q", "gold_context": {"title": "t"}}]')
    assert main(["train", "--train", str(bad), "--val", str(small_nq[1]), "--model", str(tiny_base),
                 "--out", str(tmp_path / "m"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "dpr train: error:" in err and "bad.json: record 0" in err and "missing key 'text'" in err
    assert not (tmp_path / "m").exists()
    assert main(["mine", "--data", str(tmp_path / "missing.json"), "--kb", str(bad), "--out",
                 str(tmp_path / "o.json"), "--method", "bm25"]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_dpr_train_passage_format_joined_is_saved_in_the_encoder_config(
        tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path) -> None:
    train_file, val_file = small_nq
    out = tmp_path / "model"
    assert main(["train", "--train", str(train_file), "--val", str(val_file), "--model", str(tiny_base), "--out",
                 str(out), "--epochs", "1", "--batch-size", "8", "--hard-negatives", "none",
                 "--passage-format", "joined", *TINY]) == 0
    assert TrainConfig.load(out).passage_format == "joined"
    assert json.loads((out / "encoder_config.json").read_text())["encoder"]["passage_format"] == "joined"
