"""`dpr eval` end to end: a saved tiny model, a built index, a fake server, BEIR folders, bad input."""
from __future__ import annotations

import argparse
import hashlib
import json
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from driver import evaluate
from eval.client import retrieve_with_server
from eval.evalset import load_eval_set
from eval.runner import EvalOptions
from reliability.serve_proc import start_server
from tests.conftest import serve_http

BASE_METRICS = {"recall@1", "recall@5", "recall@10", "recall@20", "recall@100", "mrr@10", "ndcg@10",
                "full_recall@100"}
ANSWER_METRICS = {f"answer_recall@{k}" for k in (1, 5, 10, 20, 100)}


def dpr_eval(*argv: object) -> int:
    parser = argparse.ArgumentParser(prog="dpr eval")
    evaluate.add_arguments(parser)
    return evaluate.run(parser.parse_args([str(a) for a in argv]))


def _check_metrics(system: dict, expected: set[str]) -> dict:
    metrics = system["metrics"]
    assert set(metrics) == expected
    for m in metrics.values():
        assert 0.0 <= m["ci_low"] <= m["value"] <= m["ci_high"] <= 1.0
    recalls = [metrics[f"recall@{k}"]["value"] for k in (1, 5, 10, 20, 100)]
    assert recalls == sorted(recalls)                                  # Recall@k never falls as k grows
    return metrics


