"""int8 dynamic quantisation of the dual encoder, and how indexes and the server record and treat it."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from common.data import Passage
from indexer.builds import current_build
from retriever.quantize import check_mode, quantization_mismatch, quantize_encoder

PASSAGES = [Passage("p1", "Rivers", "the river flows to the sea through the valley"),
            Passage("p2", "Bread", "bakers knead dough at dawn and bake it before sunrise"),
            Passage("p3", "Stars", "stars shine at night")]


def test_int8_keeps_fingerprint_and_close_vectors(tiny_encoder) -> None:
    from torch import nn

    before = tiny_encoder.describe()
    fp32_p = tiny_encoder.encode_passages(PASSAGES)
    fp32_q = tiny_encoder.encode_queries(["where does a river flow"])
    assert before["quantize"] == "none"
    assert quantize_encoder(tiny_encoder, "int8") is tiny_encoder
    after = tiny_encoder.describe()
    assert after["quantize"] == "int8"
    assert after["weights_sha256"] == before["weights_sha256"]
    # Every nn.Linear became a dynamically quantised one.
    linears = [m for m in tiny_encoder.query_model.modules() if type(m) is nn.Linear]
    assert linears == []
    int8_p = tiny_encoder.encode_passages(PASSAGES)
    int8_q = tiny_encoder.encode_queries(["where does a river flow"])
    assert int8_p.shape == fp32_p.shape and int8_p.dtype == np.float32
    assert not np.array_equal(int8_p, fp32_p)
    assert np.min(np.sum(int8_p * fp32_p, axis=1)) > 0.9
    assert float(int8_q[0] @ fp32_q[0]) > 0.9
    # Unit norm is kept (cosine similarity) and the ranking of the obvious match survives.
    np.testing.assert_allclose(np.linalg.norm(int8_p, axis=1), 1.0, atol=1e-5)


def test_quantize_is_idempotent_and_none_is_a_no_op(tiny_encoder) -> None:
    assert quantize_encoder(tiny_encoder, "none").quantization == "none"
    quantize_encoder(tiny_encoder, "int8")
    first = tiny_encoder.query_model
    quantize_encoder(tiny_encoder, "int8")
    assert tiny_encoder.query_model is first


def test_bad_mode_and_saving_a_quantized_encoder_are_refused(tiny_encoder, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="quantize must be one of"):
        check_mode("int4")
    with pytest.raises(ValueError, match="quantize must be one of"):
        quantize_encoder(tiny_encoder, "fp16")
    quantize_encoder(tiny_encoder, "int8")
    with pytest.raises(ValueError, match="inference-only"):
        tiny_encoder.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_quantization_mismatch_message() -> None:
    assert quantization_mismatch("int8", "int8") is None
    assert quantization_mismatch(None, "none") is None          # indexes from before the field: fp32
    message = quantization_mismatch("int8", "none")
    assert message is not None and "'int8'" in message and "'none'" in message


def test_int8_index_records_quantize_and_serves_with_fp32_queries(saved_model: Path, tmp_path: Path, small_nq,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from driver.main import main
    from server.engine import load_engine

    model = saved_model
    train, _ = small_nq
    out = tmp_path / "idx"
    assert main(["index", "--model", str(model), "--kb", str(train), "--out", str(out), "--quantize", "int8",
                 "--no-bm25", "--no-progress"]) == 0
    manifest = json.loads((current_build(out) / "manifest.json").read_text())
    assert manifest["model"]["quantize"] == "int8"
    with caplog.at_level(logging.WARNING, logger="server.engine"):
        engine = load_engine(out, quantize="none")
    try:
        assert engine.encoder.quantization == "none"
        assert any("quantize='int8'" in r.getMessage() for r in caplog.records)
        (hits,) = engine.search(["who wrote it"], 3)
        assert len(hits) == 3
    finally:
        engine.close()
    same = load_engine(out, quantize="int8")
    try:
        assert same.encoder.quantization == "int8"
        # A reload asking for another precision loads a new encoder instead of reusing this one.
        other = load_engine(out, quantize="none", reuse=same)
        assert other.encoder is not same.encoder
        other.close()
    finally:
        same.close()
