"""Hard-negative mining never returns the gold passage, and skips answer-bearing passages when asked."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.answers import has_answer, normalize_answer
from common.data import Example, Passage, load_examples
from retriever import DualEncoder
from retriever.bm25 import BM25Index
from retriever.mining import (
    dense_topk,
    mine_hard_negatives,
    read_mining_input,
    select_negatives,
    with_hard_negatives,
    write_records,
)

GOLD = Passage("g", "Casablanca (film)", "Casablanca is a 1942 romantic drama starring Ingrid Bergman and Humphrey Bogart.")
KB = [
    GOLD,
    Passage("g-copy", "Casablanca", GOLD.text),                               # the gold text under another id
    Passage("a1", "Ingrid Bergman", "Ingrid Bergman was a Swedish actress who starred in Casablanca."),
    Passage("a2", "Bergman", "INGRID   bergman!  appeared in many films."),
    Passage("n1", "Casablanca (city)", "Casablanca is the largest city of Morocco, a port on the Atlantic."),
    Passage("n2", "Humphrey Bogart", "Humphrey Bogart was an American actor in a 1942 romantic drama."),
    Passage("n3", "Luge", "Luge is a small one- or two-person sled."),
    Passage("n4", "Drama", "A romantic drama is a film genre."),
]
EXAMPLE = Example("q", "who starred in the 1942 romantic drama casablanca", answers=("Ingrid Bergman",), positives=(GOLD,))


def test_answer_normalisation() -> None:
    assert normalize_answer("The  Ingrid-Bergman!") == "ingrid bergman"
    assert has_answer("... INGRID   bergman! appeared", ["Ingrid Bergman"])
    assert not has_answer("Ingrid Bergmann", ["Ingrid Bergman"])               # whole words only
    assert not has_answer("anything", ["", "the"])                              # empty answers never match


def test_select_negatives_skips_gold_id_gold_text_and_answers() -> None:
    assert [p.pid for p in select_negatives(EXAMPLE, KB, 10)] == ["a1", "a2", "n1", "n2", "n3", "n4"]
    assert [p.pid for p in select_negatives(EXAMPLE, KB, 10, skip_answer_passages=True)] == ["n1", "n2", "n3", "n4"]
    assert [p.pid for p in select_negatives(EXAMPLE, KB, 2, skip_answer_passages=True)] == ["n1", "n2"]


@pytest.mark.parametrize("method", ["model", "bm25"])
@pytest.mark.parametrize("skip", [False, True])
def test_mining_never_returns_the_gold(tiny_encoder: DualEncoder, method: str, skip: bool) -> None:
    (mined,) = mine_hard_negatives([EXAMPLE], KB, num=len(KB), method=method, encoder=tiny_encoder,
                                   skip_answer_passages=skip)
    pids = [p.pid for p in mined]
    assert mined and len(pids) == len(set(pids))
    assert all(p.text != GOLD.text for p in mined)
    if skip:
        assert not {"a1", "a2"} & set(pids)
        assert not any(has_answer(p.text, EXAMPLE.answers) for p in mined)
    else:
        assert "a1" in pids                                   # answer-bearing passages are fair game


def test_bm25_ranks_word_overlap_first() -> None:
    index = BM25Index.build(KB)
    scores, rows = index.search(["largest city of morocco", "sled"], k=3)
    assert rows.shape == (2, 3) and rows.dtype == np.int64
    assert KB[rows[0, 0]].pid == "n1" and KB[rows[1, 0]].pid == "n3"
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert index.search(["sled"], k=100)[1].shape == (1, len(KB))                   # k clamps to the KB


def test_bm25_negatives_are_lexically_close_but_not_gold() -> None:
    (mined,) = mine_hard_negatives([EXAMPLE], KB, num=2, method="bm25")
    assert [p.pid for p in mined][:1] != ["g-copy"] and all(p.text != GOLD.text for p in mined)
    assert {p.pid for p in mined} <= {"a1", "a2", "n1", "n2", "n4"}               # never the unrelated luge


def test_dense_topk_matches_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    q, p = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(30, 5)).astype(np.float32)
    scores, rows = dense_topk(q, p, 4, chunk=3)
    full = q @ p.T
    np.testing.assert_array_equal(rows, np.argsort(-full, axis=1)[:, :4])
    np.testing.assert_allclose(scores, np.take_along_axis(full, rows, axis=1), rtol=1e-5)


def test_mined_file_round_trips(tmp_path: Path) -> None:
    src = tmp_path / "train.json"
    src.write_text(json.dumps([{"question": EXAMPLE.question, "answers": list(EXAMPLE.answers), "extra": 1,
                                "gold_context": {"title": GOLD.title, "text": GOLD.text}, "hard_negative": {
                                    "title": "old", "text": "an old negative"}}]))
    records, examples = read_mining_input(src)
    out = tmp_path / "mined.jsonl"
    write_records(out, [with_hard_negatives(records[0], [KB[4], KB[5]])])
    (ex,) = load_examples(out)
    assert [p.pid for p in ex.hard_negatives] == ["n1", "n2"] and ex.positives == examples[0].positives
    assert json.loads(out.read_text())["extra"] == 1 and "hard_negative" not in json.loads(out.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mined.jsonl", "train.json"]   # no temp files left
