"""Faults around a served index: `dpr serve` refuses damaged files with a message naming the file
and a non-zero exit, and kill -9 of `dpr index` mid-build leaves the served index untouched."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from indexer.builds import current_build
from reliability.faults import CHUNK_WRITTEN, _scribble, _truncate, dir_digests, kill_indexer_mid_build


@pytest.mark.parametrize("name,damage", [
    ("index.faiss", _truncate), ("index.faiss", _scribble), ("passages.sqlite", _scribble),
    ("passages.sqlite", _truncate), ("manifest.json", _truncate), ("embeddings.npy", _truncate),
    ("passage_hashes.npy", _scribble), ("index_config.json", _truncate),
])
def test_dpr_serve_refuses_a_damaged_file_and_names_it(built: Path, capsys, name: str, damage) -> None:
    from driver.main import main

    damage(current_build(built) / name)
    code = main(["serve", "--index", str(built), "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "dpr serve: error: start-up failed:" in err and name in err, err


def test_missing_file_is_named(built: Path, capsys) -> None:
    from driver.main import main

    (current_build(built) / "passages.sqlite").unlink()
    assert main(["serve", "--index", str(built), "--port", "0"]) == 2
    assert "passages.sqlite" in capsys.readouterr().err


def test_kill_9_mid_build_leaves_the_served_index_untouched_and_the_rerun_resumes(built: Path, make_kb,
                                                                                  tmp_path: Path) -> None:
    """`built` (tiny model) is rebuilt with MiniLM (~50 passages/s, slow enough to be killed in the
    middle) in chunks of 8, killed once the first chunk is on disk; the re-run must resume from it."""
    from indexer import SearchIndex

    served = Path(shutil.copytree(built, tmp_path / "served", symlinks=True))
    before = dir_digests(served)
    kb = make_kb("kb24.jsonl", 0, 24)
    result = kill_indexer_mid_build(served, "minilm", [str(kb)], kill_on=CHUNK_WRITTEN,
                                    extra_args=("--batch-size", "4", "--chunk-size", "8"), timeout_s=300)
    assert result["crashes"] == 1, result          # the kill landed mid-build
    assert result["served_unchanged"] and result["served_still_loads"], result
    assert result["data_lost"] == 0
    assert result["rerun_exit"] == 0, result
    assert result["rerun_resumed_from_chunks"] >= 8, result
    assert dir_digests(served) != before           # the re-run replaced it, atomically
    with SearchIndex.open(served) as index:
        assert len(index) == 24 and index.dim == 384
