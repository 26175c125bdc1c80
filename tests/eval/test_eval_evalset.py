"""Evaluation sets from nq_oracle files and BEIR folders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.data import DataError, passage_id
from eval.evalset import default_kb, gold_coverage, load_eval_set


def test_beir_folder(beir_folder: Path) -> None:
    folder = beir_folder                   # q1: d1 (grade 2) and d4 (1); q2: d2; q3: only a grade-0 judgement
    evalset = load_eval_set(folder, "test")
    assert evalset.layout == "beir" and evalset.split == "test"
    assert evalset.queries == {"q1": "when is the apple harvest", "q2": "where does a river flow"}
    assert evalset.qrels == {"q1": {"d1": 2, "d4": 1}, "q2": {"d2": 1}}
    assert not evalset.has_answers
    assert folder / "qrels" / "test.tsv" in evalset.files
    passages, note = default_kb(evalset)
    assert [p.pid for p in passages] == ["d1", "d2", "d3", "d4"] and "corpus" in note


def test_missing_split_names_the_file_and_the_splits(beir_folder: Path) -> None:
    folder = beir_folder
    with pytest.raises(DataError, match=r"dev\.tsv.*splits available: \['test'\]"):
        load_eval_set(folder, "dev")


def test_qrels_query_missing_from_queries(beir_folder: Path) -> None:
    folder = beir_folder
    with (folder / "qrels" / "test.tsv").open("a") as f:
        f.write("q9\td1\t1\n")
    with pytest.raises(DataError, match="'q9' is not in"):
        load_eval_set(folder, "test")


def test_nq_oracle_file_uses_gold_text_ids(small_nq: tuple[Path, Path]) -> None:
    _, val = small_nq
    records = json.loads(val.read_text())
    evalset = load_eval_set(val)
    assert len(evalset) == len(records) == 16
    gold = {passage_id(r["gold_context"]["text"]) for r in records}
    assert evalset.relevant_ids() == gold
    assert evalset.has_answers
    passages, note = default_kb(evalset)
    assert {p.pid for p in passages} == gold and "gold passages" in note
    assert gold_coverage(evalset, set(list(gold)[:4])) == pytest.approx(4 / len(gold))


def test_repeated_question_is_one_query_with_both_gold_passages(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text(json.dumps([
        {"question": "who?", "answers": ["A"], "gold_context": {"title": "t", "text": "first text"}},
        {"question": "who?", "answers": ["B"], "gold_context": {"title": "t", "text": "second text"}},
    ]))
    evalset = load_eval_set(path)
    (qid,) = evalset.queries
    assert set(evalset.qrels[qid]) == {passage_id("first text"), passage_id("second text")}
    assert evalset.answers[qid] == ("A", "B")


def test_missing_data_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_eval_set(tmp_path / "nope.json")
