"""Regression tests for the hardening findings (in-process; the socket-level ones are in
test_server_http.py): wrong passages after an in-place rebuild, unbounded /metrics, a stalled body
holding an engine, damaged and crafted builds, client disconnects, no backpressure; plus rollback,
API keys and the rate limit."""
from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import anyio
import pytest
from fastapi.testclient import TestClient

from indexer.builds import current_build
from reliability.tamper import TAMPERING
from server.app import create_app
from server.settings import Settings

QUERY = "who sang the song"


def _hits(client: TestClient, query: str = QUERY, k: int = 10) -> list[dict]:
    r = client.post("/search", json={"query": query, "k": k})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def _damage(path: Path, fn) -> None:
    path.chmod(0o644)                     # published builds are read-only
    fn(path)


# ----------------------------------------------------------------------------- finding 1


def test_rebuild_in_place_never_changes_answers_before_reload(admin_client: TestClient, live_dir: Path,
                                                              tiny_model_dir: Path, kb_files, kb_ids, rebuild) -> None:
    """New worker threads (fresh SQLite connections) after an in-place rebuild still read the served
    build: same ids and the same texts at the same rows, until the reload; then all of the new one."""
    engine = admin_client.app.state.holder.current
    before = engine.search([QUERY], 10, mode="dense")[0]
    rebuild(tiny_model_dir, kb_files["b"], live_dir)

    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(engine.search([QUERY], 10, mode="dense")[0]))
    thread.start()
    thread.join()
    assert answers[0] == before                               # ids, titles, texts, scores
    assert {h["id"] for h in _hits(admin_client)} <= kb_ids["a"]
    assert admin_client.post("/admin/reload").status_code == 200
    assert {h["id"] for h in _hits(admin_client)} <= kb_ids["b"]


# ----------------------------------------------------------------------------- finding 2


def test_junk_methods_do_not_grow_metrics(client: TestClient) -> None:
    client.get("/metrics")                                      # its own series exist from here on
    for i in range(5):
        client.request(f"X{i}" + "M" * 8000, "/search")
    size = len(client.get("/metrics").text)
    for i in range(5, 40):
        client.request(f"X{i}" + "M" * 8000, "/search")
    text = client.get("/metrics").text
    assert len(text) - size < 200, len(text) - size            # counters' digits, not a series per method
    assert 'method="other"' in text and "MMMM" not in text


# ----------------------------------------------------------------------------- finding 3 and 5 (in-process)


def _http_scope(path: str, body_length: int) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(body_length).encode())],
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}


def test_a_stalled_body_holds_no_engine_and_a_disconnect_is_not_an_error(admin_client: TestClient, index_b: Path,
                                                                           caplog) -> None:
    app = admin_client.app
    holder = app.state.holder
    old = holder.current
    portal = admin_client.portal
    release = portal.call(anyio.Event)
    sent: list[dict] = []

    async def receive() -> dict:
        await release.wait()                              # the client sends nothing, then hangs up
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    future = portal.start_task_soon(app, _http_scope("/search", 100), receive, send)
    try:
        time.sleep(0.3)
        assert not future.done()
        assert old._active == 0                           # waiting for the body, no engine taken
        assert admin_client.post("/admin/reload", json={"index_dir": str(index_b)}).status_code == 200
        assert old.closed                                 # the retired index is freed at once
    finally:
        portal.call(release.set)                          # the client hangs up
        future.result(timeout=10)
    assert sent[0]["status"] == 499
    assert 'route="/search",status="499"' in admin_client.get("/metrics").text
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


# ----------------------------------------------------------------------------- finding 4


STORE_TAMPERING = {case.removeprefix("store: "): edit for case, (name, edit) in TAMPERING.items()
                   if name == "passages.sqlite"}


