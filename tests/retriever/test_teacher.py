"""Teachers score each question's candidates once; batches carry those scores by passage id; mined
files keep them; and the distilled loss has the same gradient plain and gradient-cached."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import Example, Passage, corpus_from_examples, load_examples
from common.fusion import min_max
from retriever.batching import make_batches
from retriever.bm25 import BM25Index
from retriever.encoder import DualEncoder
from retriever.loss import LossConfig
from retriever.mining import bm25_pair_scores, read_mining_input, with_hard_negatives, write_records
from retriever.teacher import (
    DenseTeacher,
    build_teacher,
    read_teacher_scores,
    score_candidates,
    teacher_temperature,
    with_teacher_scores,
)
from retriever.train_step import compute_gradients

KB = [Passage("g", "Casablanca (film)", "Casablanca is a 1942 romantic drama starring Ingrid Bergman."),
      Passage("n1", "Casablanca (city)", "Casablanca is the largest city of Morocco."),
      Passage("n2", "Humphrey Bogart", "Humphrey Bogart was an American actor in a 1942 romantic drama."),
      Passage("n3", "Luge", "Luge is a small one- or two-person sled.")]
EXAMPLE = Example("q", "who starred in the 1942 romantic drama casablanca", answers=("Ingrid Bergman",),
                  positives=(KB[0],))


def test_hybrid_teacher_fuses_min_max_normalised_dense_and_bm25_of_a_frozen_start(tiny_encoder: DualEncoder) -> None:
    teacher = build_teacher("hybrid", tiny_encoder, KB)
    (scores,) = score_candidates(teacher, [EXAMPLE], [KB[1:]])
    assert list(scores) == ["g", "n1", "n2", "n3"]                     # positive first, then the negatives
    q = tiny_encoder.encode_queries([EXAMPLE.question])[0]
    dense = min_max(list(zip((p.pid for p in KB), (tiny_encoder.encode_passages(KB) @ q).tolist())))
    (bm25,) = bm25_pair_scores(BM25Index.build(KB), [EXAMPLE.question], [KB])
    sparse = min_max(list(zip((p.pid for p in KB), bm25.tolist())))
    for pid, value in scores.items():
        assert value == pytest.approx(0.8 * dense[pid] + 0.2 * sparse[pid], abs=1e-5), pid
    # A frozen copy: training the student further changes neither the teacher nor its scores.
    assert all(not p.requires_grad for p in teacher.dense.encoder.parameters())
    with torch.no_grad():
        for p in tiny_encoder.parameters():
            p.add_(0.1)
    assert score_candidates(teacher, [EXAMPLE], [KB[1:]])[0] == pytest.approx(scores)


def test_a_saved_dual_encoder_teacher_scores_its_similarity(saved_model: Path, tiny_encoder: DualEncoder) -> None:
    teacher = build_teacher(str(saved_model), None, KB)
    assert isinstance(teacher, DenseTeacher) and teacher.name == str(saved_model.resolve())
    (scores,) = score_candidates(teacher, [EXAMPLE], [KB[1:3]])
    q = tiny_encoder.encode_queries([EXAMPLE.question])[0]
    expected = tiny_encoder.encode_passages(KB[:3]) @ q
    np.testing.assert_allclose(list(scores.values()), expected, rtol=1e-5)
    assert teacher_temperature(str(saved_model), None) == tiny_encoder.config.temperature == 0.05
    assert teacher_temperature("hybrid", None) == 0.1 and teacher_temperature("hybrid", 2.0) == 2.0
    with pytest.raises(FileNotFoundError, match="saved dual-encoder directory"):
        build_teacher(str(saved_model.parent / "nowhere"), None, KB)


def test_batches_look_up_teacher_scores_by_passage_id() -> None:
    p = [Passage(f"p{i}", f"t{i}", f"text {i}") for i in range(8)]
    examples = [Example("q0", "question 0", positives=(p[0],)), Example("q1", "question 1", positives=(p[1],))]
    # q1's first candidate is q0's positive: the batcher must replace it by the next one (p4).
    negatives = [[p[2], p[3]], [p[0], p[4]]]
    scores = [{"p0": 0.9, "p2": 0.5, "p3": 0.1}, {"p1": 0.8, "p0": 0.7, "p4": 0.3}]
    (batch,) = make_batches(examples, 2, np.random.default_rng(0), 1, negatives, teacher_scores=scores)
    assert batch.teacher_scores.shape == (2, 2) and batch.teacher_scores.dtype == np.float32
    for i, qid in enumerate(batch.qids):
        own = scores[int(qid[1])]
        assert batch.teacher_scores[i].tolist() == pytest.approx([own[q.pid] for q in batch.passages[2 * i:2 * i + 2]])
    assert "p0" not in [q.pid for q in batch.passages[2 * batch.qids.index("q1"):][:2]]
    # No usable candidate: a random filler stands in and has no teacher score (NaN, left out of the KL).
    (batch,) = make_batches(examples, 2, np.random.default_rng(0), 1, [[], []], filler=p[5:],
                            teacher_scores=[{"p0": 1.0}, {"p1": 1.0}])
    assert batch.teacher_scores[:, 0].tolist() == [1.0, 1.0] and np.isnan(batch.teacher_scores[:, 1]).all()
    assert make_batches(examples, 2, np.random.default_rng(0), 1, negatives)[0].teacher_scores is None


def test_mined_file_keeps_teacher_scores_beside_each_context(tmp_path: Path) -> None:
    src = tmp_path / "train.json"
    src.write_text(json.dumps([{"question": EXAMPLE.question, "answers": ["Ingrid Bergman"],
                                "gold_context": {"title": KB[0].title, "text": KB[0].text}},
                               {"question": "a second question", "positive_ctxs": [{"title": "", "text": "pos"}]}]))
    records, examples = read_mining_input(src)
    pos_pid = examples[0].positives[0].pid
    out = [with_teacher_scores(with_hard_negatives(records[0], KB[1:3]), {pos_pid: 0.9, "n1": 0.5, "n2": 0.25},
                               "hybrid"),
           with_teacher_scores(with_hard_negatives(records[1], KB[1:2]), {"n1": 0.4}, "hybrid")]   # positive unscored
    write_records(tmp_path / "mined.jsonl", out)
    first = json.loads((tmp_path / "mined.jsonl").read_text().splitlines()[0])
    assert first["gold_context"]["teacher_score"] == 0.9 and first["teacher"] == "hybrid"
    assert [n["teacher_score"] for n in first["hard_negatives"]] == [0.5, 0.25]
    assert "teacher_score" not in records[0]["gold_context"]                # the input record is left alone
    scores, teachers = read_teacher_scores(*read_mining_input(tmp_path / "mined.jsonl"))
    assert scores == [{pos_pid: 0.9, "n1": 0.5, "n2": 0.25}, None] and teachers == {"hybrid"}
    assert [p.pid for p in load_examples(tmp_path / "mined.jsonl")[0].hard_negatives] == ["n1", "n2"]


def test_distilled_cached_gradient_equals_the_plain_one(tiny_encoder: DualEncoder, small_nq: tuple[Path, Path]) -> None:
    examples = load_examples(small_nq[0])[:7]
    kb = corpus_from_examples(load_examples(small_nq[0]))
    negatives = [[kb[(i + 7) % len(kb)], kb[(i + 8) % len(kb)]] for i in range(7)]
    rng = np.random.default_rng(1)
    # Every positive and the first candidate scored; the second candidate is not: a NaN in each group.
    scores = [{ex.positives[0].pid: float(rng.normal()), negs[0].pid: float(rng.normal())}
              for ex, negs in zip(examples, negatives)]
    (batch,) = make_batches(examples, 7, np.random.default_rng(0), 2, negatives, kb, teacher_scores=scores)
    assert np.isnan(batch.teacher_scores).any() and np.isfinite(batch.teacher_scores[:, 0]).all()
    config = LossConfig(temperature=0.05, symmetric=True, distill_weight=0.5, teacher_temperature=0.5)
    tiny_encoder.eval()                                   # no dropout: chunking alone must not change anything

    def grads(**kw) -> tuple[float, dict[str, torch.Tensor]]:
        tiny_encoder.zero_grad(set_to_none=True)
        loss, _ = compute_gradients(tiny_encoder, batch, torch.device("cpu"), loss_config=config, **kw)
        return loss, {n: p.grad.clone() for n, p in tiny_encoder.named_parameters() if p.grad is not None}

    plain_loss, plain = grads()
    cached_loss, cached = grads(grad_cache_chunk=3)
    contrastive_only, _ = compute_gradients(tiny_encoder, batch, torch.device("cpu"),
                                            loss_config=LossConfig(temperature=0.05, symmetric=True))
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5) and plain_loss != pytest.approx(contrastive_only)
    assert plain.keys() == cached.keys() and len(plain) > 10
    scale = max(float(g.abs().max()) for g in plain.values())
    for name in plain:
        assert torch.allclose(plain[name], cached[name], rtol=1e-3, atol=1e-5 * scale), name
