"""Rebuilds reuse the previous index's vectors for unchanged passages and embed only the rest."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer import SearchIndex, build_index
from indexer.builds import current_build
from retriever import DualEncoder, EncoderConfig


@pytest.fixture()
def counted(tiny_encoder, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Number of passages handed to ``encode_passages`` per call."""
    sizes: list[int] = []
    real = tiny_encoder.encode_passages

    def spy(passages, *args, **kwargs):
        sizes.append(len(passages))
        return real(passages, *args, **kwargs)

    monkeypatch.setattr(tiny_encoder, "encode_passages", spy)
    return sizes


def _build_stats(index_dir: Path) -> dict:
    return json.loads((current_build(index_dir) / "manifest.json").read_text())["build"]


def test_unchanged_rebuild_embeds_nothing(built: Path, kb80: Path, tiny_encoder, counted: list[int]) -> None:
    first = np.load(current_build(built) / "embeddings.npy")
    build_index(tiny_encoder, [kb80], built, progress=False)
    stats = _build_stats(built)
    assert counted == [] and (stats["embedded"], stats["reused"]) == (0, 80)
    np.testing.assert_array_equal(np.load(current_build(built) / "embeddings.npy"), first)
    SearchIndex.open(built, tiny_encoder).close()


def test_three_new_passages_embed_only_three(built: Path, kb80: Path, make_kb, tiny_encoder,
                                             counted: list[int]) -> None:
    extra = make_kb("extra.jsonl", 0, 3, source="nq-oracle-val.json")
    build_index(tiny_encoder, [kb80, extra], built, progress=False)
    assert counted == [3]
    stats = _build_stats(built)
    assert (stats["embedded"], stats["reused"]) == (3, 80)
    with SearchIndex.open(built, tiny_encoder) as index:
        assert len(index) == 83
        # Reused and new vectors are what a fresh encode would give, at the right rows.
        fresh = tiny_encoder.encode_passages(index.passages(range(83)))
        np.testing.assert_allclose(index.embeddings, fresh, atol=1e-5)


def test_changed_text_is_re_embedded(built: Path, kb80: Path, tiny_encoder, counted: list[int]) -> None:
    records = [json.loads(line) for line in kb80.read_text().splitlines()]
    records[7]["text"] += " (revised)"
    records[9]["title"] = "Another title"
    kb80.write_text("".join(json.dumps(r) + "\n" for r in records))
    build_index(tiny_encoder, [kb80], built, progress=False)
    assert counted == [2]
    with SearchIndex.open(built) as index:
        assert index.passage(records[7]["_id"]).text.endswith("(revised)")


def test_other_encoder_weights_do_not_reuse(built: Path, kb80: Path, tiny_base: Path) -> None:
    other = DualEncoder.from_base(EncoderConfig(base_model=str(tiny_base), query_max_length=32,
                                                passage_max_length=64))
    with torch.no_grad():
        next(other.query_model.parameters()).mul_(1.5)
    build_index(other, [kb80], built, progress=False)
    assert _build_stats(built)["embedded"] == 80
    SearchIndex.open(built, other).close()


def test_another_precision_does_not_reuse_and_is_recorded(built: Path, kb80: Path, tiny_encoder,
                                                          counted: list[int]) -> None:
    from retriever.runtime import prepare_encoder

    prepare_encoder(tiny_encoder, "torch", "bf16")
    build_index(tiny_encoder, [kb80], built, progress=False)
    assert counted == [80] and _build_stats(built)["embedded"] == 80
    manifest = json.loads((current_build(built) / "manifest.json").read_text())
    assert manifest["model"]["quantize"] == "bf16"
    build_index(tiny_encoder, [kb80], built, progress=False)     # the same precision again: all reused
    assert counted == [80] and _build_stats(built)["reused"] == 80


def test_damaged_previous_index_means_full_embed_not_failure(built: Path, kb80: Path, tiny_encoder) -> None:
    (current_build(built) / "passage_hashes.npy").write_bytes(b"garbage")
    build_index(tiny_encoder, [kb80], built, progress=False)
    assert _build_stats(built)["embedded"] == 80
    SearchIndex.open(built, tiny_encoder).close()


def test_hashes_ending_in_nul_bytes_survive_the_round_trip(tiny_encoder, tmp_path: Path,
                                                           counted: list[int]) -> None:
    import hashlib

    from common.data import Passage
    from indexer import content_hash

    # A raw SHA-1 digest ends in 0x00 once in 256 passages; numpy's "S" dtype drops trailing NULs,
    # which once made such passages miss the cache.
    texts = [f"passage number {i}" for i in range(2000)]
    nul = [t for t in texts if hashlib.sha1(f"T\n{t}".encode()).digest()[-1] == 0][:2]
    assert len(nul) == 2
    records = [{"_id": f"n{i}", "title": "T", "text": t} for i, t in enumerate(nul + texts[:8])]
    kb = tmp_path / "kb.jsonl"
    kb.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = build_index(tiny_encoder, [kb], tmp_path / "idx", progress=False)
    assert content_hash(Passage("x", "T", nul[0])) == hashlib.sha1(f"T\n{nul[0]}".encode()).hexdigest()
    build_index(tiny_encoder, [kb], out, progress=False)
    assert counted == [10] and _build_stats(out)["reused"] == 10
