"""`dpr bench latency --url`: labelled runs recorded in JSON (other labels kept, in order) and rendered
as the docs' latency split. The --index path (a `dpr serve` it starts) is the same measurement that
tests/bench/test_speed.py runs against a real server; here a stub server gives a known split."""
from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from driver.main import main
from tests.conftest import serve_http


class _FakeSearch(BaseHTTPRequestHandler):
    """Answers every POST /search with one hit and a known Server-Timing split."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        payload = json.dumps({"query": body["query"], "results": [{"id": "p1", "text": "gold text"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Server-Timing", "queue;dur=0.1, encode;dur=2.0, search;dur=0.5, fetch;dur=0.2, total;dur=3.0")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def fake_server() -> Iterator[str]:
    with serve_http(_FakeSearch) as url:
        yield url


def test_latency_runs_are_recorded_by_label_and_render_the_split(tmp_path: Path, fake_server: str) -> None:
    import bench.docs

    out = tmp_path / "latency.json"
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps([{"question": "q one", "gold_context": {"text": "gold text"}},
                                     {"question": "q two", "gold_context": {"text": "other"}}]))
    for label, n in (("served", 2), ("fake", 2)):
        assert main(["bench", "latency", "--url", fake_server, "--val", str(questions), "--n", str(n), "--warmup",
                     "1", "--mode", "dense", "--json", str(out), "--label", label]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["label"] for r in runs] == ["served", "fake"]      # the second run kept the first, in order
    served, fake = runs
    assert served["n"] == 2 and served["client_ms"]["p50"] > 0 and served["client_ms"]["p50"] <= served["client_ms"]["p99"]
    assert fake["server_ms"]["encode"]["p50"] == 2.0 and fake["server_ms"]["total"]["p50"] == 3.0
    assert fake["gold_at_1"] == 1 and fake["golds"] == 2 and "--url" in fake["command"]
    block = bench.docs.latency_block(json.loads(out.read_text()))
    row = next(line for line in block.splitlines() if line.startswith("| fake |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # The machine the run was measured on, by name and fastest matrix unit: CPUs differ between sessions.
    from bench.speed import cpu_label

    assert cells[1] == cpu_label(fake["machine"]) and cells[1].split()[0] in fake["machine"]["cpu"]
    assert cells[3:8] == ["0.1", "2.0", "0.5", "0.2", "3.0"]
    assert float(cells[8]) == round(fake["client_ms"]["p50"] - 3.0, 2)
    assert "`dpr bench latency --url" in bench.docs.latency_full(json.loads(out.read_text()))
    only_fake = bench.docs.latency_block(json.loads(out.read_text()), only=("fake",))
    assert "| fake |" in only_fake and "| served |" not in only_fake       # the README's shorter table
    # the same label again replaces its row in place
    assert main(["bench", "latency", "--url", fake_server, "--val", str(questions), "--n", "1", "--warmup", "0",
                 "--mode", "dense", "--json", str(out), "--label", "served"]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["label"] for r in runs] == ["served", "fake"] and runs[0]["n"] == 1
