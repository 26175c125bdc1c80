"""Bad knowledge-base files: each gets a DataError naming the file and the record (or line), and
`dpr index` into an existing index leaves that index byte-for-byte as it was."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from common.data import DataError, load_corpus

P1 = {"_id": "p1", "title": "Alpha", "text": "Alpha is the first letter."}
P2 = {"_id": "p2", "title": "Beta", "text": "Beta is the second letter."}


def _jsonl(*records: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


CASES = [
    # (file name, content, regex the message must match: file name first, then the record)
    ("truncated.json", json.dumps([P1, P2])[:-20], r"truncated\.json: invalid JSON at line 1 column \d+"),
    ("truncated.jsonl", _jsonl(P1, P2)[:-15], r"truncated\.jsonl:2: invalid JSON"),
    ("wrongkey.jsonl", _jsonl(P1, {"_id": "p2", "title": "Beta", "txt": "x"}),
     r"wrongkey\.jsonl:2: missing key 'text' \(keys present: \['_id', 'title', 'txt'\]\)"),
    ("noid.jsonl", _jsonl(P1, {"title": "Beta", "text": "x"}), r"noid\.jsonl:2: missing key 'id'"),
    ("wrongkey_nq.json", json.dumps([{"question": "q", "gold_context": P1}, {"question": "q2", "gold": P2}]),
     r"wrongkey_nq\.json: record 1 .*no gold passage.*keys present: \['gold', 'question'\]"),
    ("empty.jsonl", "", r"empty\.jsonl: file is empty"),
    ("blank.jsonl", "\n  \n\n", r"blank\.jsonl: file is empty"),
    ("emptyarray.json", "[]", r"emptyarray\.json: knowledge base is empty"),
    ("dupes.jsonl", _jsonl(P1, P2, {**P1, "text": "Something else."}),
     r"dupes\.jsonl:3: duplicate passage id 'p1' with different text \(first seen at .*dupes\.jsonl:1\)"),
    ("notext.jsonl", _jsonl(P1, {**P2, "text": "   "}), r"notext\.jsonl:2: passage 'p2' has no text"),
    ("nulltext.jsonl", _jsonl(P1, {**P2, "text": None}), r"nulltext\.jsonl:2: missing key 'text'"),
    ("numtext.jsonl", _jsonl({**P1, "text": 42}), r"numtext\.jsonl:1: 'text' must be a string, got int"),
    ("notobject.jsonl", _jsonl(P1, "[1, 2]"), r"notobject\.jsonl:2: expected an object, got list"),
    ("scalar.json", "42", r"scalar\.json: expected a JSON array of records, got int"),
]


@pytest.mark.parametrize("name,content,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_kb_names_file_and_record(tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=expected):
        load_corpus(path)


def test_non_utf8_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(_jsonl(P1).encode() + b'{"_id": "p2", "title": "caf\xe9", "text": "x"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not UTF-8"):
        load_corpus(path)


def test_duplicate_across_files_names_both(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(_jsonl(P1, P2))
    b.write_text(_jsonl({**P2, "text": "Changed."}))
    with pytest.raises(DataError, match=r"b\.jsonl:1: duplicate passage id 'p2'.*first seen at .*a\.jsonl:2"):
        load_corpus([a, b])


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["truncated.jsonl", "dupes.jsonl", "notext.jsonl", "emptyarray.json"])
def test_dpr_index_with_bad_kb_leaves_the_existing_index_intact(tiny_encoder, tmp_path: Path, capsys,
                                                              case: str) -> None:
    from driver.main import main
    from indexer import SearchIndex, build_index

    good = tmp_path / "good.jsonl"
    good.write_text(_jsonl(P1, P2))
    model = tmp_path / "model"
    tiny_encoder.save(model)
    out = build_index(tiny_encoder, [good], tmp_path / "index", model_dir=str(model), progress=False)
    before = _digests(out)
    bad = tmp_path / case
    bad.write_text(dict((c[0], c[1]) for c in CASES)[case])

    code = main(["index", "--model", str(model), "--kb", str(bad), "--out", str(out), "--no-progress"])

    assert code == 2
    assert case in capsys.readouterr().err
    assert _digests(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["good.jsonl", "model", "index", case])
    with SearchIndex.open(out) as index:
        assert len(index) == 2
