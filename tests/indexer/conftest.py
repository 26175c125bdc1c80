"""Small knowledge bases (real nq_oracle passages) and a tiny-encoder index built over them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

DEMO_DATA = Path(__file__).resolve().parents[2] / "data" / "nq_oracle"


def gold_records(source: str, start: int, stop: int) -> list[dict]:
    """``_id,title,text`` records from the gold contexts of an nq_oracle file, unique by text."""
    seen: dict[str, dict] = {}
    for i, record in enumerate(json.loads((DEMO_DATA / source).read_text())):
        ctx = record["gold_context"]
        seen.setdefault(ctx["text"], {"_id": f"{source[10:13]}-{i}", "title": ctx["title"], "text": ctx["text"]})
    return list(seen.values())[start:stop]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture()
def make_kb(tmp_path: Path):
    """``make_kb(name, start, stop, source=train)``: a JSONL knowledge base of real gold passages."""
    def make(name: str, start: int, stop: int, source: str = "nq-oracle-train.json") -> Path:
        return write_jsonl(tmp_path / name, gold_records(source, start, stop))
    return make


@pytest.fixture()
def kb80(make_kb) -> Path:
    """80 passages as BEIR-style JSONL."""
    return make_kb("kb80.jsonl", 0, 80)


@pytest.fixture()
def built(tiny_encoder, kb80: Path, tmp_path: Path) -> Path:
    """A flat index over ``kb80`` built with ``tiny_encoder``."""
    from indexer import build_index

    return build_index(tiny_encoder, [kb80], tmp_path / "idx", model_dir="tiny", progress=False)
