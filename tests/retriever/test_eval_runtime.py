"""--eval-runtime: validation (and model mining) on a frozen ONNX Runtime copy of the current weights."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from common.flags import add_dataclass_arguments, dataclass_from_args
from retriever.distributed import DistContext
from retriever.encoder import load_encoder
from retriever.onnx_runtime import OrtTower
from retriever.train import Trainer
from retriever.train_config import EVAL_RUNTIMES, TrainConfig
from retriever.validation import EVAL_RUNTIMES as RUNTIME_OF
from retriever.validation import evaluate
from tests.retriever.test_train import _config


def _torch_metrics(encoder, trainer: Trainer) -> dict[str, float]:
    config = trainer.config
    return evaluate(encoder, trainer.data.val, trainer.data.val_kb, config.eval_ks, config.eval_batch_size)


def test_onnx_validation_measures_what_torch_measures_and_the_model_keeps_training(
        tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path) -> None:
    trainer = Trainer(_config(tiny_base, small_nq, tmp_path / "m", hard_negatives="none", eval_runtime="onnx"),
                      DistContext(), progress=False)
    log = trainer.run().log
    start, epoch = log["epochs"]
    assert [r["eval_runtime"] for r in log["epochs"]] == ["onnx", "onnx"]
    assert start["export_seconds"] > 0 and epoch["export_seconds"] > 0   # one export per validation
    # Same weights, same rankings: epoch 0 against the starting model in torch, epoch 1 against the trained one.
    begin = load_encoder(str(tiny_base), query_max_length=32, passage_max_length=64)
    assert start["metrics"] == pytest.approx(_torch_metrics(begin, trainer), abs=1e-6)
    assert epoch["metrics"] == pytest.approx(_torch_metrics(trainer.model, trainer), abs=1e-6)
    # The training model stayed a torch model with its gradients; the ONNX copy was another object.
    model = trainer.model
    assert model.runtime == "torch" and not isinstance(model.query_model, OrtTower)
    assert all(p.requires_grad for p in model.parameters()) and any(p.grad is not None for p in model.parameters())
    assert model.fingerprint() != begin.fingerprint()


def test_onnx_int8_validates_and_mining_reuses_its_vectors(
        tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path) -> None:
    trainer = Trainer(_config(tiny_base, small_nq, tmp_path / "m", hard_negatives="model", eval_runtime="onnx-int8"),
                      DistContext(), progress=False)
    encoders = []
    get = trainer.eval_encoder.get

    def spy(model, step: int):
        got = get(model, step)
        encoders.append(got[0])
        return got

    trainer.eval_encoder.get = spy
    log = trainer.run().log
    assert [r["eval_runtime"] for r in log["epochs"]] == ["onnx-int8", "onnx-int8"]
    assert all(r["export_seconds"] > 0 for r in log["epochs"])
    # Validation of epoch 0, mining before epoch 1 (the same int8 copy, its vectors), validation of epoch 1.
    assert [e.quantization for e in encoders] == ["int8"] * 3 and encoders[0] is encoders[1] is not encoders[2]
    assert log["epochs"][1]["mine_reused_vectors"] == len(trainer.data.mining_kb)
    assert 0 <= log["epochs"][1]["metrics"]["recall@5"] <= 1 and trainer.model.runtime == "torch"


def test_eval_runtime_flag_choices_and_missing_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(EVAL_RUNTIMES) == set(RUNTIME_OF) | {"auto"}
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainConfig)
    args = parser.parse_args(["--train", "t", "--val", "v", "--out", "o", "--eval-runtime", "onnx-int8"])
    assert dataclass_from_args(TrainConfig, args).eval_runtime == "onnx-int8"
    assert TrainConfig(train="t", val="v", out="o").eval_runtime == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--eval-runtime", "tensorrt"])
    with pytest.raises(ValueError, match="eval_runtime must be one of"):
        TrainConfig(train="t", val="v", out="o", eval_runtime="tensorrt")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ValueError, match="needs the onnxruntime package"):
        TrainConfig(train="t", val="v", out="o", eval_runtime="onnx")
    TrainConfig(train="t", val="v", out="o")              # auto (the default) falls back to torch


def test_auto_eval_runtime_is_int8_only_on_a_cpu_with_a_large_validation_kb(monkeypatch) -> None:
    import importlib.util

    from retriever.train_config import AUTO_INT8_MIN_PASSAGES, TrainConfig
    from retriever.validation import resolve_eval_runtime

    assert TrainConfig.__dataclass_fields__["eval_runtime"].default == "auto"
    assert resolve_eval_runtime("auto", "cpu", AUTO_INT8_MIN_PASSAGES) == "onnx-int8"
    assert resolve_eval_runtime("auto", "cpu", AUTO_INT8_MIN_PASSAGES - 1) == "torch"
    assert resolve_eval_runtime("auto", "cuda", 10 * AUTO_INT8_MIN_PASSAGES) == "torch"
    for given in ("torch", "onnx", "onnx-int8"):
        assert resolve_eval_runtime(given, "cpu", 10) == given
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert resolve_eval_runtime("auto", "cpu", 10 * AUTO_INT8_MIN_PASSAGES) == "torch"
