"""A saved model in sentence-transformers' format: SentenceTransformer loads each tower (tokenizer, max
length, pooling, normalisation) and gives DualEncoder's vectors; a sentence-transformers directory is
accepted as --model with its own pooling and normalisation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.data import Passage
from retriever import DualEncoder, EncoderConfig
from retriever.encoder import load_encoder
from retriever.st_format import st_encoder_settings

QUERIES = ["who wrote the declaration of independence", "where does the river flow " * 20]
PASSAGES = [Passage("p1", "Thomas Jefferson", "Jefferson wrote the declaration in 1776."),
            Passage("p2", "", "A passage without a title, long enough to be cut at the max length " * 12)]


def _st():
    return pytest.importorskip("sentence_transformers", reason="pip install '.[test]' (sentence-transformers)")


@pytest.mark.parametrize("tied", [True, False])
def test_sentence_transformers_loads_each_tower_with_the_same_vectors(tiny_base: Path, tmp_path: Path,
                                                                      tied: bool) -> None:
    st = _st()
    config = EncoderConfig(base_model=str(tiny_base), pooling="mean", similarity="cos", tie_encoders=tied,
                           query_max_length=16, passage_max_length=32)
    encoder = DualEncoder.from_base(config)
    out = tmp_path / "model"
    encoder.save(out)
    queries = st.SentenceTransformer(str(out / "query_encoder"), device="cpu")
    passages = st.SentenceTransformer(str(out if tied else out / "passage_encoder"), device="cpu")
    assert (queries.max_seq_length, passages.max_seq_length) == (16, 32)
    np.testing.assert_allclose(queries.encode(QUERIES), encoder.encode_queries(QUERIES), atol=1e-5)
    np.testing.assert_allclose(passages.encode([[p.title, p.text] for p in PASSAGES]),
                               encoder.encode_passages(PASSAGES), atol=1e-5)
    assert DualEncoder.load(out).fingerprint() == encoder.fingerprint()        # still our own format too


def test_dot_product_and_cls_models_are_written_so(tiny_base: Path, tmp_path: Path) -> None:
    config = EncoderConfig(base_model=str(tiny_base), pooling="cls", similarity="dot")
    DualEncoder.from_base(config).save(tmp_path / "m")
    tower = tmp_path / "m" / "query_encoder"
    modules = [m["type"].rsplit(".", 1)[1] for m in json.loads((tower / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling"]                             # no Normalize for dot product
    assert json.loads((tower / "1_Pooling" / "config.json").read_text())["pooling_mode_cls_token"] is True
    assert st_encoder_settings(tower) == {"similarity": "dot", "pooling": "cls", "passage_max_length": 64,
                                          "query_max_length": 64}


def test_a_sentence_transformers_directory_is_accepted_as_model(tiny_base: Path, tmp_path: Path,
                                                                small_nq: tuple[Path, Path]) -> None:
    """`dpr index --model` (and `dpr train --model`) take a sentence-transformers directory and keep
    its pooling and normalisation, here CLS and dot product, where a plain checkpoint gets mean/cos."""
    from driver.main import main
    from indexer import SearchIndex

    DualEncoder.from_base(EncoderConfig(base_model=str(tiny_base), pooling="cls", similarity="dot")).save(
        tmp_path / "m")
    tower = tmp_path / "m" / "query_encoder"
    encoder = load_encoder(tower)
    assert (encoder.config.pooling, encoder.config.similarity, encoder.config.passage_max_length) == ("cls", "dot", 64)
    kb = small_nq[0]
    assert main(["index", "--model", str(tower), "--kb", str(kb), "--out", str(tmp_path / "idx"), "--no-progress"]) == 0
    with SearchIndex.open(tmp_path / "idx") as index:
        assert index.manifest["pooling"] == "cls" and index.manifest["normalize"] is False


def test_unsupported_sentence_transformers_pooling_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match="pooling .* is not supported"):
        st_encoder_settings(tmp_path)
