"""Resumable chunked embedding, `--shard I/N` shards and `dpr index merge`."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from driver.main import main
from indexer import SearchIndex, build_index
from indexer.build import default_work_dir, embed_shard
from indexer.builds import current_build
from indexer.merge import merge_shards
from indexer.shards import ShardError, ShardSpec
from retriever import DualEncoder, EncoderConfig

REPO = Path(__file__).resolve().parents[2]


class Crash(RuntimeError):
    pass


def spy(encoder: DualEncoder, monkeypatch: pytest.MonkeyPatch, fail_on_call: int | None = None) -> list[int]:
    """Passages per ``encode_passages`` call; raises :class:`Crash` on call number ``fail_on_call``."""
    sizes: list[int] = []
    real = encoder.encode_passages

    def wrapped(passages, *args, **kwargs):
        if fail_on_call is not None and len(sizes) + 1 == fail_on_call:
            raise Crash("injected crash")
        sizes.append(len(passages))
        return real(passages, *args, **kwargs)

    monkeypatch.setattr(encoder, "encode_passages", wrapped)
    return sizes


def _manifest(index_dir: Path) -> dict:
    return json.loads((current_build(index_dir) / "manifest.json").read_text())


def test_crash_after_two_chunks_resumes_with_the_rest(tiny_encoder, kb80: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "idx"
    with monkeypatch.context() as m:
        calls = spy(tiny_encoder, m, fail_on_call=3)
        with pytest.raises(Crash):
            build_index(tiny_encoder, [kb80], out, chunk_size=16, progress=False)
    assert calls == [16, 16] and not out.exists()
    work = default_work_dir(out)
    assert sorted(p.name for p in work.glob("emb-*.json")) == ["emb-00000.json", "emb-00001.json"]

    calls = spy(tiny_encoder, monkeypatch)
    with caplog.at_level(logging.INFO):
        build_index(tiny_encoder, [kb80], out, chunk_size=16, progress=False)
    assert calls == [16, 16, 16]                           # only chunks 2..4 are embedded again
    assert "resumed: 32 of 80 passages already embedded" in caplog.text
    stats = _manifest(out)["build"]
    assert (stats["resumed"], stats["embedded"], stats["reused"]) == (32, 48, 0)
    assert not work.exists()
    with SearchIndex.open(out, tiny_encoder) as index:
        fresh = tiny_encoder.encode_passages(index.passages(range(80)))
        np.testing.assert_allclose(index.embeddings, fresh, atol=1e-5)


def test_crash_leaves_the_served_index_untouched(built: Path, kb80: Path, make_kb, tiny_encoder,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    before = (current_build(built) / "manifest.json").read_bytes()
    extra = make_kb("extra.jsonl", 0, 40, source="nq-oracle-val.json")
    spy(tiny_encoder, monkeypatch, fail_on_call=2)
    with pytest.raises(Crash):
        build_index(tiny_encoder, [kb80, extra], built, chunk_size=16, progress=False)
    assert (current_build(built) / "manifest.json").read_bytes() == before
    with SearchIndex.open(built, tiny_encoder) as index:
        assert len(index) == 80


def test_chunks_of_another_model_are_not_reused(tiny_encoder, tiny_base: Path, kb80: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    other = DualEncoder.from_base(EncoderConfig(base_model=str(tiny_base), query_max_length=32,
                                                passage_max_length=64))
    with torch.no_grad():
        next(other.query_model.parameters()).mul_(1.5)
    out = tmp_path / "idx"
    with monkeypatch.context() as m:
        spy(other, m, fail_on_call=3)
        with pytest.raises(Crash):
            build_index(other, [kb80], out, chunk_size=16, progress=False)
    calls = spy(tiny_encoder, monkeypatch)
    with caplog.at_level(logging.WARNING):
        build_index(tiny_encoder, [kb80], out, chunk_size=16, progress=False)
    assert sum(calls) == 80 and "discarding unfinished embeddings of other work" in caplog.text
    assert _manifest(out)["build"]["resumed"] == 0


def test_sigkill_mid_build_then_rerun_finishes(tiny_base: Path, kb80: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    work = default_work_dir(out)
    # A real `dpr index` process whose encoder is slowed down so the kill lands mid-way.
    script = ("import sys, time\n"
              "from retriever.encoder import DualEncoder\n"
              "real = DualEncoder.encode_passages\n"
              "def slow(self, *a, **k):\n    time.sleep(0.3)\n    return real(self, *a, **k)\n"
              "DualEncoder.encode_passages = slow\n"
              "from driver.main import main\nsys.exit(main(sys.argv[1:]))\n")
    cmd = [sys.executable, "-c", script, "index", "--model", str(tiny_base), "--kb", str(kb80), "--out", str(out),
           "--chunk-size", "8", "--no-progress", "--no-bm25"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 120
        while len(list(work.glob("emb-*.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    done = len(list(work.glob("emb-*.json")))
    assert 2 <= done < 10
    from retriever.encoder import load_encoder

    encoder = load_encoder(str(tiny_base))
    sizes: list[int] = []
    real = encoder.encode_passages
    encoder.encode_passages = lambda p, *a, **k: sizes.append(len(p)) or real(p, *a, **k)
    build_index(encoder, [kb80], out, chunk_size=8, progress=False, bm25=False)
    assert sum(sizes) == 80 - 8 * done and _manifest(out)["build"]["resumed"] == 8 * done
    SearchIndex.open(out, encoder).close()


def _shards(encoder: DualEncoder, kb: Path, root: Path, n: int, dtype: str = "float32") -> list[Path]:
    dirs = []
    for i in range(n):
        d = root / f"shard{i}"
        embed_shard(encoder, [kb], d, ShardSpec(i, n), model_dir="tiny", dtype=dtype, chunk_size=10, progress=False)
        dirs.append(d)
    return dirs


def test_shards_merged_equal_a_single_build(built: Path, tiny_encoder, kb80: Path, tmp_path: Path) -> None:
    dirs = _shards(tiny_encoder, kb80, tmp_path, 3)
    header = json.loads((dirs[1] / "shard.json").read_text())
    assert header["rows"] == [26, 53] and header["shard"] == [1, 3] and header["complete"]
    merged = merge_shards(list(reversed(dirs)), tmp_path / "merged", progress=False)
    one, two = _manifest(built), _manifest(merged)
    assert two["count"] == one["count"] == 80 and two["kb"] == one["kb"] and two["model"] == one["model"]
    assert two["build"]["merged_shards"] == 3
    np.testing.assert_allclose(np.load(current_build(merged) / "embeddings.npy"), np.load(current_build(built) / "embeddings.npy"), atol=1e-5)
    with SearchIndex.open(merged, tiny_encoder) as a, SearchIndex.open(built, tiny_encoder) as b:
        assert [p.pid for p in a.passages(range(80))] == [p.pid for p in b.passages(range(80))]
        q = tiny_encoder.encode_queries(["who wrote it", "where is the river"])
        np.testing.assert_array_equal(a.search(q, 5)[1], b.search(q, 5)[1])


def test_float16_shards_merge_close_to_float32(built: Path, tiny_encoder, kb80: Path, tmp_path: Path) -> None:
    dirs = _shards(tiny_encoder, kb80, tmp_path, 2, dtype="float16")
    assert np.load(dirs[0] / "emb-00000.npy").dtype == np.float16
    merged = merge_shards(dirs, tmp_path / "merged", progress=False)
    vectors = np.load(current_build(merged) / "embeddings.npy")
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, np.load(current_build(built) / "embeddings.npy"), atol=2e-3)


def test_merge_refuses_bad_shard_sets(tiny_encoder, tiny_base: Path, kb80: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    dirs = _shards(tiny_encoder, kb80, tmp_path, 3)
    out = tmp_path / "merged"
    with pytest.raises(ShardError, match=r"shards 1/3 missing"):
        merge_shards([dirs[0], dirs[2]], out, progress=False)
    with pytest.raises(ShardError, match=r"shard 0/3 given twice"):
        merge_shards([dirs[0], dirs[0], dirs[1], dirs[2]], out, progress=False)
    other = DualEncoder.from_base(EncoderConfig(base_model=str(tiny_base), query_max_length=32,
                                                passage_max_length=64))
    with torch.no_grad():
        next(other.query_model.parameters()).mul_(1.5)
    foreign = tmp_path / "foreign"
    embed_shard(other, [kb80], foreign, ShardSpec(1, 3), chunk_size=10, progress=False)
    with pytest.raises(ShardError, match=rf"{foreign}: embedded by another model"):
        merge_shards([dirs[0], foreign, dirs[2]], out, progress=False)
    # A shard interrupted mid-way is refused by name.
    unfinished = tmp_path / "unfinished"
    spy(tiny_encoder, monkeypatch, fail_on_call=2)
    with pytest.raises(Crash):
        embed_shard(tiny_encoder, [kb80], unfinished, ShardSpec(1, 3), chunk_size=10, progress=False)
    with pytest.raises(ShardError, match=rf"{unfinished}: shard 1/3 is unfinished"):
        merge_shards([dirs[0], unfinished, dirs[2]], out, progress=False)
    # A damaged chunk file.
    npy = dirs[2] / "emb-00001.npy"
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF
    npy.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"emb-00001.npy: SHA-256 differs"):
        merge_shards(dirs, out, progress=False)
    assert not out.exists()


def test_merge_refuses_a_changed_kb(tiny_encoder, kb80: Path, tmp_path: Path) -> None:
    dirs = _shards(tiny_encoder, kb80, tmp_path, 2)
    kb80.write_text(kb80.read_text().replace('"text": "', '"text": "changed ', 1))
    with pytest.raises(ShardError, match=r"differs from the one the shards were embedded from"):
        merge_shards(dirs, tmp_path / "merged", progress=False)


def test_shard_dir_of_other_work_is_refused(tiny_encoder, kb80: Path, tmp_path: Path) -> None:
    d = tmp_path / "shard"
    embed_shard(tiny_encoder, [kb80], d, ShardSpec(0, 2), chunk_size=10, progress=False)
    with pytest.raises(ShardError, match=r"holds embeddings of other work .*shard"):
        embed_shard(tiny_encoder, [kb80], d, ShardSpec(1, 2), chunk_size=10, progress=False)


def test_cli_shard_and_merge(tiny_base: Path, kb80: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--model", str(tiny_base), "--kb", str(kb80), "--no-progress", "--chunk-size", "16"]
    for i in range(2):
        assert main(["index", "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}"), "--dtype", "float16",
                     *common]) == 0
    assert "shard 1/2: rows 40-79 (40 passages, float16)" in capsys.readouterr().out
    out = tmp_path / "idx"
    assert main(["index", "merge", "--shards", str(tmp_path / "s1"), str(tmp_path / "s0"), "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "indexed 80 passages" in printed and "merged 2 shards" in printed
    with SearchIndex.open(out) as index:
        assert len(index) == 80 and index.model_dir == str(tiny_base.resolve())
    assert main(["index", "merge", "--shards", str(tmp_path / "s1"), "--out", str(tmp_path / "x")]) == 2
    assert "shards 0/2 missing" in capsys.readouterr().err
    assert main(["index", "--shard", "2/2", "--out", str(tmp_path / "s2"), *common]) == 2
    assert "--shard 2/2" in capsys.readouterr().err


def test_shard_spec_rows_cover_without_gaps() -> None:
    for total in (0, 1, 7, 80, 1001):
        for n in (1, 2, 3, 7):
            ranges = [ShardSpec(i, n).rows(total) for i in range(n)]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    with pytest.raises(ValueError, match="I/N"):
        ShardSpec.parse("1-2")
