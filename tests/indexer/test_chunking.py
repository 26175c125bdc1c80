"""Chunking documents into windows: specs, exact character offsets, no lost or duplicated text."""
from __future__ import annotations

import re

import pytest

from common.data import DataError, Passage
from common.documents import Document
from indexer.chunking import ChunkSpec, check_token_window, chunk_document, chunk_documents, chunk_passages


def _words(text: str) -> list[str]:
    return re.findall(r"\S+", text)


def _doc(n_words: int, doc_id: str = "d") -> Document:
    return Document(doc_id, "Title", " ".join(f"w{i}" for i in range(n_words)), metadata={"year": 2001})


def _check_offsets(doc: Document, passages: list) -> None:
    for p in passages:
        assert doc.text[p.start:p.end] == p.text
        assert p.text == p.text.strip() and p.text
        assert p.doc_id == doc.doc_id and p.title == doc.title and p.metadata == doc.metadata


# ----------------------------------------------------------------------------- specs


@pytest.mark.parametrize(("spec", "unit", "size", "stride", "canonical"), [
    ("words:100", "words", 100, 100, "words:100"),
    ("words:100:50", "words", 100, 50, "words:100:50"),
    ("words:100:100", "words", 100, 100, "words:100"),
    ("tokens:200", "tokens", 200, 200, "tokens:200"),
    ("tokens:200:100", "tokens", 200, 100, "tokens:200:100"),
    ("words:1", "words", 1, 1, "words:1"),
    ("sentences:1", "sentences", 1, 1, "sentences:1"),
    ("Sentences:3:1", "sentences", 3, 1, "sentences:3:1"),
])
def test_spec_parse_and_str(spec: str, unit: str, size: int, stride: int, canonical: str) -> None:
    parsed = ChunkSpec.parse(spec)
    assert (parsed.unit, parsed.size, parsed.stride) == (unit, size, stride)
    assert str(parsed) == canonical
    assert ChunkSpec.parse(str(parsed)) == parsed


@pytest.mark.parametrize(("spec", "pattern"), [
    ("sentence:3", r"unknown unit 'sentence'"),
    ("chars:100", r"unknown unit 'chars'"),
    ("words", r"expected UNIT:SIZE"),
    ("words:1:1:1", r"expected UNIT:SIZE"),
    ("", r"expected UNIT:SIZE"),
    ("100", r"expected UNIT:SIZE"),
    ("words:abc", r"size 'abc' is not a whole number"),
    ("words:1.5", r"size '1.5' is not a whole number"),
    ("words:", r"size '' is not a whole number"),
    ("words:-5", r"size '-5' is not a whole number"),
    ("words:+5", r"size '\+5' is not a whole number"),
    ("words:10:x", r"stride 'x' is not a whole number"),
    ("words:0", r"size must be at least 1, got 0"),
    ("words:10:0", r"stride must be at least 1, got 0"),
    ("words:10:11", r"stride 11 is larger than size 10"),
    ("tokens:0", r"size must be at least 1"),
])
def test_bad_specs(spec: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern) as info:
        ChunkSpec.parse(spec)
    # Every message shows the form it expected.
    assert "words:100:50" in str(info.value)
    assert repr(spec) in str(info.value)


def test_spec_constructor_validates() -> None:
    with pytest.raises(ValueError, match="stride 6 is larger than size 5"):
        ChunkSpec("words", 5, 6)
    with pytest.raises(ValueError, match="unknown unit"):
        ChunkSpec("lines", 5, 5)


# ----------------------------------------------------------------------------- words