@pytest.mark.parametrize("case", sorted(STORE_TAMPERING))
def test_reload_refuses_a_tampered_store(admin_client: TestClient, live_dir: Path, tmp_path: Path, case: str) -> None:
    before = _hits(admin_client)
    tampered = Path(shutil.copytree(live_dir, tmp_path / "tampered", symlinks=True))
    STORE_TAMPERING[case](current_build(tampered) / "passages.sqlite")
    r = admin_client.post("/admin/reload", json={"index_dir": str(tampered)})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("passages.sqlite: ")          # named relative to the build
    assert _hits(admin_client) == before
    assert admin_client.get("/readyz").status_code == 200


@pytest.mark.parametrize("case", ["row replaced", "wrong schema"])
def test_store_structure_is_checked_even_without_checksums(live_dir: Path, case: str) -> None:
    from indexer import IndexLoadError, SearchIndex

    STORE_TAMPERING[case](current_build(live_dir) / "passages.sqlite")
    if case == "wrong schema":
        with pytest.raises(IndexLoadError, match="not a passage store of this version"):
            SearchIndex.open(live_dir, verify=False)
    else:                     # same size, same rows: only the checksum can tell
        with pytest.raises(IndexLoadError, match="passages.sqlite: SHA-256 differs"):
            SearchIndex.open(live_dir)


def test_readyz_reports_a_build_damaged_under_the_server(admin_client: TestClient, live_dir: Path) -> None:
    assert admin_client.get("/readyz").status_code == 200
    _damage(current_build(live_dir) / "embeddings.npy", lambda p: p.write_bytes(p.read_bytes()[:100]))
    r = admin_client.get("/readyz")
    assert r.status_code == 503 and r.json()["detail"]["problem"] == "embeddings.npy: changed on disk since the " \
                                                                     "index was opened"
    assert admin_client.get("/healthz").status_code == 200           # alive, just not ready
    assert len(_hits(admin_client)) == 10                            # flat: vectors are in FAISS's memory


