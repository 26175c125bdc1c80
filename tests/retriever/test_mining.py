"""Hard-negative mining never returns the gold passage, skips answer-bearing passages when asked, and
samples from a rank window and drops candidates within a margin of the positive's score when told."""
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
    PassageVectors,
    bm25_pair_scores,
    dense_topk,
    encode_kb,
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


# A hand-built ranking: after the gold (and its copy) and, when skipped, the answer passage a1 are
# left out, the usable ranks are n1=0, n2=1, ... n8=7 (a1 would be rank 0 if kept).
RANKED = [GOLD, KB[2], *[Passage(f"n{i}", f"Title {i}", f"unrelated passage number {i}") for i in range(1, 9)], KB[1]]
SCORES = [1.0, 0.97, 0.95, 0.92, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.99]


def _pids(passages: list[Passage]) -> list[str]:
    return [p.pid for p in passages]


def test_rank_window_counts_usable_passages_and_samples_with_the_seed() -> None:
    skip = dict(skip_answer_passages=True)
    assert _pids(select_negatives(EXAMPLE, RANKED, 3, **skip, window=(2, 5))) == ["n3", "n4", "n5"]
    assert _pids(select_negatives(EXAMPLE, RANKED, 3, window=(2, 5))) == ["n2", "n3", "n4"]   # a1 is rank 0
    assert _pids(select_negatives(EXAMPLE, RANKED, 9, **skip, window=(6, 100))) == ["n7", "n8"]  # past the end
    drawn = [_pids(select_negatives(EXAMPLE, RANKED, 3, **skip, window=(2, 7), rng=np.random.default_rng(s)))
             for s in range(6)]
    assert all(len(d) == len(set(d)) == 3 and set(d) <= {"n3", "n4", "n5", "n6", "n7"} for d in drawn)
    assert len({tuple(d) for d in drawn}) > 1                                     # the seed changes the sample
    assert drawn[0] == _pids(select_negatives(EXAMPLE, RANKED, 3, **skip, window=(2, 7),
                                              rng=np.random.default_rng(0)))      # and fixes it
    # Asking for the whole window returns all of it (in the order drawn).
    assert sorted(_pids(select_negatives(EXAMPLE, RANKED, 5, **skip, window=(2, 7),
                                         rng=np.random.default_rng(1)))) == ["n3", "n4", "n5", "n6", "n7"]


def test_margin_drops_candidates_scored_close_to_the_positive() -> None:
    kw = dict(skip_answer_passages=True, scores=SCORES, positive_score=1.0)
    # (1 - 0.1) * 1.0 = 0.9: n1 (0.95) and n2 (0.92) go; without a window later ranks take their place.
    assert _pids(select_negatives(EXAMPLE, RANKED, 3, margin=0.1, **kw)) == ["n3", "n4", "n5"]
    assert _pids(select_negatives(EXAMPLE, RANKED, 3, margin=0.0, **kw)) == ["n1", "n2", "n3"]
    # Ranks are counted before the margin: window 0:3 is n1..n3, of which only n3 survives.
    assert _pids(select_negatives(EXAMPLE, RANKED, 3, margin=0.1, window=(0, 3), **kw)) == ["n3"]
    assert _pids(select_negatives(EXAMPLE, RANKED, 3, margin=0.25, window=(1, 5), **kw)) == ["n4", "n5"]
    with pytest.raises(ValueError, match="needs the candidates' scores"):
        select_negatives(EXAMPLE, RANKED, 3, margin=0.1)


def test_bm25_pair_scores_equal_what_search_scores() -> None:
    index = BM25Index.build(KB)
    queries = ["romantic drama drama casablanca", "sled"]
    scores, rows = index.search(queries, k=len(KB))
    outside = Passage("new", "Sled", "a sled for drama")                          # not indexed: still scored
    pairs = bm25_pair_scores(index, queries, [[KB[j] for j in rows[0]], [KB[rows[1][0]], outside]])
    np.testing.assert_allclose(pairs[0], scores[0], rtol=1e-5, atol=1e-6)
    assert pairs[1][0] == pytest.approx(scores[1][0], rel=1e-5) and pairs[1][1] > 0


@pytest.mark.parametrize("method", ["model", "bm25"])
def test_mined_negatives_respect_the_margin_under_the_miners_own_scores(tiny_encoder: DualEncoder,
                                                                        method: str) -> None:
    question = "casablanca romantic drama 1942 film"
    if method == "bm25":
        index = BM25Index.build(KB)
        (scores,) = bm25_pair_scores(index, [question], [KB])
    else:
        q = tiny_encoder.encode_queries([question])
        scores = tiny_encoder.encode_passages(KB) @ q[0]
    score_of = dict(zip((p.pid for p in KB), scores.tolist()))
    example = Example("q", question, positives=(GOLD,))
    threshold = 0.9 * score_of["g"]
    (mined,) = mine_hard_negatives([example], KB, num=len(KB), method=method, encoder=tiny_encoder, margin=0.1)
    kept = {p.pid for p in mined}
    expected = {pid for pid, s in score_of.items() if pid not in ("g", "g-copy") and s <= threshold + 1e-5}
    if method == "bm25":
        expected = {pid for pid in expected if score_of[pid] > 0}                   # BM25 drops no-overlap passages
    dropped = {p.pid for p in KB} - {"g", "g-copy"} - expected
    assert kept == expected and dropped, (score_of, threshold)


def test_known_vectors_are_reused_by_id_and_passage_and_mining_stays_the_same(tiny_encoder: DualEncoder) -> None:
    """Vectors another KB's encoding left (the trainer's validation) stand in for the passages they
    were computed for; a passage missing there, or differing under the same id, is encoded."""
    other = [Passage("x", "Other", "Not in the mining KB at all."), *KB[2:],
             Passage("g", GOLD.title, "Another text under the gold id.")]
    known = PassageVectors(other, tiny_encoder.encode_passages(other), step=0)
    vectors, reused = encode_kb(tiny_encoder, KB, known=known)
    assert reused == len(KB) - 2                                            # g (changed) and g-copy are encoded
    np.testing.assert_allclose(vectors, tiny_encoder.encode_passages(KB), atol=1e-5)
    stats: dict[str, int] = {}
    kw = dict(num=len(KB), method="model", encoder=tiny_encoder, margin=0.1)
    assert (mine_hard_negatives([EXAMPLE], KB, known=known, stats=stats, **kw)
            == mine_hard_negatives([EXAMPLE], KB, **kw))
    assert stats == {"reused_vectors": len(KB) - 2}
