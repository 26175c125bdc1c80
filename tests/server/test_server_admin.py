"""POST /admin/reload: disabled without a token, 401 on a wrong one, atomic swap with the right one;
a failed reload leaves the old index serving; in-flight requests keep the engine they started with."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from indexer.builds import current_build
from server.app import create_app
from server.settings import Settings


def _ids(client: TestClient, query: str = "who sang the song", k: int = 10) -> set[str]:
    r = client.post("/search", json={"query": query, "k": k})
    assert r.status_code == 200, r.text
    return {h["id"] for h in r.json()["results"]}


def test_reload_disabled_without_token(client, index_a: Path) -> None:
    with TestClient(create_app(Settings(index_dir=index_a, admin_token=""))) as c:
        r = c.post("/admin/reload", headers={"Authorization": "Bearer "})
        assert r.status_code == 403
        assert "DPR_ADMIN_TOKEN" in r.json()["error"]


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic dGVzdA==", "test-admin-token"])
def test_reload_wrong_or_missing_token_is_401(client, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    r = client.post("/admin/reload", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"] == "missing or wrong admin token"


def test_reload_swaps_to_rebuilt_index(admin_client: TestClient, live_dir: Path, tiny_model_dir: Path,
                                       kb_files, kb_ids, rebuild) -> None:
    assert _ids(admin_client) <= kb_ids["a"]
    rebuild(tiny_model_dir, kb_files["b"], live_dir)          # a newer build lands in the served dir
    assert _ids(admin_client) <= kb_ids["a"]                  # nothing changes until the reload
    r = admin_client.post("/admin/reload")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "reloaded"
    assert body["previous"]["count"] == len(kb_ids["a"]) and body["current"]["count"] == len(kb_ids["b"])
    assert _ids(admin_client) <= kb_ids["b"]


def test_reload_to_other_dir(admin_client: TestClient, index_b: Path, kb_ids) -> None:
    assert _ids(admin_client) <= kb_ids["a"]
    r = admin_client.post("/admin/reload", json={"index_dir": str(index_b)})
    assert r.status_code == 200, r.text
    assert r.json()["current"]["index_dir"] == str(index_b)
    assert _ids(admin_client) <= kb_ids["b"]
    assert admin_client.get("/readyz").json()["index"]["count"] == len(kb_ids["b"])
    assert 'dpr_index_reloads_total{outcome="ok"} 1.0' in admin_client.get("/metrics").text


@pytest.mark.parametrize("case", ["missing dir", "corrupt index", "bad body"])
def test_failed_reload_keeps_serving(admin_client: TestClient, live_dir: Path, tmp_path: Path, case: str) -> None:
    before = _ids(admin_client)
    if case == "missing dir":
        r = admin_client.post("/admin/reload", json={"index_dir": str(tmp_path / "nowhere")})
        assert r.status_code == 422 and "nowhere" in r.json()["detail"]
    elif case == "corrupt index":
        broken = Path(shutil.copytree(live_dir, tmp_path / "broken", symlinks=True))
        (current_build(broken) / "manifest.json").write_text("{not json")
        r = admin_client.post("/admin/reload", json={"index_dir": str(broken)})
        assert r.status_code == 422 and "manifest.json" in r.json()["detail"]
    else:
        r = admin_client.post("/admin/reload", json={"index_dir": 5})
        assert r.status_code == 422 and "index_dir" in r.json()["error"]
    assert r.json()["error"]
    assert _ids(admin_client) == before
    assert admin_client.get("/readyz").json()["index"]["index_dir"] == str(live_dir)


def test_reload_refuses_mismatched_model(admin_client: TestClient, live_dir: Path, other_model_dir: Path) -> None:
    before = _ids(admin_client)
    r = admin_client.post("/admin/reload", json={"model_dir": str(other_model_dir)})
    assert r.status_code == 409
    assert "pooling" in r.json()["detail"]
    assert _ids(admin_client) == before
    assert 'dpr_index_reloads_total{outcome="failed"} 1.0' in admin_client.get("/metrics").text


def test_in_flight_request_keeps_its_engine(admin_client: TestClient, index_b: Path, kb_ids) -> None:
    holder = admin_client.app.state.holder
    held = holder.acquire()                       # what a request in flight holds
    r = admin_client.post("/admin/reload", json={"index_dir": str(index_b)})
    assert r.status_code == 200
    assert holder.current is not held
    assert not held.closed                        # still usable by the request that holds it
    (hits,) = held.search(["who sang the song"], 5)
    assert {h["id"] for h in hits} <= kb_ids["a"]
    holder.release(held)
    assert held.closed                            # closed once its last request is done
    assert _ids(admin_client) <= kb_ids["b"]


def test_searches_during_reloads_never_fail(admin_client: TestClient, index_a: Path, index_b: Path, kb_ids) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def searches(i: int) -> list[tuple[int, set[str]]]:
        out = []
        for j in range(12):
            r = admin_client.post("/search", json={"query": f"question {i} {j}", "k": 5})
            out.append((r.status_code, {h["id"] for h in r.json().get("results", [])}))
        return out

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(searches, i) for i in range(3)]
        reloads = [admin_client.post("/admin/reload", json={"index_dir": str(d)}).status_code
                   for d in (index_b, index_a, index_b)]
        results = [r for f in futures for r in f.result()]
    assert reloads == [200, 200, 200]
    assert all(status == 200 for status, _ in results)
    # Each answer comes wholly from one index: a request never mixes the old and the new engine.
    assert all(ids <= kb_ids["a"] or ids <= kb_ids["b"] for _, ids in results)
