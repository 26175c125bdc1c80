"""Readers: nq_oracle, DPR and BEIR layouts, and clear errors for malformed files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.data import DataError, load_corpus, load_examples, passage_id

GOLD = {"title": "Luge", "text": "Luge is a small one- or two-person sled."}
NEG = {"title": "Bobsleigh", "text": "Bobsleigh is a winter sport in which teams race sleds."}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_nq_oracle_records_with_single_and_listed_hard_negatives(tmp_path: Path) -> None:
    records = [
        {"question": "what is a luge", "answers": ["sled"], "gold_context": GOLD, "hard_negative": NEG},
        {"question": "what is bobsleigh", "answers": ["sport"], "gold_context": NEG, "hard_negatives": [GOLD, NEG]},
    ]
    examples = load_examples(_write(tmp_path / "train.json", json.dumps(records)))
    assert [len(ex.hard_negatives) for ex in examples] == [1, 2]
    assert examples[0].positives[0].pid == passage_id(GOLD["text"])
    assert examples[0].hard_negatives[0].text == NEG["text"] and examples[0].answers == ("sled",)


def test_dpr_biencoder_layout(tmp_path: Path) -> None:
    record = {"question": "what is a luge", "answers": ["sled"],
              "positive_ctxs": [{**GOLD, "passage_id": "17"}],
              "negative_ctxs": [], "hard_negative_ctxs": [{**NEG, "passage_id": "99"}]}
    (ex,) = load_examples(_write(tmp_path / "dpr.json", json.dumps([record])))
    assert [p.pid for p in ex.positives] == ["17"] and [p.pid for p in ex.hard_negatives] == ["99"]


def _beir(folder: Path) -> Path:
    folder.mkdir()
    _write(folder / "corpus.jsonl", "\n".join(json.dumps(r) for r in [
        {"_id": "d1", **GOLD}, {"_id": "d2", **NEG}, {"_id": "d3", "title": "", "text": "Unrelated text."}]))
    _write(folder / "queries.jsonl", "\n".join(json.dumps(r) for r in [
        {"_id": "q1", "text": "what is a luge", "answers": ["sled"]}, {"_id": "q2", "text": "what is bobsleigh"}]))
    (folder / "qrels").mkdir()
    _write(folder / "qrels" / "train.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td3\t0\n")
    _write(folder / "qrels" / "val.tsv", "query-id\tcorpus-id\tscore\nq2\td2\t1\n")
    return folder


def test_beir_layout(tmp_path: Path) -> None:
    folder = _beir(tmp_path / "beir")
    (ex,) = load_examples(folder, "train")
    assert (ex.qid, [p.pid for p in ex.positives], ex.answers) == ("q1", ["d1"], ("sled",))  # grade 0 dropped
    assert [ex.qid for ex in load_examples(folder, "val")] == ["q2"]
    assert [p.pid for p in load_corpus(folder)] == ["d1", "d2", "d3"]
    with pytest.raises(DataError, match=r"test\.tsv.*splits available: \['train', 'val'\]"):
        load_examples(folder, "test")


@pytest.mark.parametrize("name, content, expected", [
    ("truncated.json", '[{"question": "q", "gold_context": {"title": "t", "text": "x"}', r"truncated\.json: invalid JSON"),
    ("wrongkey.json", json.dumps([{"question": "q", "gold_context": GOLD}, {"question": "q2", "gold": GOLD}]),
     r"wrongkey\.json: record 1 .*no gold passage.*keys present: \['gold', 'question'\]"),
    ("empty.json", "", r"empty\.json: file is empty"),
    ("notext.json", json.dumps([{"question": "q", "gold_context": {"title": "t", "text": "  "}}]),
     r"notext\.json: record 0 .*gold_context.*passage has no text"),
    ("nokey.json", json.dumps([{"question": "q", "gold_context": {"title": "t"}}]),
     r"nokey\.json: record 0 .*missing key 'text'"),
    ("badline.jsonl", json.dumps({"question": "q", "gold_context": GOLD}) + "\n\n{not json}\n",
     r"badline\.jsonl:3: invalid JSON"),
    ("noquestion.jsonl", json.dumps({"gold_context": GOLD}) + "\n", r"noquestion\.jsonl:1: missing key 'question'"),
])
def test_malformed_files_name_file_and_record(tmp_path: Path, name: str, content: str, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        load_examples(_write(tmp_path / name, content))


def test_malformed_corpus_line_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "kb.jsonl", json.dumps({"_id": "1", **GOLD}) + "\n" + json.dumps({"_id": "2", "title": "x"}))
    with pytest.raises(DataError, match=r"kb\.jsonl:2: missing key 'text'"):
        load_corpus(path)


def test_corpus_deduplicates_and_rejects_conflicting_ids(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", json.dumps({"_id": "1", **GOLD}) + "\n" + json.dumps({"_id": "1", **GOLD}))
    assert len(load_corpus(a)) == 1
    b = _write(tmp_path / "b.jsonl", json.dumps({"_id": "1", **NEG}))
    with pytest.raises(DataError, match="duplicate passage id '1'"):
        load_corpus([a, b])
