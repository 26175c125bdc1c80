"""Top-k selection (ties included) and the BM25 and fusion runs."""
from __future__ import annotations

import numpy as np
import pytest

from common.data import Passage
from common.fusion import FusionConfig
from eval.retrieve import Retrieval, exact_search, exact_search_by_group, fuse, retrieve_with_bm25, top_k


def test_top_k_breaks_ties_by_column() -> None:
    scores = np.array([[0.5, 0.9, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    s, rows = top_k(scores, 2)
    # Row 0: 0.9 first, then three passages tied at 0.5: the lowest column (0) wins.
    assert rows.tolist() == [[1, 0], [3, 2]]
    assert s.ravel().tolist() == pytest.approx([0.9, 0.5, 0.4, 0.3])
    _, rows = top_k(scores, 10)                          # k beyond the KB: everything, still ordered
    assert rows.tolist() == [[1, 0, 2, 3], [3, 2, 1, 0]]


def test_exact_search_chunks_agree_with_one_product(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    q, p = rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(9, 4)).astype(np.float32)
    whole = exact_search(q, p, 3)
    monkeypatch.setattr("eval.retrieve.SCORE_CELLS", 9 * 2)          # two queries per chunk
    chunked = exact_search(q, p, 3)
    assert np.array_equal(whole[1], chunked[1])
    assert whole[1].shape == (7, 3)
    assert np.array_equal(whole[1][:, 0], np.argmax(q @ p.T, axis=1))


def test_bm25_and_fusion_runs() -> None:
    passages = [Passage("p1", "Apples", "apple orchards harvest in autumn"),
                Passage("p2", "Rivers", "the river flows to the sea"),
                Passage("p3", "Stars", "stars shine at night in the sky")]
    queries = {"qa": "when is the apple harvest", "qb": "where does a river flow"}
    bm25 = retrieve_with_bm25(passages, queries, k=5, progress=False)
    assert bm25.run["qa"][0] == "p1" and bm25.run["qb"][0] == "p2"
    # Only p1 shares a term with qa; passages scoring 0 are not retrieved
    assert bm25.run["qa"] == ["p1"] and bm25.scores["qa"][0] > 0
    assert bm25.texts["qa"][0] == passages[0].text
    dense = Retrieval(run={"qa": ["p3", "p1"], "qb": ["p2"]}, scores={"qa": [0.9, 0.8], "qb": [0.7]},
                      texts={"qa": ["s", "a"], "qb": ["r"]})
    hybrid = fuse(dense, bm25, 2, FusionConfig(method="rrf"))
    # qa: p1 is 2nd in dense and 1st in BM25 (1/62 + 1/61) and beats p3 (1st in dense only: 1/61)
    assert hybrid.run["qa"][0] == "p1"
    assert len(hybrid.run["qa"]) == 2
    assert hybrid.texts["qa"][0] == "a"                              # dense's text wins for a shared id


def test_search_by_group_scores_a_document_by_its_best_passage(monkeypatch: pytest.MonkeyPatch) -> None:
    # 3 documents of 2, 1 and 3 passages; hand-made inner products.
    p = np.eye(6, dtype=np.float32)
    q = np.array([[0.1, 0.2, 0.5, 0.0, 0.9, 0.3],      # doc 2 (0.9) > doc 1 (0.5) > doc 0 (0.2)
                  [0.7, 0.0, 0.7, 0.1, 0.2, 0.0]], dtype=np.float32)   # doc 0 and doc 1 tie at 0.7
    scores, groups = exact_search_by_group(q, p, np.array([0, 2, 3]), 3)
    assert groups.tolist() == [[2, 1, 0], [0, 1, 2]]    # a tie goes to the lower document
    assert np.allclose(scores, [[0.9, 0.5, 0.2], [0.7, 0.7, 0.2]])
    assert exact_search_by_group(q, p, np.array([0, 2, 3]), 10)[1].shape == (2, 3)
    # One passage per group is plain passage search; query chunking changes nothing.
    monkeypatch.setattr("eval.retrieve.SCORE_CELLS", 6)
    assert exact_search_by_group(q, p, np.arange(6), 4)[1].tolist() == exact_search(q, p, 4)[1].tolist()
    for starts in ([1, 3], [0, 3, 3], [0, 6], []):
        with pytest.raises(ValueError, match="group starts must begin at 0 and increase"):
            exact_search_by_group(q, p, np.array(starts, dtype=np.int64), 2)
