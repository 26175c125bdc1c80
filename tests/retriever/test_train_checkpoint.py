"""Resume checkpoints: optimizer/RNG state without pickle, and a crashed run resumed equals an uninterrupted one."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from driver.main import main
from retriever.checkpoint import (
    RESUME_DIR,
    flatten_state_dict,
    load_resume,
    recover,
    resume_progress,
    rng_state,
    set_rng_state,
    unflatten_state_dict,
)
from retriever.distributed import DistContext
from retriever.train import Trainer, resume, train
from retriever.train_config import TRAIN_LOG_FILE, TrainConfig
from retriever.train_setup import build_optimizer


class Crash(RuntimeError):
    pass


def _config(tiny_base: Path, small_nq: tuple[Path, Path], out: Path, **kw) -> TrainConfig:
    base = dict(train=str(small_nq[0]), val=str(small_nq[1]), out=str(out), model=str(tiny_base), epochs=2,
                batch_size=8, lr=1e-3, query_max_length=32, passage_max_length=64, eval_batch_size=32,
                hard_negatives="model", checkpoint_every=2, seed=5)
    return TrainConfig(**{**base, **kw})


def _crash_at(step: int):
    def hook(global_step: int) -> None:
        if global_step == step:
            raise Crash(f"simulated crash after step {step}")
    return hook


def test_optimizer_state_round_trips_through_tensors_and_json(tiny_encoder) -> None:
    opt = build_optimizer(tiny_encoder, 1e-3, 0.01)
    tiny_encoder.embed_queries(tiny_encoder.tokenize_queries(["a question", "another"])).sum().backward()
    opt.step()
    tensors, meta = flatten_state_dict(opt.state_dict())
    json.dumps(meta)                                   # the structure part must be plain JSON
    assert tensors and all(isinstance(t, torch.Tensor) for t in tensors.values())
    back = unflatten_state_dict(tensors, json.loads(json.dumps(meta)))
    fresh = build_optimizer(tiny_encoder, 1e-3, 0.01)
    fresh.load_state_dict(back)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"] and isinstance(b["param_groups"][0]["betas"], tuple)
    for i in a["state"]:
        for k in a["state"][i]:
            assert torch.equal(a["state"][i][k], b["state"][i][k])


def test_rng_states_round_trip() -> None:
    torch_state, states = rng_state()
    json.dumps(states)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch_state, json.loads(json.dumps(states)))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_crash_then_resume_equals_an_uninterrupted_run(tiny_base: Path, small_nq: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    """Dropout on, model-mined negatives, crash mid-epoch 2 (last checkpoint one step earlier)."""
    whole = Trainer(_config(tiny_base, small_nq, tmp_path / "whole"), DistContext(), progress=False)
    whole_result = whole.run()
    steps = whole_result.log["steps"]
    assert not (tmp_path / "whole" / RESUME_DIR).exists()
    epoch2 = [s["step"] for s in steps if s["epoch"] == 2]
    assert len(epoch2) >= 3
    # Crash two steps into epoch 2 with an odd step number: the last checkpoint is one step back, mid-epoch.
    crash = epoch2[1] if epoch2[1] % 2 else epoch2[2]

    config = _config(tiny_base, small_nq, tmp_path / "crash")
    with pytest.raises(Crash):
        Trainer(config, DistContext(), progress=False, on_step=_crash_at(crash)).run()
    progress = resume_progress(config.out)
    assert progress["global_step"] == crash - 1 and progress["epoch"] == 2 and progress["batch_index"] >= 1
    assert load_resume(config.out).trainer["negatives"] is not None

    resumed = Trainer(config, DistContext(), progress=False)
    resumed.restore()
    result = resumed.run()
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert [s["loss"] for s in result.log["steps"]] == [s["loss"] for s in whole_result.log["steps"]]
    assert result.log["epochs"][-1]["metrics"] == whole_result.log["epochs"][-1]["metrics"]
    assert result.log["resumed"][0]["global_step"] == crash - 1 and result.log["finished"]
    assert not (tmp_path / "crash" / RESUME_DIR).exists()          # a finished run removes it
    assert json.loads((tmp_path / "crash" / TRAIN_LOG_FILE).read_text())["finished"]


def test_resume_at_an_epoch_boundary_and_refusals(tiny_base: Path, small_nq: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tiny_base, small_nq, tmp_path / "m", hard_negatives="none", checkpoint_every=50)
    with pytest.raises(RuntimeError, match="nothing to resume"):
        resume(config.out, progress=False)
    with pytest.raises(Crash):
        train(config, progress=False, on_step=_crash_at(4))           # epoch 1 ends at step 3
    assert resume_progress(config.out) == {"epoch": 2, "batch_index": 0, "global_step": 3}
    with pytest.raises(ValueError, match="different config.*lr"):
        train(TrainConfig(**{**config.to_dict(), "lr": 5e-4}), progress=False, resume=True)
    given = ["train", "--resume", config.out, "--train", config.train, "--val", config.val, "--model", config.model,
             "--epochs", "2", "--batch-size", "8", "--lr", "0.001", "--query-max-length", "32",
             "--passage-max-length", "64", "--eval-batch-size", "32", "--hard-negatives", "none", "--seed", "5",
             "--no-progress"]
    assert main([*given, "--warmup-ratio", "0.2"]) == 2
    assert "warmup_ratio: saved 0.1, now 0.2" in capsys.readouterr().err
    assert main(given) == 0                              # the same options are accepted
    log = json.loads((Path(config.out) / TRAIN_LOG_FILE).read_text())
    assert [r["epoch"] for r in log["epochs"]] == [0, 1, 2] and len(log["steps"]) == 6
    assert log["resumed"][0]["global_step"] == 3
    with pytest.raises(RuntimeError, match="nothing to resume"):
        resume(config.out, progress=False)
    assert main(["train", "--resume", config.out]) == 2


def test_recover_puts_back_a_checkpoint_moved_aside_by_an_interrupted_save(tmp_path: Path) -> None:
    (tmp_path / ".resume.old-123").mkdir()
    (tmp_path / ".resume.old-123" / "state.json").write_text("{}")
    (tmp_path / ".resume.tmp-abc").mkdir()
    recover(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [RESUME_DIR]
    assert (tmp_path / RESUME_DIR / "state.json").read_text() == "{}"


def test_cuda_rng_states_are_saved_and_restored_per_rank(tiny_base: Path, small_nq, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A run on CUDA also keeps each rank's GPU generator (dropout there draws from it). Emulated on
    the CPU: torch.cuda's get/set_rng_state are stood in for, and the restoring trainer is told its
    device is cuda:0 after it is built."""
    import retriever.checkpoint as checkpoint
    import retriever.train as train_module

    gpu_state = torch.arange(16, dtype=torch.uint8)
    monkeypatch.setattr(checkpoint.torch.cuda, "get_rng_state", lambda device: gpu_state.clone())
    assert checkpoint.device_rng_state(torch.device("cpu")) is None
    assert torch.equal(checkpoint.device_rng_state(torch.device("cuda:0")), gpu_state)

    config = _config(tiny_base, small_nq, tmp_path / "run", hard_negatives="none")
    monkeypatch.setattr(train_module, "device_rng_state", lambda device: gpu_state.clone())
    with pytest.raises(Crash):
        train(config, progress=False, on_step=_crash_at(2))
    state = load_resume(config.out)
    assert state.cuda_rng is not None and len(state.cuda_rng) == 1 and torch.equal(state.cuda_rng[0], gpu_state)

    restored: list[tuple[torch.device, torch.Tensor]] = []
    monkeypatch.setattr(train_module, "set_device_rng_state", lambda device, s: restored.append((device, s)))
    trainer = Trainer(config, DistContext(), progress=False)
    trainer.ctx = DistContext(device=torch.device("cuda:0"))
    trainer.restore()
    assert len(restored) == 1 and restored[0][0] == torch.device("cuda:0") and torch.equal(restored[0][1], gpu_state)
