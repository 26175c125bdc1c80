"""Faults an operator meets, on the real commands: an index rebuilt in place under a running server,
and builds whose store or manifest were tampered with (or crafted to attack the loader).

Each check returns a dict with what it saw and ``ok``, for `dpr bench reliability` to print.
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from reliability.serve_proc import dpr_command, free_port, run_to_exit

# ----------------------------------------------------------------------------- rebuild while serving


def _search(url: str, query: str, k: int = 10) -> list[tuple[str, str]]:
    """(id, text) of each hit, over a new connection (so the server may answer on a fresh thread)."""
    import urllib.request

    body = json.dumps({"query": query, "k": k, "mode": "dense"}).encode()
    request = urllib.request.Request(url + "/search", data=body, headers={"Content-Type": "application/json",
                                                                        "Connection": "close"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return [(h["id"], h["text"]) for h in json.loads(r.read())["results"]]


def rebuild_while_serving(index_a: Path, kb_b: list[str], model: str, work: Path, queries: list[str], *,
                          idle_s: float = 15.0, admin_token: str = "reliability") -> dict[str, Any]:
    """Serve a copy of ``index_a``, rebuild it in place with ``kb_b`` (`dpr index --out` the served
    directory) while searching, wait ``idle_s`` (the server's idle worker threads retire), search again
    from fresh connections, then reload. Every answer before the reload must be exactly the answer the
    old build gave (same ids, same texts); every answer after it must come from the new build."""
    import urllib.request

    from common.data import load_corpus
    from reliability.serve_proc import start_server

    served_dir = work / "rebuild-served"
    shutil.rmtree(served_dir, ignore_errors=True)
    shutil.copytree(index_a, served_dir, symlinks=True)
    new_texts = {p.pid: p.text for p in load_corpus(kb_b)}
    served = start_server(served_dir, work / "rebuild-serve.log", env={"DPR_ADMIN_TOKEN": admin_token})
    phases: dict[str, dict[str, int]] = {}

    def check(phase: str, expect: dict[str, list[tuple[str, str]]] | None) -> None:
        tally = phases.setdefault(phase, {"answers": 0, "changed": 0, "5xx": 0, "failed": 0})
        for q in queries:
            tally["answers"] += 1
            try:
                hits = _search(served.url, q)
            except urllib.error.HTTPError as e:
                tally["5xx" if e.code >= 500 else "failed"] += 1
                continue
            except OSError:
                tally["failed"] += 1
                continue
            if expect is not None:
                tally["changed"] += hits != expect[q]
            else:                      # after the reload: every hit is a passage of the new build, its own text
                tally["changed"] += any(new_texts.get(pid) != text for pid, text in hits)

    try:
        reference = {q: _search(served.url, q) for q in queries}
        check("before", reference)
        stop = threading.Event()

        def keep_checking() -> None:
            while not stop.is_set():
                check("during rebuild", reference)

        during = threading.Thread(target=keep_checking, daemon=True)
        during.start()
        code, out = run_to_exit(dpr_command("index", "--model", model, *[a for p in kb_b for a in ("--kb", p)],
                                            "--out", str(served_dir), "--no-progress"), timeout_s=1800)
        stop.set()
        during.join(timeout=120)
        time.sleep(idle_s)
        check(f"after rebuild + {idle_s:g} s idle", reference)
        request = urllib.request.Request(served.url + "/admin/reload", data=b"", method="POST",
                                         headers={"Authorization": f"Bearer {admin_token}"})
        with urllib.request.urlopen(request, timeout=600) as r:
            reload_status = r.status
        check("after reload", None)
        changed_after_reload = sum(1 for q in queries if _search(served.url, q) != reference[q])
    finally:
        exit_code = served.stop()
    before_reload = [v for k, v in phases.items() if k != "after reload"]
    mixed = sum(v["changed"] for v in before_reload) + phases.get("after reload", {}).get("changed", 0)
    errors = sum(v["5xx"] + v["failed"] for v in phases.values())
    return {"rebuild_exit": code, "rebuild_tail": out[-300:] if code else "", "reload_status": reload_status,
            "phases": phases, "answers": sum(v["answers"] for v in phases.values()), "wrong_answers": mixed,
            "server_errors": sum(v["5xx"] for v in phases.values()), "failed": errors,
            "answers_switched_after_reload": changed_after_reload, "server_exit": exit_code,
            "ok": code == 0 and reload_status == 200 and mixed == 0 and errors == 0 and changed_after_reload > 0}


# ----------------------------------------------------------------------------- tampered and crafted builds


def _sql(*statements: str):
    def edit(path: Path) -> None:
        import sqlite3

        path.chmod(0o644)
        conn = sqlite3.connect(path)
        with conn:
            for statement in statements:
                conn.execute(statement)
        conn.close()
    return edit


def _manifest_edit(change):
    def edit(path: Path) -> None:
        manifest = json.loads(path.read_text())
        path.chmod(0o644)
        path.write_text(change(manifest))
    return edit


TAMPERING = {
    "store: wrong schema": ("passages.sqlite", _sql("ALTER TABLE passages RENAME COLUMN text TO body")),
    "store: row replaced": ("passages.sqlite", _sql(
        "DELETE FROM passages WHERE row = 3",
        "INSERT INTO passages (row, pid, title, text, hash, doc_id) VALUES (3, 'evil', 't', 'injected', 'x', 'evil')")),
    "store: row injected": ("passages.sqlite", _sql(
        "DELETE FROM passages WHERE row = 0",
        "INSERT INTO passages (row, pid, title, text, hash, doc_id) VALUES (100000, 'evil', 't', 'injected', 'x', 'evil')")),
    "manifest: nested 100k deep": ("manifest.json", _manifest_edit(
        lambda m: '{"format_version": 2, "files": ' + "[" * 100_000 + "]" * 100_000 + "}")),
    "manifest: wrong types": ("manifest.json", _manifest_edit(lambda m: json.dumps({**m, "count": "many"}))),
    "manifest: bm25 dir ../": ("manifest.json", _manifest_edit(
        lambda m: json.dumps({**m, "bm25": {**m.get("bm25", {}), "dir": "../../etc"}}))),
}


def tampered_builds(index_dir: Path, work: Path, *, timeout_s: float = 180.0, admin_token: str = "reliability",
                    cases: tuple[str, ...] = tuple(TAMPERING)) -> dict[str, Any]:
    """Copies of ``index_dir`` with one store or manifest tampered with each: `dpr serve` must refuse
    to start on it (naming the file), and ``/admin/reload`` of a running server must answer 4xx and
    keep serving."""
    import urllib.request

    from indexer.builds import current_build
    from reliability.serve_proc import start_server

    served = start_server(index_dir, work / "tampered-serve.log", env={"DPR_ADMIN_TOKEN": admin_token})
    results = []
    try:
        for name in cases:
            file_name, damage = TAMPERING[name]
            copy = work / f"tampered-{len(results)}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(index_dir, copy, symlinks=True)
            damage(current_build(copy) / file_name)
            code, out = run_to_exit(dpr_command("serve", "--index", str(copy), "--port", str(free_port())), timeout_s)
            refused = code not in (0, -9) and file_name in out
            request = urllib.request.Request(served.url + "/admin/reload", data=json.dumps({"index_dir": str(copy)}).encode(),
                                             headers={"Authorization": f"Bearer {admin_token}",
                                                      "Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=300) as r:
                    reload_status = r.status
            except urllib.error.HTTPError as e:
                reload_status = e.code
            with urllib.request.urlopen(served.url + "/readyz", timeout=10) as r:
                still_ready = r.status == 200
            results.append({"case": name, "serve_exit": code, "serve_refused": refused, "reload_status": reload_status,
                            "still_serving": still_ready,
                            "message": next((line for line in out.splitlines() if "error" in line), out[-200:])[-240:]})
    finally:
        exit_code = served.stop()
    return {"tried": len(results), "served_anyway": sum(not c["serve_refused"] for c in results),
            "reload_accepted": sum(c["reload_status"] == 200 for c in results),
            "server_errors": sum(c["reload_status"] >= 500 for c in results), "server_exit": exit_code,
            "cases": results,
            "ok": all(c["serve_refused"] and 400 <= c["reload_status"] < 500 and c["still_serving"] for c in results)}
