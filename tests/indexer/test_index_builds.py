"""Versioned builds: a rebuild is a new immutable snapshot, an open index keeps reading its own,
rollback goes back one, pruning never deletes a build that is open, legacy directories still work."""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from common.data import load_corpus
from driver.main import main
from indexer import IndexLoadError, SearchIndex, build_index
from indexer.builds import BUILDS_DIR, CURRENT, LEGACY, current_build, list_builds, new_build, prune_builds, rollback


def _in_new_thread(fn):
    """Run ``fn`` on a thread that has never touched the store: it opens a fresh SQLite connection."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:   # noqa: BLE001 - re-raised in the caller
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_an_open_index_keeps_reading_its_build_after_an_in_place_rebuild(built: Path, kb80: Path, make_kb,
                                                                        tiny_encoder) -> None:
    """Finding 1: a thread that connects after `dpr index --out <served dir>` must not read the new
    build's passages.sqlite (other texts at the same rows, or rows past its end) while the old FAISS
    index answers."""
    old = load_corpus(kb80)
    other = make_kb("other.jsonl", 0, 30, source="nq-oracle-val.json")
    with SearchIndex.open(built) as index:
        assert _in_new_thread(lambda: index.passages([0])) == [old[0]]
        build_index(tiny_encoder, [other], built, progress=False)          # in place, while open
        assert len(load_corpus(other)) < 80
        got = _in_new_thread(lambda: index.passages([0, 41, 79]))          # 41 and 79 are past the new store
        assert got == [old[0], old[41], old[79]]
        q = tiny_encoder.encode_queries(["who wrote it"])
        rows = index.search(q, 5)[1][0]
        assert _in_new_thread(lambda: [p.pid for p in index.passages(rows)]) == [old[r].pid for r in rows]
    with SearchIndex.open(built) as fresh:                                  # a new open sees the new build
        assert len(fresh) == len(load_corpus(other))


def test_each_build_is_a_read_only_snapshot_and_rollback_goes_back_one(built: Path, kb80: Path, make_kb,
                                                                       tiny_encoder) -> None:
    first = current_build(built)
    first_manifest = (first / "manifest.json").read_bytes()
    build_index(tiny_encoder, [make_kb("kb50.jsonl", 0, 50)], built, progress=False)
    second = current_build(built)
    assert second != first and (first / "manifest.json").read_bytes() == first_manifest
    assert os.readlink(built / CURRENT) == f"{BUILDS_DIR}/{second.name}"
    assert [b.name for b in list_builds(built)] == [first.name, second.name]
    assert rollback(built).name == first.name and current_build(built) == first
    with SearchIndex.open(built) as index:
        assert len(index) == 80 and index.build == first.name
    with pytest.raises(ValueError, match="oldest one kept; nothing to roll back to"):
        rollback(built)


def test_prune_keeps_the_newest_and_any_build_a_reader_holds(built: Path, make_kb, tiny_encoder) -> None:
    held = SearchIndex.open(built)                     # build 1 stays open
    try:
        for n in (40, 50, 60, 70):
            build_index(tiny_encoder, [make_kb(f"kb{n}.jsonl", 0, n)], built, progress=False, keep_builds=2)
        names = [b.name for b in list_builds(built)]
        assert len(names) == 3 and names[0] == held.build          # the held one survived pruning
        assert held.passages([79])[0].pid                          # and still reads
    finally:
        held.close()
    assert prune_builds(built, keep=2) == [names[0]]                # released: now it goes
    assert len(list_builds(built)) == 2 and len(SearchIndex.open(built)) == 70


def test_a_crashed_build_leaves_current_alone_and_its_temp_dir_is_pruned(built: Path) -> None:
    before = current_build(built)
    with pytest.raises(RuntimeError, match="boom"):
        with new_build(built) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert current_build(built) == before and not list((built / BUILDS_DIR).glob(".tmp-*"))
    leftover = built / BUILDS_DIR / ".tmp-dead"           # what a kill -9 mid-build leaves
    leftover.mkdir()
    prune_builds(built)
    assert not leftover.exists() and current_build(built) == before


@pytest.mark.parametrize("target", ["../../etc", "/etc", "builds/../../x", "builds/nope-not-a-build"])
def test_a_current_pointer_outside_the_builds_is_refused(built: Path, target: str) -> None:
    link = built / CURRENT
    link.unlink()
    link.symlink_to(target)
    with pytest.raises(IndexLoadError, match=r"current: points to .*, not to a build under builds/"):
        SearchIndex.open(built)


def test_a_legacy_single_directory_index_is_served_and_upgraded_in_place(built: Path, kb80: Path, make_kb,
                                                                         tiny_encoder, tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    shutil.copytree(current_build(built), legacy)            # the old layout: files directly in DIR
    before = {p.name: p.read_bytes() for p in legacy.iterdir() if p.is_file()}
    with SearchIndex.open(legacy) as index:
        assert index.build == LEGACY and len(index) == 80
    build_index(tiny_encoder, [make_kb("kb60.jsonl", 0, 60)], legacy, progress=False)
    assert {p.name: p.read_bytes() for p in legacy.iterdir() if p.is_file()} == before   # left for old servers
    with SearchIndex.open(legacy) as index:
        assert len(index) == 60 and index.build != LEGACY
        assert index.manifest["build"]["reused"] == 60         # vectors reused from the legacy build
    assert rollback(legacy).name == LEGACY and not (legacy / CURRENT).exists()
    with SearchIndex.open(legacy) as index:
        assert len(index) == 80


def test_dpr_index_rollback_cli(built: Path, make_kb, tiny_encoder, capsys) -> None:
    first = current_build(built).name
    build_index(tiny_encoder, [make_kb("kb30.jsonl", 0, 30)], built, progress=False)
    assert main(["index", "rollback", str(built)]) == 0
    out = capsys.readouterr().out
    assert f"to {first}" in out and current_build(built).name == first
    assert main(["index", "rollback", str(built)]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err


def test_manifest_of_a_build_records_the_store_checksum(built: Path) -> None:
    manifest = json.loads((current_build(built) / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    entry = manifest["files"]["passages.sqlite"]
    assert entry["bytes"] == (current_build(built) / "passages.sqlite").stat().st_size and len(entry["sha256"]) == 64
