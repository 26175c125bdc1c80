"""Refusals: a foreign encoder, damaged files, half-finished or interrupted builds, bad KB input."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from common.data import DataError
from indexer import IndexConfig, IndexLoadError, ManifestMismatch, SearchIndex, build_index, check_encoder
from indexer.builds import current_build
from retriever import DualEncoder, EncoderConfig


def _encoder(tiny_base: Path, **overrides) -> DualEncoder:
    settings = dict(base_model=str(tiny_base), pooling="mean", similarity="cos", query_max_length=32,
                    passage_max_length=64)
    return DualEncoder.from_base(EncoderConfig(**{**settings, **overrides}))


def test_differently_initialised_encoder_is_refused(built: Path, tiny_base: Path) -> None:
    other = _encoder(tiny_base)
    with torch.no_grad():
        next(other.query_model.parameters()).add_(0.01)
    with pytest.raises(ManifestMismatch, match="weights_sha256: index has '[0-9a-f]{64}', encoder has") as e:
        SearchIndex.open(built, other)
    assert str(built) in str(e.value) and [d[0] for d in e.value.differences] == ["weights_sha256"]


def test_different_pooling_and_similarity_are_named(built: Path, tiny_base: Path) -> None:
    other = _encoder(tiny_base, pooling="cls", similarity="dot", passage_max_length=128)
    with pytest.raises(ManifestMismatch) as e:
        SearchIndex.open(built, other)
    message = str(e.value)
    assert "pooling: index has 'mean', encoder has 'cls'" in message
    assert "similarity: index has 'cos', encoder has 'dot'" in message
    assert "normalize: index has True, encoder has False" in message
    assert "passage_max_length: index has 64, encoder has 128" in message
    assert "weights_sha256" not in message                      # same weights: not reported


def test_check_encoder_accepts_the_building_encoder(built: Path, tiny_encoder) -> None:
    manifest = json.loads((current_build(built) / "manifest.json").read_text())
    check_encoder(manifest, tiny_encoder)                       # no exception
    manifest["model"]["dim"] = 64
    with pytest.raises(ManifestMismatch, match="dim: index has 64, encoder has 32"):
        check_encoder(manifest, tiny_encoder)


def test_passage_format_mismatch_is_refused_and_old_manifests_mean_pair(built: Path, tiny_base: Path) -> None:
    manifest = json.loads((current_build(built) / "manifest.json").read_text())
    assert manifest["model"]["encoder"]["passage_format"] == "pair"
    joined = _encoder(tiny_base, passage_format="joined")           # same weights, other passage text
    with pytest.raises(ManifestMismatch, match="passage_format: index has 'pair', encoder has 'joined'") as e:
        check_encoder(manifest, joined)
    assert [d[0] for d in e.value.differences] == ["passage_format"]
    del manifest["model"]["encoder"]["passage_format"]              # written before the field existed
    check_encoder(manifest, _encoder(tiny_base))                     # pair: no exception
    with pytest.raises(ManifestMismatch, match="passage_format: index has 'pair', encoder has 'joined'"):
        check_encoder(manifest, joined)


def test_rows_deleted_from_store_are_a_count_mismatch(built: Path) -> None:
    store = current_build(built) / "passages.sqlite"
    store.chmod(0o644)
    conn = sqlite3.connect(store)
    with conn:
        conn.execute("DELETE FROM passages WHERE row >= 70")
    conn.close()
    with pytest.raises(IndexLoadError, match=r"passages\.sqlite: SHA-256 differs"):
        SearchIndex.open(built)
    with pytest.raises(IndexLoadError, match=r"passages\.sqlite: holds 70 passages, .* say 80"):
        SearchIndex.open(built, verify=False)


def test_store_that_is_not_sqlite_is_named(built: Path) -> None:
    store = current_build(built) / "passages.sqlite"
    size = store.stat().st_size
    store.write_bytes((b"this is not a database" * (size // 22 + 1))[:size])     # same size: sizes cannot tell
    with pytest.raises(IndexLoadError, match=r"passages\.sqlite: SHA-256 differs"):
        SearchIndex.open(built)
    with pytest.raises(IndexLoadError, match=r"passages\.sqlite: not a readable passage store"):
        SearchIndex.open(built, verify=False)


def test_corrupt_faiss_file_is_named(built: Path) -> None:
    path = current_build(built) / "index.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match=r"index\.faiss: SHA-256 differs"):
        SearchIndex.open(built)


def test_unreadable_faiss_file_is_named_without_checksums(built: Path) -> None:
    path = current_build(built) / "index.faiss"
    path.write_bytes(b"\0" * path.stat().st_size)          # same size, so only FAISS itself can tell
    with pytest.raises(IndexLoadError, match=r"index\.faiss: not a readable FAISS index"):
        SearchIndex.open(built, verify=False)


def test_truncated_files_are_named(built: Path) -> None:
    for name in ("index.faiss", "embeddings.npy", "passages.sqlite"):
        path = current_build(built) / name
        original = path.read_bytes()
        path.write_bytes(original[: len(original) // 3])
        with pytest.raises(IndexLoadError, match=rf"{name.replace('.', '[.]')}: size \d+ bytes, manifest says"):
            SearchIndex.open(built, verify=False)
        path.write_bytes(original)
    SearchIndex.open(built).close()                              # restored: loads again


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format_version": 99}'])
def test_corrupt_manifest_is_named(built: Path, content: str) -> None:
    (current_build(built) / "manifest.json").write_text(content)
    with pytest.raises(IndexLoadError, match=r"manifest\.json"):
        SearchIndex.open(built)


def test_missing_directory_and_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(IndexLoadError, match="no such index directory"):
        SearchIndex.open(tmp_path / "nope")
    with pytest.raises(IndexLoadError, match=r"not an index directory .no current build and no manifest\.json"):
        SearchIndex.open(tmp_path)


def _old_state(index_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(index_dir)): p.read_bytes() for p in index_dir.rglob("*") if p.is_file()}


def test_failure_inside_the_atomic_block_keeps_the_old_index(built: Path, make_kb, tiny_encoder,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    before = _old_state(built)
    bigger = make_kb("kb90.jsonl", 0, 90)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("indexer.build.write_store", boom)
    with pytest.raises(OSError, match="disk full"):
        build_index(tiny_encoder, [bigger], built, progress=False)
    assert _old_state(built) == before
    assert [p.name for p in built.parent.iterdir() if p.name.startswith(".")] == []
    with SearchIndex.open(built, tiny_encoder) as index:
        assert len(index) == 80


def test_encoder_failing_midway_keeps_the_old_index(built: Path, make_kb, tiny_encoder,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    before = _old_state(built)
    calls = {"n": 0}
    real_embed = tiny_encoder._embed

    def flaky(model, inputs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt                               # as if the user pressed Ctrl-C
        return real_embed(model, inputs)

    monkeypatch.setattr(tiny_encoder, "_embed", flaky)
    with pytest.raises(KeyboardInterrupt):
        # Small batches, so the failure lands after some passages were embedded.
        build_index(tiny_encoder, [make_kb("kb120.jsonl", 60, 180)], built, IndexConfig(batch_size=16),
                    progress=False)
    assert calls["n"] == 2
    assert _old_state(built) == before
    SearchIndex.open(built).close()


def test_malformed_kb_names_file_and_line_and_writes_nothing(tiny_encoder, kb80: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = kb80.read_text().splitlines()
    lines[2] = '{"_id": "x", "title": "t", "text": '                  # truncated record on line 3
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "idx"
    with pytest.raises(DataError, match=rf"{bad}:3: invalid JSON"):
        build_index(tiny_encoder, [kb80, bad], out, progress=False)
    assert not out.exists()
    assert not (out.parent.exists() and any(out.parent.iterdir()))
    missing_text = tmp_path / "notext.jsonl"
    missing_text.write_text('{"_id": "a", "title": "t", "text": "ok"}\n{"_id": "b", "title": "t"}\n')
    with pytest.raises(DataError, match=rf"{missing_text}:2: missing key 'text'"):
        build_index(tiny_encoder, [missing_text], out, progress=False)
    assert not out.exists()


def test_a_directory_that_is_not_an_index_is_never_replaced(tiny_encoder, kb80: Path, tmp_path: Path) -> None:
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(ValueError, match="not an index directory .*refusing to write into it"):
        build_index(tiny_encoder, [kb80], precious, progress=False)
    assert (precious / "thesis.txt").read_text() == "years of work"
