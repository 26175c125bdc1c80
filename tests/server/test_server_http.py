"""The HTTP layer of a real `dpr serve` (uvicorn + server/protocol.py), probed with raw sockets:
stalled clients are dropped, connections are capped, ambiguous framing is refused, a client that
hangs up is not a server error. Timeouts are set to ~1-2 s here so the checks take seconds."""
from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from reliability.serve_proc import start_server

HEADER_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 1.5
MAX_CONNECTIONS = 12


@pytest.fixture(scope="module")
def served(index_a: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("http") / "serve.log"
    server = start_server(index_a, log, env={"DPR_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
                                             "DPR_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
                                             "DPR_MAX_CONNECTIONS": str(MAX_CONNECTIONS), "DPR_TORCH_THREADS": "1"})
    yield server
    server.stop()


def _port(served) -> int:
    return int(served.url.rsplit(":", 1)[1])


def _connect(served) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", _port(served)))
    s.settimeout(15)
    return s


def _read_all(s: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def _get(served, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(served.url + path, timeout=10) as r:
        return r.status, r.read()


def _status_and_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


STALLS = {
    "nothing": b"",
    "partial request line": b"POST /sea",
    "partial headers": b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
    "partial body": b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
                    b'{"query": "who',
}


def test_stalled_clients_are_sent_408_and_dropped(served) -> None:
    start = time.monotonic()
    socks = []
    for kind, prefix in STALLS.items():
        for _ in range(2):
            s = _connect(served)
            s.sendall(prefix)
            socks.append((kind, s))
    assert _get(served, "/healthz")[0] == 200                 # the server keeps serving meanwhile
    for kind, s in socks:
        raw = _read_all(s)
        waited = time.monotonic() - start
        status, body = _status_and_json(raw)
        phase = "body" if kind == "partial body" else "headers"
        assert status == 408 and body["detail"]["phase"] == phase, (kind, raw[:200])
        assert waited < max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) + 5, (kind, waited)
        s.close()
    metrics = _get(served, "/metrics")[1].decode()
    assert 'dpr_http_rejected_total{reason="timeout"}' in metrics
    assert 'route="/search",status="408"' in metrics          # the stalled body reached the app, then timed out


def test_a_slow_drip_body_is_cut_off_by_the_body_timeout(served) -> None:
    s = _connect(served)
    s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n")
    start = time.monotonic()
    status = None
    for _ in range(40):                    # one byte every 0.2 s: never idle, never done
        try:
            s.sendall(b" ")
        except OSError:
            break
        time.sleep(0.2)
        s.setblocking(False)
        try:
            data = s.recv(65536)
            if data:
                status = _status_and_json(data)[0]
                break
        except BlockingIOError:
            pass
        finally:
            s.setblocking(True)
    assert status == 408 and time.monotonic() - start < BODY_TIMEOUT_S + 3
    s.close()


def test_connections_beyond_the_cap_are_answered_503(served) -> None:
    idle = [_connect(served) for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.2)
    extra = _connect(served)
    status, body = _status_and_json(_read_all(extra))
    assert status == 503 and body == {"error": "too many connections", "detail": {"max_connections": MAX_CONNECTIONS}}
    for s in idle:
        s.close()
    time.sleep(0.3)
    assert _get(served, "/healthz")[0] == 200


@pytest.mark.parametrize("framing", [
    b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
    b"Content-Length: 6\r\nContent-Length: 7\r\n",
])
def test_ambiguous_framing_is_refused_and_the_connection_closed(served, framing: bytes) -> None:
    """CL.TE smuggling: the body's tail (``G``) must never become the start of a second request."""
    s = _connect(served)
    s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + framing + b"\r\n"
              b"0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = _read_all(s)
    s.close()
    status, body = _status_and_json(raw)
    assert status == 400 and body["error"] and raw.count(b"HTTP/1.1 ") == 1, raw[:300]


def test_a_client_that_hangs_up_mid_body_is_not_a_server_error(served) -> None:
    s = _connect(served)
    s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
              b'{"query":')
    time.sleep(0.2)
    s.close()
    time.sleep(0.5)
    metrics = _get(served, "/metrics")[1].decode()
    assert 'route="/search",status="499"' in metrics
    assert 'status="500"' not in metrics
    log = served.log_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-2000:]


def test_unknown_methods_are_refused_by_the_parser_as_json(served) -> None:
    s = _connect(served)
    s.sendall(b"M" * 8000 + b" /search HTTP/1.1\r\nHost: x\r\n\r\n")
    status, body = _status_and_json(_read_all(s))
    s.close()
    assert status == 400 and body["error"] == "malformed HTTP request"
    assert 'dpr_http_rejected_total{reason="malformed"}' in _get(served, "/metrics")[1].decode()


def test_the_abuse_checks_report_what_the_server_did(served) -> None:
    """What `dpr bench reliability` runs at scale (stalled: 50 connections for 30 s; metrics: 80 requests)."""
    from reliability.abuse import junk_methods, stalled_clients

    stalled = stalled_clients(served.url, connections=8, hold_s=HEADER_TIMEOUT_S + 8, probe_every_s=0.3)
    assert stalled["dropped"] == 8 and stalled["kept_open"] == 0 and stalled["answers"] == {"408": 8}, stalled
    assert stalled["probes"]["ok"] > 0 and stalled["probes"]["5xx"] == 0 and stalled["ok"]
    junk = junk_methods(served.url, requests=5, method_bytes=2000)
    assert junk["requests"] == 10 and junk["growth_bytes"] < 2048 and junk["server_errors"] == 0 and junk["ok"], junk


def test_rebuild_while_serving_and_tampered_builds_checks(index_a: Path, tiny_model_dir: Path, kb_files,
                                                          tmp_path: Path) -> None:
    """The reliability checks behind `dpr bench reliability`'s rebuild and tampered rows, on the tiny model."""
    from reliability.tamper import rebuild_while_serving, tampered_builds

    queries = [r["question"] for r in json.loads(kb_files["a"].read_text())[:6]]
    result = rebuild_while_serving(index_a, [str(kb_files["b"])], str(tiny_model_dir), tmp_path, queries, idle_s=1.0)
    assert result["rebuild_exit"] == 0 and result["reload_status"] == 200, result
    assert result["wrong_answers"] == 0 and result["failed"] == 0 and result["answers_switched_after_reload"] > 0
    assert result["ok"]
    tampered = tampered_builds(index_a, tmp_path, cases=("store: row replaced", "manifest: bm25 dir ../"))
    assert tampered["tried"] == 2 and tampered["served_anyway"] == 0 and tampered["reload_accepted"] == 0, tampered
    assert tampered["server_errors"] == 0 and tampered["ok"]
