"""The ONNX Runtime path: same vectors as torch in fp32 (padding included), close ones in int8, both towers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.data import Passage
from indexer.builds import current_build
from retriever.runtime import check_runtime, prepare_encoder

PASSAGES = [Passage("p1", "Rivers", "the river flows to the sea through the valley and past the old mill " * 3),
            Passage("p2", "Bread", "bakers knead dough at dawn"),
            Passage("p3", "", "stars"),
            Passage("p4", "A title that is long on its own", "and a short text")]
QUERIES = ["where does a river flow", "x", "when do bakers start their work in the morning and why"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT (token types, fused EmbedLayerNormalization path) with the bert vocab."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from tests.conftest import _vocab_dir

    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(out, safe_serialization=True)
    BertTokenizerFast.from_pretrained(_vocab_dir()).save_pretrained(out)
    return out


def _encoder(base: Path, tie: bool = True, pooling: str = "mean", similarity: str = "cos",
             passage_format: str = "pair"):
    from retriever import DualEncoder, EncoderConfig

    return DualEncoder.from_base(EncoderConfig(base_model=str(base), pooling=pooling, tie_encoders=tie,
                                               similarity=similarity, query_max_length=32, passage_max_length=64,
                                               passage_format=passage_format))


@pytest.mark.parametrize("arch", ["distilbert", "bert"])
def test_onnx_fp32_gives_the_torch_vectors(arch: str, tiny_base: Path, tiny_bert: Path) -> None:
    base = tiny_base if arch == "distilbert" else tiny_bert
    torch_enc, onnx_enc = _encoder(base), prepare_encoder(_encoder(base), "onnx", "none")
    assert onnx_enc.runtime == "onnx" and onnx_enc.quantization == "none"
    # Mixed lengths in one batch: padded positions must not leak into attention or pooling.
    np.testing.assert_allclose(onnx_enc.encode_passages(PASSAGES), torch_enc.encode_passages(PASSAGES), atol=1e-5)
    np.testing.assert_allclose(onnx_enc.encode_queries(QUERIES), torch_enc.encode_queries(QUERIES), atol=1e-5)
    # A batch of one (no padding at all) gives the same row as the padded batch.
    one = onnx_enc.encode_passages(PASSAGES[2:3], batch_size=1)
    np.testing.assert_allclose(one[0], onnx_enc.encode_passages(PASSAGES)[2], atol=1e-5)


def test_onnx_fp32_follows_the_joined_passage_format(tiny_bert: Path) -> None:
    # The towers take token ids: a "joined" encoder's ONNX tower sees the same single-segment ids.
    torch_enc = _encoder(tiny_bert, passage_format="joined")
    onnx_enc = prepare_encoder(_encoder(tiny_bert, passage_format="joined"), "onnx", "none")
    joined = torch_enc.encode_passages(PASSAGES)
    np.testing.assert_allclose(onnx_enc.encode_passages(PASSAGES), joined, atol=1e-5)
    assert not np.allclose(joined, _encoder(tiny_bert).encode_passages(PASSAGES), atol=1e-3)   # not the pair


@pytest.mark.parametrize(("pooling", "similarity"), [("cls", "cos"), ("mean", "dot"), ("cls", "dot")])
def test_onnx_graph_carries_the_encoders_head(pooling: str, similarity: str, tiny_bert: Path) -> None:
    # Pooling and normalisation (cosine only) run inside the exported graph; they must be this encoder's own.
    normalize = similarity == "cos"
    torch_enc = _encoder(tiny_bert, pooling=pooling, similarity=similarity)
    onnx_enc = prepare_encoder(_encoder(tiny_bert, pooling=pooling, similarity=similarity), "onnx", "none")
    expected = torch_enc.encode_passages(PASSAGES)
    np.testing.assert_allclose(onnx_enc.encode_passages(PASSAGES), expected, atol=1e-5)
    np.testing.assert_allclose(onnx_enc.encode_queries(QUERIES), torch_enc.encode_queries(QUERIES), atol=1e-5)
    norms = np.linalg.norm(expected, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) == normalize


def test_onnx_int8_is_close_keeps_the_fingerprint_and_is_inference_only(tiny_bert: Path, tmp_path: Path) -> None:
    fp32 = _encoder(tiny_bert)
    before = fp32.describe()
    int8 = prepare_encoder(_encoder(tiny_bert), "onnx", "int8")
    after = int8.describe()
    assert (after["runtime"], after["quantize"]) == ("onnx", "int8")
    assert after["weights_sha256"] == before["weights_sha256"] and after["dim"] == before["dim"]
    a, b = int8.encode_passages(PASSAGES), fp32.encode_passages(PASSAGES)
    assert a.dtype == np.float32 and a.shape == b.shape
    assert not np.allclose(a, b, atol=1e-6)  # really quantised
    assert np.min(np.sum(a * b, axis=1)) > 0.9
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="inference-only"):
        int8.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("arch", ["distilbert", "bert"])
def test_only_the_int8_graph_approximates_gelu(arch: str, tiny_base: Path, tiny_bert: Path, tmp_path: Path) -> None:
    import onnx

    from retriever.onnx_runtime import export_tower

    encoder = _encoder(tiny_base if arch == "distilbert" else tiny_bert)
    ops = {}
    for quantize in ("none", "int8"):
        out = tmp_path / quantize
        out.mkdir()
        path = export_tower(encoder.passage_tower, out, token_types=arch == "bert", quantize=quantize,
                            head=encoder.head)
        graph = onnx.load(str(path)).graph
        ops[quantize] = {node.op_type for node in graph.node}
    # fp32 keeps the exact erf GELU (fused with its bias); int8 swaps it for the tanh form.
    assert "BiasGelu" in ops["none"] and "FastGelu" not in ops["none"]
    assert "FastGelu" in ops["int8"] and not ops["int8"] & {"BiasGelu", "Gelu", "Erf"}


def test_untied_towers_are_both_converted(tiny_base: Path) -> None:
    torch_enc = _encoder(tiny_base, tie=False)
    # Make the towers differ so that using the wrong one would show.
    import torch

    with torch.no_grad():
        for p in torch_enc.passage_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    onnx_enc = _encoder(tiny_base, tie=False)
    onnx_enc.passage_model.load_state_dict(torch_enc.passage_model.state_dict())
    prepare_encoder(onnx_enc, "onnx")
    np.testing.assert_allclose(onnx_enc.encode_passages(PASSAGES), torch_enc.encode_passages(PASSAGES), atol=1e-5)
    np.testing.assert_allclose(onnx_enc.encode_queries(QUERIES), torch_enc.encode_queries(QUERIES), atol=1e-5)


def test_bad_runtime_and_switching_twice_are_refused(tiny_base: Path) -> None:
    with pytest.raises(ValueError, match="runtime must be one of"):
        check_runtime("tensorrt")
    enc = prepare_encoder(_encoder(tiny_base), "onnx", "int8")
    assert prepare_encoder(enc, "onnx", "int8") is enc  # already there: a no-op
    with pytest.raises(ValueError, match="load the model again"):
        prepare_encoder(enc, "torch", "int8")


def test_onnx_index_records_runtime_and_any_runtime_serves_it(saved_model: Path, tmp_path: Path, small_nq) -> None:
    import json

    from driver.main import main
    from server.engine import load_engine

    model = saved_model
    train, _ = small_nq
    out = tmp_path / "idx"
    assert main(["index", "--model", str(model), "--kb", str(train), "--out", str(out), "--runtime", "onnx",
                 "--no-bm25", "--no-progress"]) == 0
    recorded = json.loads((current_build(out) / "manifest.json").read_text())["model"]
    assert (recorded["runtime"], recorded["quantize"]) == ("onnx", "none")
    torch_engine = load_engine(out)
    onnx_engine = load_engine(out, runtime="onnx", reuse=torch_engine)
    try:
        # Another runtime is another encoder object, never the reused torch one.
        assert onnx_engine.encoder is not torch_engine.encoder and onnx_engine.encoder.runtime == "onnx"
        query = "who wrote the song"
        (a,), (b,) = torch_engine.search([query], 5), onnx_engine.search([query], 5)
        assert [h["id"] for h in a] == [h["id"] for h in b]
        again = load_engine(out, runtime="onnx", reuse=onnx_engine)
        assert again.encoder is onnx_engine.encoder  # same runtime: the exported sessions are kept
        again.close()
    finally:
        torch_engine.close()
        onnx_engine.close()


def test_a_lone_call_runs_on_the_solo_session_and_overlapping_calls_on_the_narrow_one(tiny_bert: Path) -> None:
    """solo_threads: a second session for calls made while no other runs; same graph, same vectors."""
    import threading

    enc = prepare_encoder(_encoder(tiny_bert), "onnx", "int8", threads=1, solo_threads=2)
    tower = enc.query_model
    assert tower.solo_session is not None
    assert tower.solo_session.get_session_options().intra_op_num_threads == 2
    assert tower.session.get_session_options().intra_op_num_threads == 1
    used: list[str] = []
    gate, entered = threading.Event(), threading.Event()

    class Spy:
        def __init__(self, name: str, real, block: bool) -> None:
            self.name, self.real, self.block = name, real, block

        def run(self, *args):
            used.append(self.name)
            if self.block:           # hold the first (solo) call open while a second one arrives
                entered.set()
                gate.wait(10)
            return self.real.run(*args)

    real_solo, real_narrow = tower.solo_session, tower.session
    tower.solo_session, tower.session = Spy("solo", real_solo, True), Spy("narrow", real_narrow, False)
    first = threading.Thread(target=enc.encode_queries, args=(QUERIES[:1],))
    first.start()
    assert entered.wait(10)
    second = enc.encode_queries(QUERIES[:1])            # overlaps the first: the narrow session
    gate.set()
    first.join(10)
    assert used == ["solo", "narrow"]
    tower.solo_session, tower.session = real_solo, real_narrow
    alone = enc.encode_queries(QUERIES[:1])              # nothing else running: solo again
    np.testing.assert_allclose(alone, second, atol=1e-6)
    # Without a wider budget there is no second session.
    assert prepare_encoder(_encoder(tiny_bert), "onnx", "none", threads=2, solo_threads=2).query_model.solo_session is None
