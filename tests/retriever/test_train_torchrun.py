"""The real `torchrun`, 2 gloo processes on the CPU: a full `dpr train` (2 epochs, model-mined
negatives re-mined each epoch, validation, checkpoints) ends where one process ends, also when the
run is killed -9 after a checkpoint and continued with `--resume`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


@pytest.fixture()
def no_dropout_base(tmp_path: Path) -> Path:
    """The tiny DistilBERT without dropout: two ranks draw other masks than one process would."""
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizerFast

    from retriever.encoder import resolve_model_path

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=512, dropout=0.0, attention_dropout=0.0)
    out = tmp_path / "tiny-nodrop"
    DistilBertModel(config).save_pretrained(out, safe_serialization=True)
    DistilBertTokenizerFast.from_pretrained(resolve_model_path("minilm")).save_pretrained(out)
    return out


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "query_encoder" / "model.safetensors"))


def test_torchrun_train_ends_where_one_process_ends_also_after_a_kill(no_dropout_base: Path, small_nq, torchrun,
                                                                      tmp_path: Path) -> None:
    """2 epochs, model-mined negatives re-mined each epoch, validation, checkpoints every 2 steps: one
    process, a straight 2-rank torchrun, and a 2-rank torchrun killed -9 after a checkpoint and then
    resumed with ``--resume`` all end with the same metrics and weights."""
    train, val = small_nq
    common = ["--train", str(train), "--val", str(val), "--model", str(no_dropout_base), "--epochs", "2",
              "--batch-size", "8", "--lr", "1e-3", "--hard-negatives", "model", "--remine-every", "1",
              # Without gradient caching: chunks cut differently on one process and on two ranks would sum
              # in another order (test_train_distributed checks caching across ranks step by step).
              "--num-hard-negatives", "1", "--grad-cache-chunk", "0",
              # bf16 (auto on an AMX CPU) rounds a 2-rank split of the batch differently from one process.
              "--precision", "fp32",
              "--query-max-length", "32", "--passage-max-length", "64", "--seed", "3", "--checkpoint-every", "2",
              "--no-progress"]
    from driver.main import main

    assert main(["train", *common, "--out", str(tmp_path / "one")]) == 0
    torchrun.launch("train", *common, "--out", str(tmp_path / "two"))
    killed_at = torchrun.kill_after_checkpoint(tmp_path / "three", "train", *common, "--out", str(tmp_path / "three"),
                                       min_step=2)
    torchrun.launch("train", "--resume", str(tmp_path / "three"), "--no-progress")

    one = json.loads((tmp_path / "one" / "train_log.json").read_text())
    base = load_file(str(no_dropout_base / "model.safetensors"))
    assert any(not torch.allclose(base[k], v) for k, v in _weights(tmp_path / "one").items()
               if k in base), "training changed nothing: the comparison below would be empty"
    for run in ("two", "three"):
        log = json.loads((tmp_path / run / "train_log.json").read_text())
        assert log["world_size"] == 2 and log["finished"] and len(log["epochs"]) == 3          # epochs 0, 1, 2
        for a, b in zip(one["epochs"], log["epochs"], strict=True):
            for name, value in a["metrics"].items():
                assert b["metrics"][name] == pytest.approx(value, abs=1e-6), (run, a["epoch"], name)
        assert [r["negatives"] for r in one["epochs"][1:]] == [r["negatives"] for r in log["epochs"][1:]]
        w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / run)
        assert w1.keys() == w2.keys()
        for name in w1:
            torch.testing.assert_close(w1[name], w2[name], atol=1e-5, rtol=1e-4, msg=f"{run}: {name}")
    resumed = json.loads((tmp_path / "three" / "train_log.json").read_text())["resumed"]
    assert resumed[0]["global_step"] == killed_at and not (tmp_path / "three" / "resume").exists()
