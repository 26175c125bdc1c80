"""`dpr bench speed --peers` on a tiny knowledge base: txtai's build and API and sentence-transformers'
trainer run beside dpr and every peer row gets its ratio. Skipped only without the peers extra (CI
installs it)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.peers import missing_peers

pytestmark = pytest.mark.skipif(bool(missing_peers()), reason=f"peers extra not installed: {missing_peers()}")


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_peers_section_measures_txtai_and_sentence_transformers(tmp_path: Path, small_nq, saved_model: Path) -> None:
    from bench.speed_report import markdown
    from driver.main import main

    train, val = small_nq
    out = tmp_path / "speed"
    # A saved dual encoder is a sentence-transformers directory: txtai and the trainer load it as is.
    code = main(["bench", "speed", "--out", str(out), "--model", str(saved_model), "--kb", str(val), "--train", str(train),
                 "--val", str(val), "--sections", "peers", "--peer-rounds", "1", "--latency-queries", "6",
                 "--concurrency", "1,4", "--duration", "1", "--peer-batch-size", "8"])
    assert code == 0
    report = json.loads((out / "speed.json").read_text())
    peers = report["peers"]
    assert set(peers["versions"]) == {"txtai", "sentence_transformers"}
    build = peers["build"]
    assert len(build["dpr_s"]) == len(build["txtai_s"]) == 1 and _positive(build["ratio"])
    assert build["ratio"] == round(min(build["txtai_s"]) / min(build["dpr_s"]), 2)
    seq = peers["http"]["sequential"]
    assert seq["dpr"]["n"] == seq["txtai"]["n"] == 6 and _positive(seq["p50_ratio"])
    for row in peers["http"]["throughput"]:
        assert row["failed"] == {"dpr": 0, "txtai": 0}
        assert _positive(row["dpr_qps"]) and _positive(row["txtai_qps"]) and _positive(row["ratio"])
    assert [r["concurrency"] for r in peers["http"]["throughput"]] == [1, 4]
    t = peers["train"]
    assert t["pairs"] == len(json.loads(train.read_text())) and t["batch_size"] == 8
    assert _positive(t["dpr_pairs_per_s"]) and _positive(t["st_pairs_per_s"]) and _positive(t["ratio"])
    # txtai really built an index of the same passages
    config = json.loads((out / "work" / "peers" / "txtai-0" / "config.json").read_text())
    assert config["dimensions"] == 32 and config["backend"] == "faiss" and config["path"] == str(saved_model)
    assert "### Peers" in markdown(report)


def test_peers_refuse_clearly_without_the_extra(monkeypatch, tmp_path: Path) -> None:
    import bench.peers

    monkeypatch.setattr(bench.peers, "PEER_MODULES", ("txtai", "no_such_peer_module"))
    with pytest.raises(RuntimeError, match=r"--peers needs no_such_peer_module: pip install -e '\.\[peers\]'"):
        bench.peers.section_peers(None, tmp_path, [])
