"""Fixtures for the eval tests: a tiny BEIR folder and a saved tiny dual encoder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture()
def beir_folder(tmp_path: Path) -> Path:
    """Four documents, three queries; q1 has two relevant documents (grades 2 and 1), q3 none."""
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [("d1", "Apples", "apple orchards harvest in autumn"), ("d2", "Rivers", "the river flows to the sea"),
            ("d3", "Stars", "stars shine at night in the sky"), ("d4", "Bread", "bakers knead dough at dawn")]
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n"
                                                 for i, t, x in docs))
    queries = [("q1", "when is the apple harvest"), ("q2", "where does a river flow"), ("q3", "night sky")]
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td4\t1\nq2\td2\t1\nq3\td3\t0\n")
    return folder