@pytest.mark.parametrize("n_words", [1, 9, 10, 11, 20, 25, 99, 100, 101])
def test_no_overlap_keeps_every_word_once(n_words: int) -> None:
    doc = _doc(n_words)
    passages = chunk_document(doc, ChunkSpec.parse("words:10"))
    assert [p.pid for p in passages] == [f"d#{i}" for i in range(len(passages))]
    assert len(passages) == -(-n_words // 10)
    assert [w for p in passages for w in _words(p.text)] == _words(doc.text)
    assert all(len(_words(p.text)) <= 10 for p in passages)
    _check_offsets(doc, passages)


@pytest.mark.parametrize("n_words", [10, 11, 14, 15, 16, 20, 23, 47])
def test_overlap_shares_stride_words(n_words: int) -> None:
    doc = _doc(n_words)
    words = _words(doc.text)
    passages = chunk_document(doc, ChunkSpec.parse("words:10:5"))
    _check_offsets(doc, passages)
    windows = [_words(p.text) for p in passages]
    for i, (a, b) in enumerate(zip(windows, windows[1:])):
        assert len(a) == 10
        assert a[5:] == b[:5], f"windows {i} and {i + 1} must share exactly 5 words"
        assert a[:5] + b[:5] == words[5 * i:5 * i + 10]
        # No window lies inside the previous one: each adds at least one new word.
        assert passages[i + 1].end > passages[i].end
    assert windows[0][0] == words[0]
    assert passages[-1].end == len(doc.text) and windows[-1][-1] == words[-1]
    assert set().union(*map(set, windows)) == set(words)
    # The expected count: windows start every 5 words until one reaches the last word.
    assert len(passages) == 1 + max(0, -(-(n_words - 10) // 5))


def test_overlap_on_exact_fit_has_no_trailing_window() -> None:
    # 20 words, windows 0-9, 5-14, 10-19: a window at 15 would lie inside 10-19.
    passages = chunk_document(_doc(20), ChunkSpec.parse("words:10:5"))
    assert [_words(p.text)[0] for p in passages] == ["w0", "w5", "w10"]


def test_stride_one() -> None:
    doc = _doc(6)
    passages = chunk_document(doc, ChunkSpec.parse("words:4:1"))
    assert [p.text for p in passages] == ["w0 w1 w2 w3", "w1 w2 w3 w4", "w2 w3 w4 w5"]


def test_unicode_offsets() -> None:
    text = "Café naïve résumé — 東京タワー は 高い 🙂🎉 smile 👩‍👩‍👧 family e\u0301 combining end"
    doc = Document("ü", "Ünï", text)
    passages = chunk_document(doc, ChunkSpec.parse("words:3"))
    _check_offsets(doc, passages)
    assert [w for p in passages for w in _words(p.text)] == text.split()
    assert passages[1].text == "— 東京タワー は"
    assert passages[2].text == "高い 🙂🎉 smile"
    assert passages[1].start == text.index("—")


def test_whitespace_variations_keep_offsets() -> None:
    text = "  alpha\tbeta\n\ngamma   delta\r\n epsilon \u00a0 zeta\u3000eta\x0bnu  \n"
    doc = Document("ws", "", text)
    passages = chunk_document(doc, ChunkSpec.parse("words:2"))
    _check_offsets(doc, passages)
    assert [p.text for p in passages] == ["alpha\tbeta", "gamma   delta", "epsilon \u00a0 zeta", "eta\x0bnu"]
    assert passages[0].start == 2 and passages[-1].end == text.rindex("nu") + 2


def test_short_document_is_one_stripped_passage() -> None:
    doc = Document("s", "T", "\n  just a few words here \t\n", metadata={"k": "v"})
    [p] = chunk_document(doc, ChunkSpec.parse("words:100:50"))
    assert p.text == doc.text.strip() and p.pid == "s#0" and p.metadata == {"k": "v"}
    assert (p.start, p.end) == (3, 3 + len("just a few words here"))


def test_whitespace_document_raises_naming_it() -> None:
    with pytest.raises(DataError, match=r"document 'blank-7' has no text"):
        chunk_document(Document("blank-7", "T", " \t\n\u3000 "), ChunkSpec.parse("words:10"))
    with pytest.raises(DataError, match=r"document 'blank-7'"):
        chunk_documents([_doc(3), Document("blank-7", "T", "\n")], ChunkSpec.parse("words:10"))


def test_chunk_documents_with_spec() -> None:
    passages = chunk_documents([_doc(25, "a"), _doc(5, "b")], ChunkSpec.parse("words:10"))
    assert [p.pid for p in passages] == ["a#0", "a#1", "a#2", "b#0"]
    assert [p.doc for p in passages] == ["a", "a", "a", "b"]


def test_chunk_documents_without_spec() -> None:
    docs = [Document("a", "A", "  first document  ", metadata={"year": 1}), Document("b", "B", "second")]
    passages = chunk_documents(docs, None)
    assert [(p.pid, p.doc_id, p.title, p.text, p.start, p.end) for p in passages] == [
        ("a", "a", "A", "  first document  ", 0, 18), ("b", "b", "B", "second", 0, 6)]
    assert passages[0].metadata == {"year": 1} and passages[1].metadata is None


def test_chunk_documents_refuses_duplicate_pids() -> None:
    with pytest.raises(DataError, match=r"duplicate passage id 'a'"):
        chunk_documents([Document("a", "", "x"), Document("a", "", "y")], None)
    with pytest.raises(DataError, match=r"duplicate passage id 'a#0'"):
        chunk_documents([Document("a", "", "x"), Document("a", "", "y")], ChunkSpec.parse("words:5"))


# ----------------------------------------------------------------------------- tokens


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from retriever.encoder import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("minilm"))


TOKEN_TEXT = ("The Eiffel Tower, completed in 1889, is a wrought-iron lattice tower in Paris. "
              "Café naïve résumé — 東京タワー は 高い 🙂 internationalization  unbelievably\tlong\nwords. ") * 6


def _token_spans(tokenizer, text: str) -> list[tuple[int, int]]:
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False, verbose=False)
    return [(s, e) for s, e in enc["offset_mapping"] if e > s]


@pytest.mark.parametrize("spec", ["tokens:16", "tokens:16:8", "tokens:7:3", "tokens:1000"])
def test_token_windows(tokenizer, spec: str) -> None:
    parsed = ChunkSpec.parse(spec)
    doc = Document("t", "Tok", TOKEN_TEXT)
    spans = _token_spans(tokenizer, doc.text)
    assert len(spans) > 100
    passages = chunk_document(doc, parsed, tokenizer)
    _check_offsets(doc, passages)
    covered = []
    for i, p in enumerate(passages):
        inside = [j for j, (s, e) in enumerate(spans) if s >= p.start and e <= p.end]
        assert 1 <= len(inside) <= parsed.size
        assert inside[0] == i * parsed.stride
        assert spans[inside[0]][0] == p.start and spans[inside[-1]][1] == p.end
        covered.extend(inside)
    assert set(covered) == set(range(len(spans)))
    assert passages[-1].end == spans[-1][1]
    if parsed.size < len(spans):
        assert len(passages) == 1 + -(-(len(spans) - parsed.size) // parsed.stride)
    else:
        assert len(passages) == 1 and passages[0].text == doc.text.strip()


def test_token_windows_without_overlap_keep_text_once(tokenizer) -> None:
    doc = Document("t", "", TOKEN_TEXT)
    spans = _token_spans(tokenizer, doc.text)
    passages = chunk_document(doc, ChunkSpec.parse("tokens:10"), tokenizer)
    # Every token lies in exactly one window, in order.
    per_window = [[sp for sp in spans if sp[0] >= p.start and sp[1] <= p.end] for p in passages]
    assert [sp for window in per_window for sp in window] == spans
    # Consecutive windows abut: only whitespace (or nothing, mid-word) lies between them.
    for a, b in zip(passages, passages[1:]):
        assert a.end <= b.start and not doc.text[a.end:b.start].strip()
    assert passages[0].start == 0 and passages[-1].end == len(doc.text.rstrip())


def test_tokens_spec_needs_tokenizer() -> None:
    with pytest.raises(ValueError, match="a tokens spec needs the model's tokenizer"):
        chunk_document(_doc(5), ChunkSpec.parse("tokens:10"))
    with pytest.raises(ValueError, match="a tokens spec needs the model's tokenizer"):
        chunk_documents([_doc(5)], ChunkSpec.parse("tokens:10"))


def test_check_token_window() -> None:
    check_token_window(ChunkSpec.parse("tokens:254"), 256)
    check_token_window(ChunkSpec.parse("words:1000"), 256)  # words are not counted against the model length
    with pytest.raises(ValueError, match=r"the largest size allowed is 254"):
        check_token_window(ChunkSpec.parse("tokens:255"), 256)
    with pytest.raises(ValueError, match=r"largest size allowed is 126"):
        check_token_window(ChunkSpec.parse("tokens:256:128"), 128)


# ----------------------------------------------------------------------------- sentences

ABSTRACT = ("Dr. Smith measured 3.5 mg of aspirin. Levels rose sharply (p < 0.01)!  Was it dose dependent? "
            "Yes, in mice.\nNo effect in rats")


def test_sentence_windows_are_exact_sentences() -> None:
    doc = Document("a1", "A title", ABSTRACT, metadata={"year": 2001})
    passages = chunk_document(doc, ChunkSpec.parse("sentences:1"))
    _check_offsets(doc, passages)
    assert [p.text for p in passages] == ["Dr. Smith measured 3.5 mg of aspirin.", "Levels rose sharply (p < 0.01)!",
                                          "Was it dose dependent?", "Yes, in mice.", "No effect in rats"]
    assert [p.pid for p in passages] == [f"a1#{i}" for i in range(5)]


def test_sentence_windows_overlap_by_size_minus_stride() -> None:
    doc = Document("a1", "", ABSTRACT)
    passages = chunk_document(doc, ChunkSpec.parse("sentences:2:1"))
    _check_offsets(doc, passages)
    assert [p.text for p in passages] == [
        "Dr. Smith measured 3.5 mg of aspirin. Levels rose sharply (p < 0.01)!",
        "Levels rose sharply (p < 0.01)!  Was it dose dependent?",
        "Was it dose dependent? Yes, in mice.",
        "Yes, in mice.\nNo effect in rats"]
    # A document of one sentence (or none ending in a mark) is one passage, the whole stripped text.
    [one] = chunk_document(Document("b", "", "  no full stop here  "), ChunkSpec.parse("sentences:3"))
    assert one.text == "no full stop here" and (one.start, one.end) == (2, 19)


def test_chunk_passages_groups_pieces_by_record() -> None:
    records = [Passage("p1", "T1", "One. Two. Three."), Passage("p2", "T2", "Alone"), Passage("p3", "", "Cells grew. Mice died.")]
    pieces, starts = chunk_passages(records, ChunkSpec.parse("sentences:1"))
    assert [p.pid for p in pieces] == ["p1#0", "p1#1", "p1#2", "p2#0", "p3#0", "p3#1"]
    assert starts == [0, 3, 4]
    assert [p.title for p in pieces] == ["T1"] * 3 + ["T2", "", ""]
    with pytest.raises(DataError, match="duplicate passage id 'p1#0'"):
        chunk_passages([records[0], records[0]], ChunkSpec.parse("sentences:1"))
