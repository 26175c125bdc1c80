"""TREC files and paired comparisons: what dpr eval writes scores the same in pytrec_eval (trec_eval's
own code), and `dpr eval compare` gives the paired difference, its interval and a p-value."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from driver.main import main
from eval.bootstrap import paired_randomization_test
from eval.trec import run_lines


def test_scores_are_made_strictly_decreasing_so_tools_keep_the_rank_order() -> None:
    lines = run_lines({"q": ["a", "b", "c", "d"]}, {"q": [0.9, 0.5, 0.5, 0.7]}, tag="t")
    assert [line.split()[2] for line in lines] == ["a", "b", "c", "d"]
    scores = [float(line.split()[4]) for line in lines]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4 and scores[0] == 0.9
    assert lines[0] == "q Q0 a 1 0.900000000 t"


def test_trec_files_score_the_same_in_pytrec_eval(small_nq: tuple[Path, Path], saved_model: Path,
                                                  tmp_path: Path) -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval", reason="pip install '.[test]' (pytrec_eval-terrier)")
    _, val = small_nq
    report_path, run_path, qrels_path = tmp_path / "r.json", tmp_path / "run.trec", tmp_path / "qrels.txt"
    assert main(["eval", "--data", str(val), "--model", str(saved_model), "--bm25", "--out", str(report_path),
                 "--run-out", str(run_path), "--qrels-out", str(qrels_path), "--resamples", "20",
                 "--no-progress"]) == 0
    report = json.loads(report_path.read_text())
    assert set(report["trec_runs"]) == {"dense", "bm25"} and (tmp_path / "run-bm25.trec").is_file()
    qrels: dict = {}
    for line in qrels_path.read_text().splitlines():
        qid, _, pid, grade = line.split()
        qrels.setdefault(qid, {})[pid] = int(float(grade))
    for system in report["systems"]:
        run: dict = {}
        for line in Path(report["trec_runs"][system["name"]]).read_text().splitlines():
            qid, _, pid, rank, score, _ = line.split()
            run.setdefault(qid, {})[pid] = float(score)
        top10 = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[:10]) for q, d in run.items()}
        full = pytrec_eval.RelevanceEvaluator(qrels, {"success.1,5,10,20,100", "ndcg_cut.10"}).evaluate(run)
        mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
        ours = system["metrics"]

        def mean(measure: str, table: dict = full) -> float:
            return sum(v[measure] for v in table.values()) / len(table)

        for k in (1, 5, 10, 20, 100):
            assert mean(f"success_{k}") == pytest.approx(ours[f"recall@{k}"]["value"], abs=1e-6), (system["name"], k)
        assert mean("ndcg_cut_10") == pytest.approx(ours["ndcg@10"]["value"], abs=1e-6)
        assert mean("recip_rank", mrr) == pytest.approx(ours["mrr@10"]["value"], abs=1e-6)


def test_randomisation_test_by_hand() -> None:
    """Three queries, differences +1, +1, 0: of the 8 sign flips, the ones with |mean| >= 2/3 are
    (+,+,*) and (-,-,*): 4 of 8, so p = 0.5 exactly when every flip is enumerated."""
    a, b = {"q1": 1.0, "q2": 1.0, "q3": 0.0}, {"q1": 0.0, "q2": 0.0, "q3": 0.0}
    p = paired_randomization_test(a, b, n_resamples=20_000, seed=1)
    assert p == pytest.approx(0.5, abs=0.02)
    assert paired_randomization_test(a, a) == 1.0
    big = {f"q{i}": 1.0 for i in range(30)}
    assert paired_randomization_test(big, {q: 0.0 for q in big}) < 0.001
    with pytest.raises(ValueError, match="same queries"):
        paired_randomization_test(a, {"q1": 1.0})


def test_dpr_eval_compare(small_nq: tuple[Path, Path], saved_model: Path, tmp_path: Path, capsys) -> None:
    _, val = small_nq
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    common = ["eval", "--data", str(val), "--resamples", "20", "--no-progress"]
    assert main([*common, "--model", str(saved_model), "--out", str(a)]) == 0
    assert main([*common, "--bm25", "--out", str(b)]) == 0
    capsys.readouterr()
    assert main(["eval", "compare", str(a), str(b), "--metric", "recall@1", "--metric", "ndcg@10"]) == 0
    out = capsys.readouterr().out
    assert "| metric | A: dense | B: bm25 | A - B (95% CI) | p |" in out
    assert out.count("\n| recall@1 |") == 1 and "| ndcg@10 |" in out
    assert main(["eval", "compare", str(a), str(b), "--system-b", "nope"]) == 2
