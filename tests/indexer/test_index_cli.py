"""`dpr index` through the real front door."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from driver.main import main
from indexer import SearchIndex
from indexer.builds import current_build
from retriever.encoder import load_encoder


def test_dpr_index_builds_a_servable_index(tiny_base: Path, kb80: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "idx"
    rc = main(["index", "--model", str(tiny_base), "--kb", str(kb80), "--out", str(out),
               "--index-type", "hnsw", "--hnsw-m", "8", "--batch-size", "16", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "indexed 80 passages" in printed and "80 embedded, 0 reused" in printed
    manifest = json.loads((current_build(out) / "manifest.json").read_text())
    assert manifest["model_dir"] == str(tiny_base.resolve())
    assert manifest["index_params"]["hnsw_m"] == 8 and manifest["index_params"]["batch_size"] == 16
    # What the server does: load the recorded model, which must fit the index.
    with SearchIndex.open(out) as plain:
        encoder = load_encoder(plain.model_dir)
    with SearchIndex.open(out, encoder) as index:
        _, rows = index.search(encoder.encode_queries(["who won"]), 3)
        assert rows.shape == (1, 3)

    assert main(["index", "--model", str(tiny_base), "--kb", str(kb80), "--out", str(out), "--index-type",
                 "hnsw", "--hnsw-m", "8", "--no-progress"]) == 0
    assert "0 embedded, 80 reused" in capsys.readouterr().out


@pytest.mark.parametrize("amx", [True, False])
def test_default_precision_is_bf16_only_on_an_amx_cpu(amx: bool, tiny_base: Path, kb80: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import retriever.precision

    monkeypatch.setattr(retriever.precision, "cpu_has_amx", lambda: amx)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)

    def built(name: str, *flags: str) -> str:
        out = tmp_path / name
        assert main(["index", "--model", str(tiny_base), "--kb", str(kb80), "--out", str(out), "--no-bm25",
                     "--no-progress", *flags]) == 0
        return json.loads((current_build(out) / "manifest.json").read_text())["model"]["quantize"]

    assert built("auto") == ("bf16" if amx else "none")
    assert built("fp32", "--quantize", "none") == "none"
    assert built("onnx", "--runtime", "onnx") == "none"           # ONNX Runtime has no bf16


def test_dpr_index_reports_bad_kb_and_exits_2(tiny_base: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "a", "title": "t", "text": "fine"}\n{"_id": "b", "title": "t", "text": 5}\n')
    out = tmp_path / "idx"
    assert main(["index", "--model", str(tiny_base), "--kb", str(bad), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: 'text' must be a string" in err
    assert not out.exists()


@pytest.mark.parametrize("argv", [["index", "merge", "--shards", "s0", "s1", "--out", "x"],
                                  ["index", "--shard", "0/2", "--model", "m", "--kb", "kb.jsonl", "--out", "x"]])
def test_merge_and_shard_refuse_to_run_under_torchrun(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(argv) == 2
    assert "not under torchrun (WORLD_SIZE=2)" in capsys.readouterr().err
