"""bf16 autocast: where ``auto`` picks it, what it changes in the towers, and that it trains."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import Passage
from retriever.encoder import DualEncoder

PASSAGES = [Passage(pid=str(i), title=f"title {i}", text=t) for i, t in enumerate(
    ["the tide rises twice a day", "paris is the capital of france", "a cell divides by mitosis",
     "interest rates moved the bond market"])]


def test_auto_precision_is_bf16_only_on_a_cpu_with_amx(monkeypatch) -> None:
    import retriever.precision as precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for given in ("fp32", "bf16"):
        assert precision.resolve_precision(given, cpu) == given
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: True)
    assert precision.resolve_precision("auto", cpu) == "bf16"
    assert precision.resolve_precision("auto", cuda) == "fp32"       # not measured on a GPU: stays fp32
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: False)
    assert precision.resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve_precision("fp16", cpu)


def test_bf16_towers_give_fp32_vectors_close_to_but_not_the_fp32_ones(tiny_encoder: DualEncoder) -> None:
    exact = tiny_encoder.encode_passages(PASSAGES)
    tiny_encoder.set_precision("bf16")
    inputs = tiny_encoder.tokenize_passages(PASSAGES)
    with torch.inference_mode():
        emb = tiny_encoder.embed_passages(inputs)
    assert emb.dtype == torch.float32                     # pooled and normalised in fp32
    approx = tiny_encoder.encode_passages(PASSAGES)
    cosine = np.sum(exact * approx, axis=1)
    assert cosine.min() > 0.99
    assert not np.allclose(exact, approx, atol=1e-6)      # autocast did run the towers in bf16
    tiny_encoder.set_precision("fp32")
    np.testing.assert_allclose(tiny_encoder.encode_passages(PASSAGES), exact, rtol=1e-5, atol=1e-6)


def test_bf16_training_step_keeps_fp32_weights_and_gradients(tiny_encoder: DualEncoder, small_nq) -> None:
    from common.data import corpus_from_examples, load_examples
    from retriever.batching import make_batches
    from retriever.train_step import compute_gradients

    examples = load_examples(small_nq[0])
    batch = make_batches(examples[:6], 6, np.random.default_rng(0), num_hard_negatives=1,
                         filler=corpus_from_examples(examples))[0]
    tiny_encoder.eval()                                   # no dropout: the two precisions see the same net

    def grads(precision: str, **kw) -> tuple[float, dict[str, torch.Tensor]]:
        tiny_encoder.set_precision(precision)
        tiny_encoder.zero_grad(set_to_none=True)
        loss, _ = compute_gradients(tiny_encoder, batch, torch.device("cpu"), **kw)
        return loss, {n: p.grad.clone() for n, p in tiny_encoder.named_parameters() if p.grad is not None}

    loss32, g32 = grads("fp32")
    loss16, g16 = grads("bf16")
    cached16, c16 = grads("bf16", grad_cache_chunk=4)
    assert all(p.dtype == torch.float32 for p in tiny_encoder.parameters())
    assert all(g.dtype == torch.float32 for g in g16.values()) and g16.keys() == g32.keys()
    assert loss16 == pytest.approx(loss32, rel=0.05) and loss16 != loss32
    # The gradient points the same way in both precisions, and gradient caching replays bf16 too.
    flat32, flat16 = (torch.cat([g[n].flatten() for n in sorted(g32)]) for g in (g32, g16))
    assert torch.nn.functional.cosine_similarity(flat32, flat16, dim=0) > 0.95
    assert cached16 == pytest.approx(loss16, rel=1e-3)
    flat_cached = torch.cat([c16[n].flatten() for n in sorted(g32)])
    assert torch.nn.functional.cosine_similarity(flat16, flat_cached, dim=0) > 0.99


def test_bf16_inference_keeps_the_fingerprint_and_is_not_saved(tiny_encoder: DualEncoder, tmp_path: Path) -> None:
    from retriever.runtime import prepare_encoder

    fingerprint = tiny_encoder.fingerprint()
    prepare_encoder(tiny_encoder, "torch", "bf16")
    described = tiny_encoder.describe()
    assert (described["quantize"], described["runtime"], tiny_encoder.precision) == ("bf16", "torch", "bf16")
    assert described["weights_sha256"] == fingerprint
    with pytest.raises(ValueError, match="inference-only"):
        tiny_encoder.save(tmp_path / "m")


def test_bf16_is_refused_where_it_cannot_run(tiny_encoder: DualEncoder) -> None:
    from retriever.runtime import prepare_encoder

    with pytest.raises(ValueError, match="'bf16' runs on the torch runtime"):
        prepare_encoder(tiny_encoder, "onnx", "bf16")
    with pytest.raises(ValueError, match="precision must be fp32 or bf16"):
        tiny_encoder.set_precision("fp16")
    prepare_encoder(tiny_encoder, "torch", "int8")
    with pytest.raises(ValueError, match="bf16 runs the fp32 torch towers"):
        tiny_encoder.set_precision("bf16")


def test_training_in_bf16_validates_on_torch_and_logs_its_precision(tiny_base: Path, small_nq, tmp_path: Path) -> None:
    from retriever.train import train
    from retriever.train_config import AUTO_INT8_MIN_PASSAGES, TrainConfig
    from retriever.validation import resolve_eval_runtime

    assert resolve_eval_runtime("auto", "cpu", 10 * AUTO_INT8_MIN_PASSAGES, "bf16") == "torch"
    train_path, val_path = small_nq
    out = tmp_path / "m"
    config = TrainConfig(train=str(train_path), val=str(val_path), out=str(out), model=str(tiny_base), epochs=1,
                         batch_size=8, precision="bf16", hard_negatives="none")
    result = train(config, progress=False)
    log = json.loads((out / "train_log.json").read_text())
    assert log["precision"] == "bf16"
    assert [row["eval_runtime"] for row in log["epochs"]] == ["torch", "torch"]
    assert np.isfinite(log["epochs"][1]["loss"]) and len(log["steps"]) == 3
    # What was saved is an fp32 model that loads and encodes like any other.
    saved = DualEncoder.load(result.out)
    assert saved.precision == "fp32" and saved.quantization == "none"
    assert all(p.dtype == torch.float32 for p in saved.parameters())
