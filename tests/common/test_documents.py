"""Document files for chunked indexing: what is read back, and a DataError naming the place for each bad record."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.data import DataError
from common.documents import Document, check_metadata, parse_document, read_documents

D1 = {"id": "d1", "title": "Alpha", "text": "Alpha is the first letter.", "metadata": {"year": 1999, "lang": "en"}}
D2 = {"_id": "d2", "title": "Beta", "text": "Beta is the second letter."}
D3 = {"id": 3, "text": "Gamma has no title.", "metadata": {"score": 0.5, "draft": False, "src.name-x": "wiki"}}


def _jsonl(path: Path, *records: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in records), encoding="utf-8")
    return path


def test_reads_three_documents(tmp_path: Path) -> None:
    docs = read_documents(_jsonl(tmp_path / "docs.jsonl", D1, D2, D3))
    assert [d.doc_id for d in docs] == ["d1", "d2", "3"]
    assert docs[0] == Document("d1", "Alpha", "Alpha is the first letter.")
    assert docs[0].metadata == {"year": 1999, "lang": "en"}
    assert docs[1].title == "Beta" and docs[1].metadata is None
    assert docs[2].title == "" and docs[2].text == "Gamma has no title."
    assert docs[2].metadata == {"score": 0.5, "draft": False, "src.name-x": "wiki"}
    assert type(docs[2].metadata["draft"]) is bool


def test_reads_json_array_and_several_files(tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    a.write_text(json.dumps([D1, D2]))
    b = _jsonl(tmp_path / "b.jsonl", D3)
    assert [d.doc_id for d in read_documents([a, str(b)])] == ["d1", "d2", "3"]
    assert [d.doc_id for d in read_documents(str(a))] == ["d1", "d2"]


def test_unicode_text(tmp_path: Path) -> None:
    text = "Café naïve — 東京タワー 🙂 Zürich\u00a0end"
    docs = read_documents(_jsonl(tmp_path / "u.jsonl", {"id": "ü-1", "title": "Ünïcode", "text": text}))
    assert docs[0].text == text and docs[0].title == "Ünïcode" and docs[0].doc_id == "ü-1"


def test_check_metadata_returns_a_new_dict() -> None:
    value = {"a": 1}
    checked = check_metadata(value, "here")
    assert checked == value and checked is not value
    assert check_metadata(None, "here") is None


GOOD = {"id": "g1", "text": "fine text"}

CASES = [
    # (file content lines, regex the message must match)
    ([GOOD, '{"id": "g2", "text": '], r"bad\.jsonl:2: invalid JSON"),
    ([GOOD, {"id": "g2", "title": "t"}], r"bad\.jsonl:2: missing key 'text'"),
    ([{"id": "g2", "text": "   \n\t"}], r"bad\.jsonl:1: document 'g2' has no text"),
    ([{"id": "g2", "text": ""}], r"bad\.jsonl:1: document 'g2' has no text"),
    ([{"id": "a#1", "text": "x"}], r"bad\.jsonl:1: document id 'a#1' contains '#'"),
    ([{"title": "t", "text": "x"}], r"bad\.jsonl:1: missing key 'id' \(or '_id'\)"),
    ([{"id": "", "text": "x"}], r"bad\.jsonl:1: document id is empty"),
    ([{"id": "x" * 513, "text": "x"}], r"bad\.jsonl:1: document id is 513 characters long \(at most 512\)"),
    ([{"id": ["a"], "text": "x"}], r"bad\.jsonl:1: document id must be a string or an integer, got list"),
    ([{"id": True, "text": "x"}], r"bad\.jsonl:1: document id must be a string or an integer, got bool"),
    ([{"id": "a", "_id": "b", "text": "x"}], r"bad\.jsonl:1: both 'id' \('a'\) and '_id' \('b'\) given"),
    ([{"id": "g2", "text": 5}], r"bad\.jsonl:1: 'text' must be a string, got int"),
    ([{"id": "g2", "title": 5, "text": "x"}], r"bad\.jsonl:1: 'title' must be a string, got int"),
    ([GOOD, "[1, 2]"], r"bad\.jsonl:2: expected an object, got list"),
    ([GOOD, {"id": "g2", "text": "x", "metdata": {}}], r"bad\.jsonl:2: unknown key\(s\) \['metdata'\]"),
    ([{"id": "g2", "text": "x", "metadata": {"year": [1999]}}],
     r"bad\.jsonl:1 \(document 'g2'\): metadata field 'year' must be a string, number or boolean, got list"),
    ([{"id": "g2", "text": "x", "metadata": {"src": {"a": 1}}}],
     r"bad\.jsonl:1 \(document 'g2'\): metadata field 'src' must be a string, number or boolean, got object"),
    ([{"id": "g2", "text": "x", "metadata": {"src": None}}],
     r"bad\.jsonl:1 \(document 'g2'\): metadata field 'src' must be a string, number or boolean, got null"),
    (['{"id": "g2", "text": "x", "metadata": {"score": NaN}}'],
     r"bad\.jsonl:1 \(document 'g2'\): metadata field 'score' must be a finite number, got nan"),
    (['{"id": "g2", "text": "x", "metadata": {"score": -Infinity}}'],
     r"bad\.jsonl:1 \(document 'g2'\): metadata field 'score' must be a finite number, got -inf"),
    ([{"id": "g2", "text": "x", "metadata": {"1year": 1}}], r"bad\.jsonl:1 .*metadata field '1year' is not a valid name"),
    ([{"id": "g2", "text": "x", "metadata": {"": 1}}], r"bad\.jsonl:1 .*metadata field '' is not a valid name"),
    ([{"id": "g2", "text": "x", "metadata": {"a b": 1}}], r"bad\.jsonl:1 .*metadata field 'a b' is not a valid name"),
    ([{"id": "g2", "text": "x", "metadata": {"k" * 65: 1}}], r"bad\.jsonl:1 .*metadata field 'k{65}' is not a valid"),
    ([{"id": "g2", "text": "x", "metadata": {"k\n": 1}}], r"bad\.jsonl:1 .*metadata field 'k\\n' is not a valid"),
    ([{"id": "g2", "text": "x", "metadata": [1]}], r"bad\.jsonl:1 \(document 'g2'\): metadata must be an object, got list"),
]


@pytest.mark.parametrize(("lines", "pattern"), CASES, ids=[c[1][:40] for c in CASES])
def test_bad_records(tmp_path: Path, lines: list, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        read_documents(_jsonl(tmp_path / "bad.jsonl", *lines))


def test_longest_metadata_key_and_id_are_accepted() -> None:
    doc = parse_document({"id": "x" * 512, "text": "t", "metadata": {"k" * 64: 1, "_": "v"}}, "here")
    assert len(doc.doc_id) == 512 and set(doc.metadata) == {"k" * 64, "_"}


def test_duplicate_id_names_both_places(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a.jsonl", D1, D2)
    b = _jsonl(tmp_path / "b.jsonl", D3, {"id": "d2", "text": "another"})
    with pytest.raises(DataError, match=r"b\.jsonl:2: duplicate document id 'd2' \(first seen at .*a\.jsonl:2\)"):
        read_documents([a, b])
    # An integer id and the same id as a string are the same document.
    with pytest.raises(DataError, match=r"c\.jsonl:2: duplicate document id '3' \(first seen at .*c\.jsonl:1\)"):
        read_documents(_jsonl(tmp_path / "c.jsonl", D3, {"id": "3", "text": "x"}))


def test_duplicate_in_json_array_names_records(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps([D1, D1]))
    with pytest.raises(DataError, match=r"a\.json: record 1: duplicate document id 'd1' \(first seen at .*a\.json: record 0\)"):
        read_documents(path)


def test_empty_collection(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text("[]")
    with pytest.raises(DataError, match=r"empty\.json: no documents"):
        read_documents(path)
    with pytest.raises(DataError, match="no documents"):
        read_documents([])
    with pytest.raises(DataError, match=r"missing\.jsonl: no such file"):
        read_documents(tmp_path / "missing.jsonl")