def test_truncating_vectors_under_a_served_ivfpq_index_is_a_503_not_a_crash(tiny_model_dir: Path, kb_files,
                                                                            tmp_path: Path) -> None:
    """In a child process: before the fix the memory map made this a SIGBUS that killed the server.
    (IVF-PQ re-scores its candidates on the exact vectors, read from embeddings.npy; ~50 vectors of
    32 floats span two pages, so the truncated second page is really read.)"""
    script = textwrap.dedent(f"""
        import json, sys
        from fastapi.testclient import TestClient
        from indexer import IndexConfig, build_index
        from indexer.builds import current_build
        from retriever.encoder import load_encoder
        from server.app import create_app
        from server.settings import Settings

        kb = [{str(kb_files["a"])!r}, {str(kb_files["b"])!r}]
        out = build_index(load_encoder({str(tiny_model_dir)!r}), kb, {str(tmp_path / "ivf")!r},
                          IndexConfig(index_type="ivfpq", ivf_nlist=2, nprobe=2, pq_nbits=4),
                          model_dir={str(tiny_model_dir)!r}, progress=False)
        with TestClient(create_app(Settings(index_dir=out, microbatch=False, encode_cache_size=0))) as c:
            body = {{"queries": ["who sang", "where is the river", "when did it end"], "k": 40, "mode": "dense"}}
            ok = c.post("/search/batch", json=body).status_code
            path = current_build(out) / "embeddings.npy"
            path.chmod(0o644)
            path.write_bytes(path.read_bytes()[:200])
            after = c.post("/search/batch", json=body)
            ready = c.get("/readyz")
            print(json.dumps([ok, after.status_code, after.json().get("error", ""), ready.status_code]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    ok, status, error, ready = json.loads(done.stdout.strip().splitlines()[-1])
    assert (ok, status, ready) == (200, 503, 503) and "damaged" in error


# ----------------------------------------------------------------------------- finding 7


def _crafted(live_dir: Path, tmp_path: Path, edit) -> Path:
    crafted = Path(shutil.copytree(live_dir, tmp_path / "crafted", symlinks=True))
    manifest_file = current_build(crafted) / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest_file.chmod(0o644)
    manifest_file.write_text(edit(manifest))
    return crafted


CRAFTED = {
    "deeply nested": (lambda m: '{"format_version": 2, "files": ' + "[" * 100_000 + "]" * 100_000 + "}",
                      "nested too deeply"),
    "count a string": (lambda m: json.dumps({**m, "count": "30"}), "'count' must be int, got str"),
    "count a bool": (lambda m: json.dumps({**m, "count": True}), "'count' must be int, got bool"),
    "files a list": (lambda m: json.dumps({**m, "files": []}), "'files' must be dict, got list"),
    "file entry wrong": (lambda m: json.dumps({**m, "files": {**m["files"], "index.faiss": 5}}),
                         "files['index.faiss'] must be"),
    "model a list": (lambda m: json.dumps({**m, "model": []}), "'model' must be dict, got list"),
    "encoder a string": (lambda m: json.dumps({**m, "model": {**m["model"], "encoder": "x"}}),
                         "'model.encoder' must be dict"),
    "bm25 dir up": (lambda m: json.dumps({**m, "bm25": {**m["bm25"], "dir": "../x"}}), "'bm25.dir' must be 'bm25'"),
    "bm25 dir absolute": (lambda m: json.dumps({**m, "bm25": {**m["bm25"], "dir": "/etc"}}),
                          "'bm25.dir' must be 'bm25'"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_manifests_are_a_4xx_naming_the_problem(admin_client: TestClient, live_dir: Path, tmp_path: Path,
                                                        case: str) -> None:
    edit, expected = CRAFTED[case]
    crafted = _crafted(live_dir, tmp_path, edit)
    before = _hits(admin_client)
    r = admin_client.post("/admin/reload", json={"index_dir": str(crafted)})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert expected in detail and detail.startswith("manifest.json: ")
    assert str(tmp_path) not in detail                                 # no server paths in the answer
    assert _hits(admin_client) == before


class _Marker:
    """Unpickling this touches a file: proof that a model file was (or was not) unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_pickle_where_a_model_should_be_is_refused_unopened(admin_client: TestClient, live_dir: Path,
                                                              tiny_base: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil-model"
    evil.mkdir()
    shutil.copy(tiny_base / "config.json", evil / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_base / name).exists():
            shutil.copy(tiny_base / name, evil / name)
    marker = tmp_path / "unpickled"
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps(_Marker(marker)))
    crafted = _crafted(live_dir, tmp_path, lambda m: json.dumps({**m, "model_dir": str(evil)}))
    r = admin_client.post("/admin/reload", json={"index_dir": str(crafted)})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "reload failed: cannot load the index's model"
    assert "cannot load the model the index names" in r.json()["detail"]
    assert not marker.exists()


@pytest.mark.parametrize("where", ["/etc", "/nonexistent/dir", "relative/nowhere"])
def test_reload_answers_the_same_for_missing_and_foreign_directories(admin_client: TestClient, where: str) -> None:
    r = admin_client.post("/admin/reload", json={"index_dir": where})
    assert r.status_code == 422
    assert r.json() == {"error": "reload failed: not an index directory",
                        "detail": f"{where}: not an index directory (or its current build is missing)"}


# ----------------------------------------------------------------------------- finding 8


def test_a_full_batcher_queue_is_a_503_with_retry_after(index_a: Path) -> None:
    import asyncio

    from server.batcher import MicroBatcher
    from server.engine import load_engine
    from server.errors import Overloaded

    engine = load_engine(index_a, cache_size=0)
    gate = threading.Event()
    batcher = MicroBatcher(Settings(max_queue=2, microbatch_max_size=1), workers=1)
    real = batcher.run_batch
    batcher.run_batch = lambda items: (gate.wait(10), real(items))[1]     # the one worker is busy

    async def scenario() -> list:
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.search(engine, QUERY, 3, "dense"))
            await asyncio.sleep(0.2)                   # taken by the collector, blocked in the worker
            queued = [asyncio.ensure_future(batcher.search(engine, QUERY, 3, "dense")) for _ in range(2)]
            await asyncio.sleep(0)
            with pytest.raises(Overloaded) as refused:
                await batcher.search(engine, QUERY, 3, "dense")
            gate.set()
            done = await asyncio.gather(first, *queued)
            return [refused.value, done]
        finally:
            await batcher.stop()

    try:
        refused, done = asyncio.run(scenario())
    finally:
        engine.close()
    assert refused.status == 503 and refused.headers == {"Retry-After": "1"}
    assert len(done) == 3 and all(hits for hits, _ in done)


