"""The search page in a real browser: headless Chromium (Debian's `chromium`) loads it from a live
`dpr serve`, its JavaScript runs the search, and the rendered DOM holds the results, the status line
and, for a request the server refuses, the error box. `.ci/run` installs Chromium; under CI=true this
test runs or fails, on a developer machine without Chromium it is skipped with the reason."""
from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from reliability.serve_proc import start_server

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=15000"]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no chromium on PATH: .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("headless Chromium not installed (apt-get install -y chromium)")
    return found


@pytest.fixture(scope="module")
def page_server(index_a: Path, tmp_path_factory: pytest.TempPathFactory):
    server = start_server(index_a, tmp_path_factory.mktemp("page") / "serve.log")
    yield server
    server.stop()


def _browse(chromium: str, url: str, profile: Path, *extra: str) -> str:
    done = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *extra, url], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _element(dom: str, element_id: str) -> str:
    match = re.search(rf'<(\w+)[^>]*\bid="{element_id}"[^>]*>(.*?)</\1>', dom, re.S)
    assert match, f"no #{element_id} in the rendered page"
    return match.group(0)


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def test_the_page_renders_results_in_a_real_browser(page_server, kb_files, tmp_path: Path) -> None:
    chromium = _chromium()
    url = f"{page_server.url}/?" + urllib.parse.urlencode({"q": "who sang the song", "k": "5"})
    dom = _browse(chromium, url, tmp_path / "profile", "--dump-dom")
    results = _element(dom, "results")
    titles = [_text(t) for t in re.findall(r'<span class="title">(.*?)</span>', results, re.S)]
    assert len(titles) == 5 and [t.split(". ", 1)[0] for t in titles] == ["1", "2", "3", "4", "5"]
    import json

    known = {r["gold_context"]["title"] for r in json.loads(kb_files["a"].read_text())}
    assert all(t.split(". ", 1)[1] in known for t in titles), titles
    assert re.fullmatch(r"5 results \(hybrid\) in [\d.]+ ms", _text(_element(dom, "status")))
    assert "display: none" in _element(dom, "error") or not _text(_element(dom, "error"))
    assert "style=" not in _element(dom, "docs-label")      # passage records: no per-document choice shown
    shot = tmp_path / "page.png"
    _browse(chromium, url, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1100,900")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_a_refused_request_shows_the_error_box(page_server, tmp_path: Path) -> None:
    chromium = _chromium()
    url = f"{page_server.url}/?" + urllib.parse.urlencode({"q": "x" * 1200, "k": "5"})     # over max_query_chars
    dom = _browse(chromium, url, tmp_path / "profile", "--dump-dom")
    error = _element(dom, "error")
    assert "display: block" in error and "query is too long" in _text(error)
    assert not re.findall(r"<li>", _element(dom, "results")) and not _text(_element(dom, "status"))


@pytest.fixture(scope="module")
def documents_server(tiny_model_dir: Path, kb_files, tmp_path_factory: pytest.TempPathFactory):
    """`dpr serve` of an index cut from 10 documents (3 gold passages each) into sentences."""
    import json

    from indexer import build_index
    from retriever.encoder import load_encoder, model_ref

    root = tmp_path_factory.mktemp("page-docs")
    records = json.loads(kb_files["a"].read_text())
    docs = [{"id": f"doc{i}", "title": records[3 * i]["gold_context"]["title"],
             "text": " ".join(r["gold_context"]["text"] for r in records[3 * i:3 * i + 3])} for i in range(10)]
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    index = build_index(load_encoder(tiny_model_dir), [root / "docs.jsonl"], root / "idx",
                        model_dir=model_ref(tiny_model_dir), progress=False, chunk="sentences:1")
    server = start_server(index, root / "serve.log")
    yield server
    server.stop()


def _hits(dom: str) -> list[tuple[str, str]]:
    """(document, passage) of each rendered result, from its id line."""
    lines = [_text(t) for t in re.findall(r'<div class="id">(.*?)</div>', _element(dom, "results"), re.S)]
    found = [re.fullmatch(r"document (\S+) · passage (\S+)", line) for line in lines]
    assert all(found), lines
    return [(m.group(1), m.group(2)) for m in found]


def test_a_document_index_gives_one_result_per_document_unless_asked(documents_server, tmp_path: Path) -> None:
    """Also: a linked k that the page's list lacks (8) is used as it is."""
    chromium = _chromium()
    url = f"{documents_server.url}/?" + urllib.parse.urlencode({"q": "who sang the song", "k": "8"})
    dom = _browse(chromium, url, tmp_path / "profile", "--dump-dom")
    assert "cut from documents (sentences:1)" in _text(_element(dom, "about"))
    assert "display: flex" in _element(dom, "docs-label")
    assert re.fullmatch(r"8 results \(hybrid, one per document\) in [\d.]+ ms", _text(_element(dom, "status")))
    hits = _hits(dom)
    docs = [doc for doc, _ in hits]
    assert len(hits) == 8 and len(set(docs)) == 8 and all(p.startswith(doc + "#") for doc, p in hits)
    # Unticked (docs=0 in a link): passages, so a document may come back more than once.
    dom = _browse(chromium, url + "&docs=0", tmp_path / "profile2", "--dump-dom")
    assert re.fullmatch(r"8 results \(hybrid\) in [\d.]+ ms", _text(_element(dom, "status")))
    hits = _hits(dom)
    assert len(hits) == 8 and all(p.startswith(doc + "#") for doc, p in hits)
    assert len({p for _, p in hits}) == 8
