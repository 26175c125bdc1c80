"""Start-up: the model/index pair is checked before serving, and failures exit with a clear message."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from indexer import IndexLoadError, ManifestMismatch
from indexer.builds import current_build
from server.app import create_app
from server.settings import Settings


def _serve_args(*argv: str) -> argparse.Namespace:
    from driver import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(list(argv))
    args.verbose = False
    return args


def test_mismatched_model_refused_at_startup(index_a: Path, other_model_dir: Path) -> None:
    app = create_app(Settings(index_dir=index_a, model_dir=str(other_model_dir)))
    with pytest.raises(ManifestMismatch, match="pooling: index has 'mean', encoder has 'cls'"):
        with TestClient(app):
            pass
    assert isinstance(app.state.startup_error, ManifestMismatch)
    assert app.state.holder.current is None


def test_explicit_matching_model_is_used(index_a: Path, tiny_model_dir: Path) -> None:
    with TestClient(create_app(Settings(index_dir=index_a, model_dir=str(tiny_model_dir)))) as c:
        assert c.get("/readyz").json()["index"]["model_dir"] == str(tiny_model_dir.resolve())


def test_broken_index_refused_at_startup(index_a: Path, tmp_path: Path) -> None:
    import shutil

    broken = Path(shutil.copytree(index_a, tmp_path / "broken", symlinks=True))
    (current_build(broken) / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexLoadError, match="index.faiss"):
        with TestClient(create_app(Settings(index_dir=broken))):
            pass


def test_cli_startup_failure_is_a_clear_error(index_a: Path, other_model_dir: Path, caplog) -> None:
    from driver import serve

    args = _serve_args("--index", str(index_a), "--model", str(other_model_dir), "--port", "0")
    with pytest.raises(RuntimeError, match=r"start-up failed: .*pooling") as info:
        serve.run(args)
    assert isinstance(info.value.__cause__, ManifestMismatch)
    # uvicorn's traceback of the failed lifespan is dropped; the app's one-line reason is kept.
    assert not any(str(r.msg).startswith("Traceback") for r in caplog.records if r.name == "uvicorn.error")


def test_cli_missing_index(tmp_path: Path) -> None:
    from driver import serve

    with pytest.raises(FileNotFoundError, match="no such index directory"):
        serve.run(_serve_args("--index", str(tmp_path / "none")))


def test_settings_from_environment_and_flags(monkeypatch, index_a: Path) -> None:
    monkeypatch.setenv("DPR_MAX_K", "7")
    monkeypatch.setenv("DPR_PORT", "9001")
    monkeypatch.setenv("DPR_ADMIN_TOKEN", "")                 # blank: admin stays disabled
    monkeypatch.setenv("DPR_CORS_ORIGINS", '["http://localhost:3000"]')
    s = Settings(port=9100)
    assert (s.max_k, s.port, s.admin_token, s.cors_origins) == (7, 9100, None, ["http://localhost:3000"])
    monkeypatch.setenv("DPR_MAX_K", "zero")
    with pytest.raises(ValueError, match="max_k"):
        Settings()


def test_cors_closed_by_default_and_open_when_configured(index_a: Path) -> None:
    origin = {"Origin": "http://elsewhere.example"}
    closed = TestClient(create_app(Settings(index_dir=index_a)))
    assert "access-control-allow-origin" not in closed.get("/healthz", headers=origin).headers
    opened = TestClient(create_app(Settings(index_dir=index_a, cors_origins=["http://elsewhere.example"])))
    assert opened.get("/healthz", headers=origin).headers["access-control-allow-origin"] == "http://elsewhere.example"


def test_dpr_serve_cli_mismatch_exits_2_with_message(index_a: Path, other_model_dir: Path, capsys) -> None:
    from driver.main import main

    code = main(["serve", "--index", str(index_a), "--model", str(other_model_dir), "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "dpr serve: error: start-up failed:" in err and "pooling: index has 'mean', encoder has 'cls'" in err
    assert "Traceback" not in err


def test_dpr_serve_runs_and_stops_cleanly(index_a: Path, tmp_path: Path) -> None:
    """The real command: uvicorn on a free port, a search over HTTP, then SIGTERM -> graceful shutdown."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    env = {**os.environ, "DPR_ADMIN_TOKEN": "", "DPR_MAX_K": "3"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "driver.main", "serve", "--index", str(index_a),
                                 "--port", str(port), "--no-access-log"], stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
                    ready = json.load(r)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.25)
        else:
            raise AssertionError(f"not ready:\n{log.read_text()}")
        assert ready["status"] == "ready"
        request = urllib.request.Request(f"{base}/search", data=b'{"query": "who sang it", "k": 3}',
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            assert [h["rank"] for h in json.load(r)["results"]] == [1, 2, 3]
        with pytest.raises(urllib.error.HTTPError) as info:           # DPR_MAX_K from the environment
            urllib.request.urlopen(urllib.request.Request(f"{base}/search", data=b'{"query": "q", "k": 4}'))
        assert info.value.code == 422
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    # uvicorn re-raises the signal after its graceful shutdown, so the status is "killed by SIGTERM".
    assert code in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()