def test_overload_answers_503_json_with_retry_after(index_a: Path) -> None:
    settings = Settings(index_dir=index_a, max_queue=1, search_workers=1, microbatch=False, torch_threads=1)
    with TestClient(create_app(settings)) as c:
        gate = c.app.state.gate
        gate.admitted = gate.max_queue + 1          # as if one search runs and one waits
        r = c.post("/search/batch", json={"queries": [QUERY]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"].startswith("server overloaded") and r.json()["detail"] == {"max_queue": 1}
        gate.admitted = 0
        assert c.post("/search/batch", json={"queries": [QUERY]}).status_code == 200


# ----------------------------------------------------------------------------- rollback, API keys, rate limit


def test_admin_rollback_serves_the_previous_build(admin_client: TestClient, live_dir: Path, tiny_model_dir: Path,
                                                  kb_files, kb_ids, rebuild) -> None:
    first = current_build(live_dir).name
    rebuild(tiny_model_dir, kb_files["b"], live_dir)
    assert admin_client.post("/admin/reload").status_code == 200
    assert {h["id"] for h in _hits(admin_client)} <= kb_ids["b"]
    r = admin_client.post("/admin/rollback")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "rolled back" and r.json()["current"]["build"] == first
    assert {h["id"] for h in _hits(admin_client)} <= kb_ids["a"] and current_build(live_dir).name == first
    again = admin_client.post("/admin/rollback")
    assert again.status_code == 409 and "nothing to roll back to" in again.json()["error"]
    assert {h["id"] for h in _hits(admin_client)} <= kb_ids["a"]


def test_rollback_needs_the_admin_token(client: TestClient) -> None:
    assert client.post("/admin/rollback").status_code == 401


def test_api_keys_guard_the_search_routes_only(index_a: Path) -> None:
    with TestClient(create_app(Settings(index_dir=index_a, api_keys="k-one, k-two", torch_threads=1))) as c:
        for method, path, body in (("POST", "/search", {"query": QUERY}), ("POST", "/search/batch", {"queries": [QUERY]}),
                                   ("GET", "/passages/x", None)):
            r = c.request(method, path, json=body)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
            r = c.request(method, path, json=body, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
        assert c.post("/search", json={"query": QUERY}, headers={"Authorization": "Bearer k-two"}).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics", "/"):
            assert c.get(path).status_code == 200, path


def test_rate_limit_answers_429_with_retry_after(index_a: Path) -> None:
    settings = Settings(index_dir=index_a, rate_limit_per_s=0.5, rate_limit_burst=3, torch_threads=1)
    with TestClient(create_app(settings)) as c:
        statuses = [c.post("/search", json={"query": QUERY, "k": 2}).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        r = c.post("/search", json={"query": QUERY})
        assert r.headers["retry-after"] == "2" and r.json()["error"] == "rate limit exceeded"
        assert c.get("/readyz").status_code == 200                     # health is never limited


def test_token_bucket_refills_at_its_rate() -> None:
    from server.auth import RateLimiter

    bucket = RateLimiter(rate=2.0, burst=2, max_clients=2)
    assert [bucket.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert bucket.take("a", now=0.5) == 0.0 and bucket.take("b", now=0.5) == 0.0
    bucket.take("c", now=0.6)                                          # forgets the least recent ("a")
    assert bucket.take("a", now=0.6) == 0.0 and bucket.take("a", now=0.6) == 0.0
