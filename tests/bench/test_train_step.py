"""``dpr bench train-step`` on the tiny model: every setting timed, the table and JSON written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.train_step import StepBenchOptions, run_bench, step_batches


def test_every_setting_is_timed_in_each_round(tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path) -> None:
    options = StepBenchOptions(data=small_nq[0], model=str(tiny_base), batch_size=2, hard_negatives=1,
                               attention_dropout=("none", "0"), grad_cache=(2, 0), precision=("fp32", "bf16"),
                               rounds=1, out=tmp_path)
    report = run_bench(options, "test")
    rows = report["rows"]
    assert [(r["precision"], r["attention_dropout"], r["checkpoint_rate"], r["grad_cache_chunk"]) for r in rows] == [
        (p, a, c, g) for p in ("fp32", "bf16") for a, c in ((0.1, True), (0.0, False)) for g in (2, 0)]
    assert all(len(r["step_seconds"]) == 1 and r["median_s"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    assert rows[0]["ratio_to_first"] == 1.0 and report["texts_per_step"] == 2 * 3
    saved = json.loads((tmp_path / "train_step.json").read_text())
    assert saved["rows"] == rows and saved["command"] == "test" and saved["machine"]["cores"] >= 1
    table = (tmp_path / "train_step.md").read_text()
    assert "| fp32 | 0.1 (checkpoint's) | chunks of 2 |" in table and "| bf16 | 0 | off |" in table


def test_batches_hold_each_question_its_positive_and_other_passages(small_nq: tuple[Path, Path]) -> None:
    options = StepBenchOptions(data=small_nq[0], batch_size=4, hard_negatives=2)
    batches = step_batches(options, 3)
    assert len({q for b in batches for q in b.qids}) == 12                       # distinct questions
    for b in batches:
        assert len(b.passages) == 4 * 3
        for i in range(4):
            group = b.passages[i * 3:(i + 1) * 3]
            assert group[1].pid != group[0].pid and group[2].pid != group[0].pid
    with pytest.raises(ValueError, match="questions, 48 needed"):
        step_batches(StepBenchOptions(data=small_nq[0], batch_size=16), 3)


@pytest.mark.parametrize("kw, message", [({"attention_dropout": ("1.5",)}, "not none or a rate"),
                                         ({"grad_cache": (-1,)}, "chunks must be >= 0"),
                                         ({"rounds": 0}, "rounds must be >= 1"),
                                         ({"precision": ("fp16",)}, "each must be fp32 or bf16")])
def test_bad_settings_are_refused(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StepBenchOptions(**kw)