def test_model_bm25_and_hybrid_on_nq_sample(small_nq: tuple[Path, Path], saved_model: Path, tiny_encoder,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, val = small_nq
    out = tmp_path / "reports" / "eval.json"
    assert dpr_eval("--data", val, "--model", saved_model, "--bm25", "--hybrid", "interp", "--out", out,
                    "--resamples", 100, "--seed", 5, "--no-progress") == 0
    printed = capsys.readouterr().out
    assert "| metric | dense (n=16) | bm25 (n=16) | hybrid-interp (n=16) |" in printed
    assert "the gold passages of" in printed                          # the default KB is announced
    report = json.loads(out.read_text())
    assert {"command", "data", "knowledge_base", "systems", "environment", "seed", "wall_seconds", "table"} \
        <= set(report)
    assert report["seed"] == 5 and report["n_resamples"] == 100
    assert report["data"]["sha256"] == {str(val): hashlib.sha256(val.read_bytes()).hexdigest()}
    assert report["knowledge_base"]["count"] == 16 and report["knowledge_base"]["gold_in_kb"] == 1.0
    assert {"torch", "transformers", "numpy", "faiss-cpu"} <= set(report["environment"])
    assert [s["name"] for s in report["systems"]] == ["dense", "bm25", "hybrid-interp"]
    dense = report["systems"][0]
    assert dense["model"]["weights_sha256"] == tiny_encoder.fingerprint()
    assert dense["model_ref"] == str(saved_model.resolve())
    metrics = _check_metrics(dense, BASE_METRICS | ANSWER_METRICS)
    # The KB is the 16 gold passages, so the top 100 holds every one of them.
    assert metrics["recall@100"]["value"] == 1.0 and metrics["answer_recall@100"]["value"] == 1.0
    for system in report["systems"][1:]:
        _check_metrics(system, BASE_METRICS | ANSWER_METRICS)

    # Several systems: each paired-tested against the first, on the same queries, every ranking metric.
    from eval.bootstrap import paired_bootstrap_diff, paired_randomization_test

    assert report["baseline"] == "dense" and "vs" not in dense
    assert report["paired"]["randomization_resamples"] == 10_000 and report["paired"]["bootstrap_resamples"] == 100
    assert "paired tests against dense on the same 16 queries" in printed
    assert "| metric | bm25 - dense (95% CI) | p | hybrid-interp - dense (95% CI) | p |" in printed
    for system in report["systems"][1:]:
        # The table's metrics (all-relevant Recall only where a query has several relevant passages).
        assert set(system["vs"]) == {"dense"} and set(system["vs"]["dense"]) == BASE_METRICS - {"full_recall@100"}
        for m, got in system["vs"]["dense"].items():
            a, b = system["per_query"][m], dense["per_query"][m]
            diff, low, high = paired_bootstrap_diff(a, b, n_resamples=100, seed=5)
            assert got == pytest.approx({"diff": diff, "low": low, "high": high,
                                         "p": paired_randomization_test(a, b, n_resamples=10_000, seed=5)})
            assert got["diff"] == pytest.approx(system["metrics"][m]["value"] - dense["metrics"][m]["value"],
                                                abs=1e-5)


def test_beir_folder_with_graded_qrels(beir_folder: Path, saved_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "beir.json"
    assert dpr_eval("--data", beir_folder, "--split", "test", "--model", saved_model, "--bm25", "--k", "1,2",
                    "--out", out, "--resamples", 50, "--no-progress", "--baseline", "bm25") == 0
    report = json.loads(out.read_text())
    # --baseline: the dense system is tested against BM25, not the other way round.
    assert report["baseline"] == "bm25" and "vs" not in report["systems"][1]
    assert set(report["systems"][0]["vs"]["bm25"]) == {"recall@1", "recall@2", "mrr@10", "ndcg@10", "full_recall@2"}
    assert report["data"]["layout"] == "beir" and report["data"]["n_queries"] == 2
    assert set(report["data"]["sha256"]) == {str(beir_folder / f) for f in
                                             ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv")}
    assert report["knowledge_base"]["count"] == 4
    bm25 = report["systems"][1]["metrics"]
    assert set(bm25) == {"recall@1", "recall@2", "mrr@10", "ndcg@10", "full_recall@2"}
    # BM25 ranks d1 first for q1 (apple, harvest) and d2 for q2 (river); d4 shares no word with q1.
    assert bm25["recall@1"]["value"] == 1.0
    # nDCG@10: q1 DCG 2/1 (d1, grade 2), IDCG 2/1 + 1/log2(3) -> 0.6131; q2 1 -> mean 0.8066
    assert bm25["ndcg@10"]["value"] == pytest.approx((2 / (2 + 1 / 1.5849625) + 1) / 2, abs=1e-6)
    assert "all-relevant Recall@2" in report["table"]                 # q1 has two relevant passages


def test_index_directory(small_nq: tuple[Path, Path], saved_model: Path, tiny_base: Path, tmp_path: Path) -> None:
    from indexer import ManifestMismatch, build_index
    from retriever.encoder import DualEncoder, model_ref

    _, val = small_nq
    index_dir = build_index(DualEncoder.load(saved_model), [val], tmp_path / "index",
                            model_dir=model_ref(saved_model), progress=False)
    out = tmp_path / "index.json"
    assert dpr_eval("--data", val, "--index", index_dir, "--out", out, "--resamples", 50, "--no-progress") == 0
    system = json.loads(out.read_text())["systems"][0]
    assert system["source"] == "index" and system["model_ref"] == str(saved_model.resolve())
    assert system["index"]["count"] == 16 and system["gold_in_kb"] == 1.0
    assert "model" in system["manifest"]
    assert _check_metrics(system, BASE_METRICS | ANSWER_METRICS)["recall@100"]["value"] == 1.0
    # A different model (the bare base checkpoint, other max lengths) is refused, not silently used.
    with pytest.raises(ManifestMismatch, match="does not match"):
        dpr_eval("--data", val, "--index", index_dir, "--model", tiny_base, "--no-progress")

    # The same index behind the real server, evaluated over HTTP.
    served = start_server(index_dir, tmp_path / "serve.log")
    try:
        out = tmp_path / "server.json"
        assert dpr_eval("--data", val, "--url", served.url, "--out", out, "--resamples", 50, "--no-progress") == 0
    finally:
        served.stop()
    report = json.loads(out.read_text())
    system = report["systems"][0]
    assert system["source"] == "server" and system["server"]["index"]["count"] == 16
    assert _check_metrics(system, BASE_METRICS | ANSWER_METRICS)["recall@100"]["value"] == 1.0


# ----------------------------------------------------------------------------- a fake search server


class FakeServer(BaseHTTPRequestHandler):
    """POST /search/batch: the gold passage first for questions in ``first``, second otherwise."""

    gold: dict[str, str] = {}
    first: set[str] = set()
    batches: list[int] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/search/batch":
            return self._send(404, {"error": "not found"})
        if body["k"] > 100:
            return self._send(422, {"error": "k must be between 1 and 100", "detail": {"loc": "k"}})
        type(self).batches.append(len(body["queries"]))
        answers = []
        for q in body["queries"]:
            hits = [{"id": "decoy", "text": "nothing useful", "score": 0.5}]
            if q in self.gold:
                gold = {"id": self.gold[q], "text": "gold text", "score": 0.9}
                hits = [gold, *hits] if q in self.first else [*hits, gold]
            answers.append({"query": q, "results": hits})
        self._send(200, answers)

    def do_GET(self) -> None:  # noqa: N802
        self._send(200, {"status": "ready", "index": {"count": 2, "model": "fake"}})

    def _send(self, code: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def fake_server() -> Iterator[str]:
    FakeServer.gold, FakeServer.first, FakeServer.batches = {}, set(), []
    with serve_http(FakeServer) as url:
        yield url


def test_server_url(small_nq: tuple[Path, Path], fake_server: str, tmp_path: Path) -> None:
    _, val = small_nq
    evalset = load_eval_set(val)
    questions = list(evalset.queries.items())
    FakeServer.gold = {q: next(iter(evalset.qrels[qid])) for qid, q in questions}
    FakeServer.first = {q for _, q in questions[::2]}                  # 8 of 16 at rank 1, the rest at rank 2
    out = tmp_path / "server.json"
    assert dpr_eval("--data", val, "--url", fake_server + "/", "--out", out, "--resamples", 50,
                    "--no-progress") == 0
    report = json.loads(out.read_text())
    system = report["systems"][0]
    assert system["server"]["index"]["model"] == "fake"               # GET /readyz is recorded
    metrics = system["metrics"]
    assert metrics["recall@1"]["value"] == pytest.approx(8 / 16)
    assert metrics["recall@5"]["value"] == pytest.approx(1.0)
    assert metrics["mrr@10"]["value"] == pytest.approx((8 * 1 + 8 * 0.5) / 16)
    # The fake texts hold no answers, so answer match is 0 everywhere.
    assert metrics["answer_recall@100"]["value"] == 0.0
    assert "knowledge_base" not in report


def test_server_batches_and_errors(fake_server: str) -> None:
    queries = {f"q{i}": f"question {i}" for i in range(130)}
    retrieval = retrieve_with_server(fake_server, queries, k=10, progress=False)
    assert FakeServer.batches == [64, 64, 2]
    assert retrieval.run["q129"] == ["decoy"]
    with pytest.raises(RuntimeError, match="HTTP 422: k must be between 1 and 100"):
        retrieve_with_server(fake_server, queries, k=101, progress=False)


def test_unreachable_url(small_nq: tuple[Path, Path]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                                      # closed once the block ends
    _, val = small_nq
    with pytest.raises(RuntimeError, match=f"127.0.0.1:{port}/search/batch: cannot reach the search server"):
        dpr_eval("--data", val, "--url", f"http://127.0.0.1:{port}", "--no-progress")
    with pytest.raises(ValueError, match="--url must look like"):
        dpr_eval("--data", val, "--url", "localhost:8000", "--no-progress")


# ----------------------------------------------------------------------------- bad input


def test_missing_qrels_split(beir_folder: Path) -> None:
    with pytest.raises(ValueError, match=r"qrels/val\.tsv: no such qrels file \(splits available: \['test'\]\)"):
        dpr_eval("--data", beir_folder, "--split", "val", "--bm25", "--no-progress")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "nothing to evaluate"),
    ({"url": "http://x", "model": "m"}, "cannot be combined"),
    ({"index": Path("i"), "kb": (Path("kb.jsonl"),)}, "--kb is not used with --index"),
    ({"model": "m", "hybrid": "rrf"}, "give --bm25"),
    ({"model": "m", "bm25": True, "hybrid": "max"}, "--hybrid must be one of"),
    ({"bm25": True, "ks": (0, 5)}, "positive cut-offs"),
    ({"model": "m", "bm25": True, "baseline": "hybrid-rrf"}, r"--baseline hybrid-rrf: not a system of this run "
                                                             r"\(it has dense, bm25\)"),
])
def test_option_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvalOptions(data=Path("d.json"), **kwargs)


def test_unknown_model_name(small_nq: tuple[Path, Path], tmp_path: Path) -> None:
    _, val = small_nq
    with pytest.raises(FileNotFoundError, match="--model"):
        dpr_eval("--data", val, "--model", tmp_path / "no-such-model", "--no-progress")


def test_registered_as_dpr_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from driver.main import main

    assert main(["eval", "--data", str(tmp_path / "missing.json"), "--bm25", "--no-progress"]) == 2
    assert "dpr eval: error: " in (err := capsys.readouterr().err)
    assert "missing.json: no such evaluation data file" in err


def test_eval_of_an_index_measures_what_its_server_answers(small_nq: tuple[Path, Path], saved_model: Path,
                                                           tmp_path: Path) -> None:
    """`dpr eval --index IDX --bm25 --hybrid interp` (default fusion) ranks every query exactly as
    `dpr serve --index IDX` does in hybrid mode (and in bm25 and dense mode); the hybrid weight once
    drifted between the two (0.5 vs 0.8)."""
    from eval.runner import retrieve_systems
    from indexer import build_index
    from retriever.encoder import DualEncoder, model_ref

    train, val = small_nq
    index_dir = build_index(DualEncoder.load(saved_model), [train, val], tmp_path / "index",
                            model_dir=model_ref(saved_model), progress=False)
    evalset = load_eval_set(val)
    local = {name: r.run for name, r, _ in retrieve_systems(
        EvalOptions(data=val, index=index_dir, bm25=True, hybrid="interp", progress=False), evalset, None)}
    assert list(local) == ["dense", "bm25", "hybrid-interp"]
    served = start_server(index_dir, tmp_path / "serve.log")
    try:
        remote = {mode: retrieve_systems(EvalOptions(data=val, url=served.url, server_mode=mode, progress=False),
                                         evalset, None)[0][1].run for mode in ("dense", "bm25", "hybrid")}
    finally:
        served.stop()
    assert local["hybrid-interp"] == remote["hybrid"]
    assert local["bm25"] == remote["bm25"] and local["dense"] == remote["dense"]
    from indexer import SearchIndex

    with SearchIndex.open(index_dir) as index:                           # k=100: every passage, ranked
        assert {len(r) for r in local["hybrid-interp"].values()} == {len(index)}
    out = tmp_path / "hybrid.json"
    assert dpr_eval("--data", val, "--index", index_dir, "--bm25", "--hybrid", "interp", "--out", out,
                    "--resamples", 20, "--no-progress") == 0
    systems = json.loads(out.read_text())["systems"]
    assert [s["name"] for s in systems] == ["dense", "bm25", "hybrid-interp"]
    assert systems[2]["alpha"] == 0.8 and systems[2]["depth"] == 100 and systems[1]["source"] == "index bm25"
