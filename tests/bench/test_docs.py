"""The README and docs/benchmarks.md: their result tables are generated from the JSON in docs/results
and cannot drift from it; the settings table lists every server setting; the README stays short."""
from __future__ import annotations

import re

from bench.docs import DOCS, README, SERVING, main, render, settings_table


def test_generated_blocks_are_up_to_date() -> None:
    assert main(["--check"]) == 0, "run `python -m bench.docs` and commit README.md / docs/benchmarks.md"
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        assert render(text) == text


def test_every_result_block_names_its_command() -> None:
    text = README.read_text(encoding="utf-8")
    for name in ("recall", "latency", "reliability", "peers"):
        block = re.search(rf"<!-- generated:{name} -->\n(.*?)<!-- /generated:{name} -->", text, re.S).group(1)
        assert "Command: `" in block or "No " in block, name


def test_settings_table_lists_every_setting() -> None:
    from server.settings import Settings

    table = settings_table()
    assert table in SERVING.read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"`DPR_{name.upper()}`" in table, name
    assert "`--index`" in table and "| `DPR_ADMIN_TOKEN` | `-` |" in table       # secrets: env only


def test_readme_is_for_users_and_short() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) < 15_000
    assert text.splitlines()[3:5] == ["make run    # set up .venv, train briefly on the bundled NQ demo data, build "
                                      "the index, serve on 127.0.0.1:8000",
                                      "make test   # set up .venv and run the test suite"]


def test_recall_summary_shows_the_paired_difference_and_the_training_cost() -> None:
    from bench.docs import recall_summary

    def metric(v: float) -> dict:
        return {"ndcg@10": {"value": v, "ci_low": v - 0.02, "ci_high": v + 0.02}}

    report = {"data": {"test_queries": 162, "kb_passages": 5183}, "command": "dpr bench recall --x",
              "created_at": "2026-12-01T20:00:00+00:00",
              "rows": [{"name": "zero-shot", "metrics": metric(0.65), "cost": {"train_seconds": None}},
                       {"name": "tuned", "metrics": metric(0.74),
                        "vs": {"zero-shot": {"ndcg@10": {"diff": 0.09, "low": 0.05, "high": 0.13, "p": 0.0001}}},
                        "cost": {"train_seconds": 1500.0, "train_peak_rss_mb": 3072.0}}]}
    text = recall_summary(report)
    assert "| zero-shot | 65.0 (63.0-67.0) | - | - |" in text
    assert "| tuned | 74.0 (72.0-76.0) | +9.0 (p<0.001) |" in text and "| 25.0 min, 3.0 GB |" in text
    assert "162 held-out claims, 5183 passages" in text and "Command: `dpr bench recall --x` (run 2026-12-01)" in text

    report["rows"].append({"name": "hybrid (tuned + bm25)", "kind": "hybrid", "metrics": metric(0.78)})
    for row in report["rows"][:2]:
        row["kind"] = "dense"
    short = recall_summary(report, only=("zero-shot", "hybrid"))
    assert "| zero-shot |" in short and "| hybrid (tuned + bm25) | 78.0" in short and "| tuned |" not in short
    assert "1 more rows, recipes and the full table" in short


def test_selection_table_shows_each_trained_rows_validation_by_epoch() -> None:
    from bench.docs import _selection_table

    def epochs(*values: float) -> list[dict]:
        return [{"epoch": i, "val_metrics": {"ndcg@10": v, "recall@5": v + 0.1}} for i, v in enumerate(values)]

    beir = {"data": {"split": {"seed": 42}, "val": "scifact"},
            "training": {"fast": {"config": {"select_metric": "auto", "val_k": 5}, "epochs": epochs(0.64, 0.68),
                                  "best_epoch": 1, "total_seconds": 900.0},
                         "old": {"config": {"select_metric": "recall@5"}, "epochs": epochs(0.64, 0.66, 0.65),
                                 "best_epoch": 1, "total_seconds": 60.0, "reused": True}}}
    text = _selection_table(beir)
    assert "on the dev split" in text
    assert "| fast | ndcg@10 | 64.0 → 68.0 | epoch 1 | 15.0 min |" in text
    assert "| old | recall@5 | 74.0 → 76.0 → 75.0 | epoch 1 | 1.0 min (earlier run) |" in text
    nq = {"data": {"val": "data/nq-oracle-val.json"},
          "training": {"hard": {"config": {"select_metric": "auto", "val_k": 5}, "epochs": epochs(0.9),
                                "best_epoch": 0}}}
    text = _selection_table(nq)
    assert "on nq-oracle-val.json, the held-out set itself" in text and "| hard | recall@5 | 100.0 | epoch 0 | - |" in text
    assert _selection_table({"data": {}}) == ""


def test_sentence_index_block_pairs_every_row_with_whole_passages_dense() -> None:
    from bench.docs_sentences import sentence_index_block, sentence_index_line

    def system(name: str, values: list[float]) -> dict:
        per_query = {f"q{i}": v for i, v in enumerate(values)}
        mean = sum(values) / len(values)
        stats = {"value": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1}
        return {"name": name, "n_queries": len(values), "metrics": {"ndcg@10": stats, "recall@5": stats},
                "per_query": {"ndcg@10": per_query, "recall@5": per_query},
                "index": {"model": "minilm", "chunk": "sentences:1"}, "index_dir": "/elsewhere/idx"}

    whole = {"command": "dpr eval W", "systems": [system("dense", [0.5] * 8), system("hybrid-interp", [0.5] * 8)]}
    sentences = {"command": "dpr eval --index idx S", "created_at": "2026-12-07T00:00:00", "data": {"path": "split"},
                 "systems": [system("dense", [0.5] * 8), system("hybrid-interp", [1.0] * 8)]}
    block = sentence_index_block(sentences, whole)
    rows = [line for line in block.splitlines() if line.startswith("| ")]
    assert rows[1] == "| whole passages, dense | 50.0 (40.0-60.0) | - | 50.0 (40.0-60.0) | - |"
    assert rows[2].endswith("| +0.0 (p=1.000) | 50.0 (40.0-60.0) | +0.0 (p=1.000) |")
    assert "| +50.0 (p=0.008) |" in rows[4]       # 8 queries all better: 2 of 256 sign patterns as extreme
    assert "`dpr index --model minilm --kb split/corpus.jsonl --chunk sentences:1 --out idx`" in block
    assert "`dpr eval --index idx S`" in block and "`dpr eval W`" in block
    assert "from 50.0 to 100.0 nDCG@10 here (+50.0, p=0.008" in sentence_index_line(sentences, whole)
    assert sentence_index_block(None, whole).startswith("No sentence-index run")
